use crate::{TopicFilter, TopicName};

/// Whether `filter` matches `name`, by the rules of MQTT section 4.7.
///
/// * Levels are compared byte for byte; nothing is normalised, case-folded or substituted
///   [MQTT-4.7.3-4].
/// * `+` matches exactly one level, which may be empty: `a/+` matches `a/`.
/// * `#` matches any number of levels, including none: `sport/#` matches `sport` itself.
/// * A filter whose first character is a wildcard never matches a name that starts with `$`
///   [MQTT-4.7.2-1]: `#` does not match `$SYS/uptime`, but `$SYS/#` does.
///
/// A shared subscription is matched by its inner filter ([`SharedFilter::filter`]); passed
/// here whole, `$share/g/a` only matches the name `$share/g/a`.
///
/// [`SharedFilter::filter`]: crate::SharedFilter::filter
///
/// ```
/// use mqtt_topic::{matches, TopicFilter, TopicName};
/// let f = |s| TopicFilter::new(s).unwrap();
/// let n = |s| TopicName::new(s).unwrap();
/// assert!(matches(f("sport/tennis/+"), n("sport/tennis/player1")));
/// assert!(matches(f("sport/#"), n("sport")));
/// assert!(!matches(f("+/monitor/Clients"), n("$SYS/monitor/Clients")));
/// assert!(matches(f("$SYS/monitor/+"), n("$SYS/monitor/Clients")));
/// ```
pub fn matches(filter: TopicFilter<'_>, name: TopicName<'_>) -> bool {
    let (filter, name) = (filter.as_str(), name.as_str());
    // [MQTT-4.7.2-1] a filter starting with a wildcard does not match a name starting with '$'
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            // '#' is last: it takes the remaining levels, or none ("sport/#" matches "sport").
            (Some("#"), _) => return true,
            // '+' takes one level, whatever it holds, the empty string included.
            (Some("+"), Some(_)) => {}
            // [MQTT-4.7.3-4] plain byte equality, no normalisation
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, name: &str) -> bool {
        matches(
            TopicFilter::new(filter).unwrap(),
            TopicName::new(name).unwrap(),
        )
    }

    #[test]
    fn mqtt_4_7_1_1_hash_matches_parent_and_children() {
        // The examples of section 4.7.1.2.
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(m(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(m("sport/#", "sport"));
        assert!(!m("sport/tennis/player1/#", "sport/tennis"));
        assert!(!m("sport/tennis/player1/#", "sport/tennis/player2"));
    }

    #[test]
    fn mqtt_4_7_1_1_hash_alone_matches_every_non_dollar_name() {
        for name in ["a", "/", "a/b/c", "//", "sport/tennis", "x$"] {
            assert!(m("#", name), "{name}");
        }
    }

    #[test]
    fn mqtt_4_7_1_2_plus_fills_one_level() {
        // The examples of section 4.7.1.3.
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(m("sport/tennis/+", "sport/tennis/player2"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(m("+", "sport"));
        assert!(!m("+", "/finance"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(m("+/tennis/#", "sport/tennis/player1"));
    }

    #[test]
    fn mqtt_4_7_1_2_plus_matches_empty_level() {
        assert!(m("a/+/b", "a//b"));
        assert!(m("+/+", "/"));
        assert!(m("+", "a"));
        assert!(!m("+", "/"));
        assert!(m("a/+", "a/"));
        assert!(!m("a/+", "a"));
    }

    #[test]
    fn mqtt_4_7_1_2_plus_then_hash() {
        assert!(m("+/#", "a"));
        assert!(m("+/#", "a/b/c"));
        assert!(m("+/#", "/"));
        assert!(!m("a/+/#", "a"));
        assert!(m("a/+/#", "a/b"));
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_not_matched_by_wildcard() {
        assert!(!m("#", "$SYS"));
        assert!(!m("#", "$SYS/broker/uptime"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!m("+", "$"));
        assert!(!m("+/#", "$SYS/x"));
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_filter_matches_dollar_name() {
        assert!(m("$SYS/#", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(m("$", "$"));
        // Only the first character of the name counts: '$' elsewhere is ordinary.
        assert!(m("+/$x", "a/$x"));
        assert!(m("a/#", "a/$b"));
        assert!(m("+", "a$"));
    }

    #[test]
    fn mqtt_4_7_3_4_no_normalisation() {
        assert!(!m("Sport", "sport"));
        assert!(!m("a/b", "a/b/"));
        assert!(!m("a/b", "a//b"));
        assert!(!m("a//b", "a/b"));
        assert!(!m("/a", "a"));
        // Canonically equivalent but different code points stay different.
        assert!(!m("caf\u{e9}", "cafe\u{301}"));
        assert!(m("caf\u{e9}", "caf\u{e9}"));
        assert!(!m("a ", "a"));
    }

    #[test]
    fn literal_levels_must_match_exactly() {
        assert!(m("a/b/c", "a/b/c"));
        assert!(!m("a/b/c", "a/b"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("a/b/c", "a/x/c"));
        assert!(m("/", "/"));
        assert!(!m("/", "a"));
    }

    #[test]
    fn shared_filter_string_matches_literally() {
        // An MQTT 3.1.1 server has no shared subscriptions: the string is a literal filter.
        assert!(m("$share/g/a", "$share/g/a"));
        assert!(!m("$share/g/a", "a"));
        let shared = crate::parse_shared("$share/g/a/+").unwrap().unwrap();
        assert!(shared.filter().matches(TopicName::new("a/b").unwrap()));
    }
}
