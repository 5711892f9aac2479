//! `TopicBuf` holds a valid topic name and nothing else, and gives back exactly what it was
//! built from, whichever way it was built ([MQTT-3.3.2-2], [MQTT-4.7.3-1] to
//! [MQTT-4.7.3-3]). Needs the `bytes` feature (`cargo test -p mqtt-topic --features bytes`;
//! CI's `--all-features` runs it).
#![cfg(feature = "bytes")]

use bytes::Bytes;
use mqtt_topic::{validate_name, Error, OwnedTopicName, TopicBuf, TopicName};
use proptest::prelude::*;

/// Strings biased towards the bytes that matter: wildcards, NUL, separators, multi-byte
/// characters, and lengths around the 65,535-byte limit.
fn topic_like() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a/+#\u{0}$é€ ]{0,40}",
        1 => (65_530usize..65_540, prop::sample::select(vec!['a', '+', 'é']))
            .prop_map(|(n, c)| {
                let mut s = "a".repeat(n);
                s.push(c);
                s
            }),
    ]
}

proptest! {
    /// [MQTT-3.3.2-2] [MQTT-4.7.3-1] [MQTT-4.7.3-2] [MQTT-4.7.3-3] a TopicBuf exists exactly
    /// for the strings `validate_name` accepts, with the same error otherwise.
    #[test]
    fn holds_only_valid_names(s in topic_like()) {
        let want = validate_name(&s);
        let got = TopicBuf::try_from(s.clone());
        prop_assert_eq!(got.clone().map(|_| ()), want);
        prop_assert_eq!(TopicName::new(&s).is_ok(), got.is_ok());
        prop_assert_eq!(OwnedTopicName::new(s.clone()).is_ok(), got.is_ok());
    }

    /// Every constructor gives back the bytes it was given, as a string and as a name; a
    /// copy, a view into a frame and a clone are equal.
    #[test]
    fn round_trips(s in topic_like(), pre in "[a-z]{0,5}", post in "[a-z]{0,5}") {
        let Ok(name) = TopicName::new(&s) else { return Ok(()) };
        let owned = TopicBuf::try_from(s.clone()).unwrap();
        prop_assert_eq!(owned.as_str(), s.as_str());
        prop_assert_eq!(owned.as_topic_name(), name);
        prop_assert_eq!(owned.as_bytes().as_ref(), s.as_bytes());
        prop_assert_eq!(owned.to_string(), s.clone());

        let copied = TopicBuf::from(name);
        prop_assert_eq!(&copied, &owned);
        prop_assert_eq!(TopicBuf::from(OwnedTopicName::new(s.clone()).unwrap()), owned.clone());
        prop_assert_eq!(OwnedTopicName::from(owned.clone()).into_string(), s.clone());

        // A view into a frame that holds the name among other bytes: shared, not copied.
        let frame = Bytes::from(format!("{pre}{s}{post}"));
        let inner = std::str::from_utf8(&frame[pre.len()..pre.len() + s.len()]).unwrap();
        let view = TopicBuf::slice_ref(&frame, TopicName::new(inner).unwrap());
        prop_assert_eq!(view.as_bytes().as_ptr(), frame[pre.len()..].as_ptr());
        prop_assert_eq!(&view, &owned);
        // A name from elsewhere is copied, whatever the frame.
        let elsewhere = TopicBuf::slice_ref(&frame, name);
        prop_assert_eq!(&elsewhere, &owned);
        prop_assert_eq!(view.clone().into_bytes(), Bytes::from(s.clone()));
    }
}

#[test]
fn static_names_are_checked_too() {
    assert_eq!(
        TopicBuf::from_static("a/#"),
        Err(Error::WildcardInName { at: 2 })
    );
    assert_eq!(TopicBuf::try_from("a/b").unwrap(), "a/b");
}
