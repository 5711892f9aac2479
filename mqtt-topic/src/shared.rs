use core::fmt;

use crate::validate::{check_filter_bytes, check_len};
use crate::{Error, TopicFilter};

const SHARE_PREFIX: &str = "$share/";

/// A shared-subscription filter `$share/{ShareName}/{filter}` (MQTT 5.0 section 4.8.2).
///
/// ```
/// let shared = mqtt_topic::parse_shared("$share/workers/jobs/+")?.expect("shared");
/// assert_eq!(shared.group(), "workers");
/// assert_eq!(shared.filter().as_str(), "jobs/+");
/// assert_eq!(shared.as_str(), "$share/workers/jobs/+");
/// # Ok::<(), mqtt_topic::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedFilter<'a> {
    full: &'a str,
    group: &'a str,
    filter: TopicFilter<'a>,
}

impl<'a> SharedFilter<'a> {
    /// The ShareName: non-empty, without `/`, `+` or `#`.
    pub fn group(&self) -> &'a str {
        self.group
    }
    /// The topic filter after the ShareName, used for matching.
    pub fn filter(&self) -> TopicFilter<'a> {
        self.filter
    }
    /// The whole `$share/{ShareName}/{filter}` string.
    pub fn as_str(&self) -> &'a str {
        self.full
    }
}

impl fmt::Display for SharedFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.full)
    }
}

/// Parses `s` as a shared-subscription filter if it starts with `$share/`.
///
/// Returns `Ok(None)` for any string that does not start with `$share/` (including `$share`
/// alone) without validating it, `Ok(Some(..))` for a valid shared filter, and an error when
/// the `$share/` prefix is there but the rest breaks [MQTT-4.8.2-1], [MQTT-4.8.2-2] or the
/// filter syntax of section 4.7.
///
/// ```
/// use mqtt_topic::{parse_shared, Error};
/// assert!(parse_shared("sport/#")?.is_none());
/// assert_eq!(parse_shared("$share//a"), Err(Error::EmptyShareName));
/// assert_eq!(parse_shared("$share/g+/a"), Err(Error::WildcardInShareName { at: 8 }));
/// assert_eq!(parse_shared("$share/g"), Err(Error::MissingSharedFilter));
/// # Ok::<(), mqtt_topic::Error>(())
/// ```
pub fn parse_shared(s: &str) -> Result<Option<SharedFilter<'_>>, Error> {
    let Some(rest) = s.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    check_len(s)?;
    // The ShareName ends at the first '/', so it cannot contain one [MQTT-4.8.2-2].
    let (group, filter) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash + 1..]),
        None => (rest, ""),
    };
    if group.is_empty() {
        // [MQTT-4.8.2-1] a ShareName of at least one character
        return Err(Error::EmptyShareName);
    }
    for (i, b) in group.bytes().enumerate() {
        let at = SHARE_PREFIX.len() + i;
        match b {
            // [MQTT-4.7.3-2] applies to the whole string, ShareName included
            0 => return Err(Error::NullCharacter { at }),
            // [MQTT-4.8.2-2] no '+' or '#' in the ShareName
            b'+' | b'#' => return Err(Error::WildcardInShareName { at }),
            _ => {}
        }
    }
    if filter.is_empty() {
        // [MQTT-4.8.2-2] the ShareName is followed by '/' and a topic filter
        return Err(Error::MissingSharedFilter);
    }
    check_filter_bytes(filter.as_bytes(), s.len() - filter.len())?;
    Ok(Some(SharedFilter {
        full: s,
        group,
        filter: TopicFilter::new_prevalidated(filter),
    }))
}

/// What a SUBSCRIBE entry asks for: a plain filter or a shared subscription.
///
/// MQTT 5 servers build it with [`Subscription::parse`]. MQTT 3.1.1 has no shared
/// subscriptions, so a 3.1.1 server wraps every filter as [`Subscription::Plain`], and
/// `$share/g/a` is then matched literally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subscription<'a> {
    /// An ordinary filter: every matching PUBLISH goes to the subscriber.
    Plain(TopicFilter<'a>),
    /// A shared subscription: each matching PUBLISH goes to one member of the group.
    Shared(SharedFilter<'a>),
}

impl<'a> Subscription<'a> {
    /// Parses an MQTT 5 subscription filter: `$share/{ShareName}/{filter}` is shared, anything
    /// else must be a valid plain filter.
    ///
    /// ```
    /// use mqtt_topic::Subscription;
    /// assert!(matches!(Subscription::parse("a/+")?, Subscription::Plain(_)));
    /// let s = Subscription::parse("$share/g/a/+")?;
    /// assert_eq!(s.group(), Some("g"));
    /// assert_eq!(s.filter().as_str(), "a/+");
    /// # Ok::<(), mqtt_topic::Error>(())
    /// ```
    pub fn parse(s: &'a str) -> Result<Self, Error> {
        match parse_shared(s)? {
            Some(shared) => Ok(Self::Shared(shared)),
            None => TopicFilter::new(s).map(Self::Plain),
        }
    }
    /// The filter that is matched against topic names (the inner filter when shared).
    pub fn filter(&self) -> TopicFilter<'a> {
        match self {
            Self::Plain(f) => *f,
            Self::Shared(s) => s.filter(),
        }
    }
    /// The ShareName when shared.
    pub fn group(&self) -> Option<&'a str> {
        match self {
            Self::Plain(_) => None,
            Self::Shared(s) => Some(s.group()),
        }
    }
    /// The whole string as received.
    pub fn as_str(&self) -> &'a str {
        match self {
            Self::Plain(f) => f.as_str(),
            Self::Shared(s) => s.as_str(),
        }
    }
}

impl<'a> From<TopicFilter<'a>> for Subscription<'a> {
    fn from(filter: TopicFilter<'a>) -> Self {
        Self::Plain(filter)
    }
}

impl<'a> From<SharedFilter<'a>> for Subscription<'a> {
    fn from(shared: SharedFilter<'a>) -> Self {
        Self::Shared(shared)
    }
}

impl fmt::Display for Subscription<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_4_8_2_1_share_name_at_least_one_character() {
        assert_eq!(parse_shared("$share//a"), Err(Error::EmptyShareName));
        assert_eq!(parse_shared("$share/"), Err(Error::EmptyShareName));
        assert_eq!(
            Subscription::parse("$share//a/b"),
            Err(Error::EmptyShareName)
        );
        let s = parse_shared("$share/g/a").unwrap().unwrap();
        assert_eq!(s.group(), "g");
    }

    #[test]
    fn mqtt_4_8_2_2_share_name_without_wildcards() {
        assert_eq!(
            parse_shared("$share/+/a"),
            Err(Error::WildcardInShareName { at: 7 })
        );
        assert_eq!(
            parse_shared("$share/g#/a"),
            Err(Error::WildcardInShareName { at: 8 })
        );
        assert_eq!(
            parse_shared("$share/#"),
            Err(Error::WildcardInShareName { at: 7 })
        );
    }

    #[test]
    fn mqtt_4_8_2_2_share_name_ends_at_first_slash() {
        // A '/' always ends the ShareName, so "a/b" splits as group "a", filter "b/c".
        let s = parse_shared("$share/a/b/c").unwrap().unwrap();
        assert_eq!((s.group(), s.filter().as_str()), ("a", "b/c"));
    }

    #[test]
    fn mqtt_4_8_2_2_share_name_followed_by_slash_and_filter() {
        assert_eq!(parse_shared("$share/g"), Err(Error::MissingSharedFilter));
        assert_eq!(parse_shared("$share/g/"), Err(Error::MissingSharedFilter));
        // The inner filter may itself start with '/' (an empty first level).
        let s = parse_shared("$share/g//a").unwrap().unwrap();
        assert_eq!(s.filter().as_str(), "/a");
    }

    #[test]
    fn mqtt_4_8_2_2_inner_filter_validated_with_absolute_offsets() {
        assert_eq!(
            parse_shared("$share/g/a#"),
            Err(Error::MisplacedMultiLevelWildcard { at: 10 })
        );
        assert_eq!(
            parse_shared("$share/g/a/b+"),
            Err(Error::MisplacedSingleLevelWildcard { at: 12 })
        );
        assert_eq!(
            parse_shared("$share/g/\0"),
            Err(Error::NullCharacter { at: 9 })
        );
        assert_eq!(
            parse_shared("$share/g\0/a"),
            Err(Error::NullCharacter { at: 8 })
        );
        let s = parse_shared("$share/g/+/#").unwrap().unwrap();
        assert_eq!(s.filter().as_str(), "+/#");
    }

    #[test]
    fn mqtt_4_7_3_3_shared_length_counts_whole_string() {
        let long = alloc::format!("$share/g/{}", "a".repeat(65_535 - 9 + 1));
        assert_eq!(parse_shared(&long), Err(Error::TooLong { len: 65_536 }));
        let ok = &long[..65_535];
        assert!(parse_shared(ok).unwrap().is_some());
    }

    #[test]
    fn non_shared_strings_are_not_parsed() {
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(parse_shared("$SHARE/g/a"), Ok(None));
        assert_eq!(parse_shared("a/$share/g/a"), Ok(None));
        assert_eq!(parse_shared(""), Ok(None));
        assert_eq!(
            Subscription::parse("$share"),
            Ok(Subscription::Plain(TopicFilter::new("$share").unwrap()))
        );
        assert_eq!(Subscription::parse(""), Err(Error::Empty));
        assert_eq!(
            Subscription::parse("a+"),
            Err(Error::MisplacedSingleLevelWildcard { at: 1 })
        );
    }

    #[test]
    fn subscription_accessors() {
        let plain = Subscription::parse("a/#").unwrap();
        assert_eq!((plain.group(), plain.filter().as_str()), (None, "a/#"));
        let shared = Subscription::parse("$share/g/a/#").unwrap();
        assert_eq!(
            (shared.group(), shared.filter().as_str()),
            (Some("g"), "a/#")
        );
        assert_eq!(shared.as_str(), "$share/g/a/#");
        assert_eq!(alloc::format!("{shared}"), "$share/g/a/#");
    }
}
