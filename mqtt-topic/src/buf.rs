//! [`TopicBuf`]: a checked topic name in a shared `bytes::Bytes` buffer.

use alloc::string::String;
use core::fmt;

use bytes::Bytes;

use crate::{validate_name, Error, OwnedTopicName, TopicName};

/// A valid topic name ([`validate_name`]) held in a `bytes::Bytes`: cloning it shares the
/// buffer, and it can be a view into the frame a PUBLISH was decoded from.
///
/// It exists so that a message carries the proof that its topic was checked. A broker
/// checks a received topic once ([MQTT-3.3.2-2] no wildcard, [MQTT-4.7.3-1] not empty,
/// [MQTT-4.7.3-2] no U+0000, [MQTT-4.7.3-3] at most 65,535 bytes), then routes it and writes
/// it to every subscriber through [`TopicBuf::as_topic_name`], which costs nothing: no
/// validation and no UTF-8 scan per copy.
///
/// Every constructor validates, or starts from a [`TopicName`] (or [`OwnedTopicName`]),
/// which was validated when it was made; there is no way to build an unchecked one.
/// Unlike [`OwnedTopicName`] (a `String`), a `TopicBuf` clones in O(1) and can share a
/// receive buffer without copying.
///
/// ```
/// use mqtt_topic::TopicBuf;
///
/// let t = TopicBuf::from_static("sensors/t1")?;
/// let copy = t.clone(); // a reference count, not a copy
/// assert_eq!(copy.as_topic_name().as_str(), "sensors/t1");
/// assert!(TopicBuf::from_static("sensors/+").is_err());
/// # Ok::<(), mqtt_topic::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicBuf(
    /// Invariant: the UTF-8 bytes of a valid topic name, exactly those of the `&str` it
    /// was built from (`Bytes` never changes its contents).
    Bytes,
);

impl TopicBuf {
    /// Validates `name` and refers to it where it is, without copying.
    pub fn from_static(name: &'static str) -> Result<Self, Error> {
        validate_name(name)?;
        Ok(Self(Bytes::from_static(name.as_bytes())))
    }

    /// A view of `name` inside `buf` (a received frame that `name` was decoded from), or a
    /// copy when `name` does not lie inside `buf`. Never panics.
    ///
    /// A view keeps all of `buf` alive: for a name that outlives the frame (a Topic Alias
    /// mapping, a will), take a copy with [`TopicBuf::from`] instead.
    pub fn slice_ref(buf: &Bytes, name: TopicName<'_>) -> Self {
        let (start, len) = (buf.as_ptr() as usize, buf.len());
        let (at, n) = (name.as_str().as_ptr() as usize, name.as_str().len());
        if at >= start && at - start <= len && n <= len - (at - start) {
            Self(buf.slice_ref(name.as_str().as_bytes()))
        } else {
            Self::from(name)
        }
    }

    /// The name, checked when this was built: nothing is scanned again.
    #[inline]
    pub fn as_topic_name(&self) -> TopicName<'_> {
        TopicName::new_prevalidated(self.as_str())
    }

    /// The name as a string slice.
    #[inline]
    #[allow(unsafe_code)]
    pub fn as_str(&self) -> &str {
        // `from_utf8` here would cost more than the name check this type exists to save
        // (`cargo bench -p mqtt-state --bench session -- fan_out`).
        debug_assert!(core::str::from_utf8(&self.0).is_ok());
        // SAFETY: every constructor stores exactly the bytes of a `&str` (`from_static`,
        // `From<TopicName>`, `slice_ref` of a `TopicName` or its copy, `TryFrom<String>`,
        // `From<OwnedTopicName>`), the field is private, and `Bytes` is immutable: the
        // bytes are well-formed UTF-8, the only requirement of `from_utf8_unchecked`.
        unsafe { core::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes (a topic name's UTF-8).
    #[inline]
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The underlying buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<TopicName<'_>> for TopicBuf {
    /// A copy of `name` in a buffer of its own; no check, `name` is valid already.
    fn from(name: TopicName<'_>) -> Self {
        Self(Bytes::copy_from_slice(name.as_str().as_bytes()))
    }
}

impl From<OwnedTopicName> for TopicBuf {
    /// Takes over the string's allocation; no check, the name is valid already.
    fn from(name: OwnedTopicName) -> Self {
        Self(Bytes::from(name.into_string().into_bytes()))
    }
}

impl From<TopicBuf> for OwnedTopicName {
    fn from(name: TopicBuf) -> Self {
        name.as_topic_name().into()
    }
}

impl TryFrom<&'static str> for TopicBuf {
    type Error = Error;
    /// [`TopicBuf::from_static`].
    fn try_from(name: &'static str) -> Result<Self, Error> {
        Self::from_static(name)
    }
}

impl TryFrom<String> for TopicBuf {
    type Error = Error;
    /// Validates `name` and takes over its allocation.
    fn try_from(name: String) -> Result<Self, Error> {
        OwnedTopicName::new(name).map(Self::from)
    }
}

impl<'a> From<&'a TopicBuf> for TopicName<'a> {
    fn from(name: &'a TopicBuf) -> Self {
        name.as_topic_name()
    }
}

impl AsRef<str> for TopicBuf {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for TopicBuf {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for TopicBuf {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for TopicBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_3_3_2_2_only_valid_names() {
        assert_eq!(
            TopicBuf::from_static("a/+"),
            Err(Error::WildcardInName { at: 2 })
        );
        assert_eq!(TopicBuf::from_static(""), Err(Error::Empty));
        assert_eq!(
            TopicBuf::try_from(String::from("a\0")),
            Err(Error::NullCharacter { at: 1 })
        );
        assert_eq!(TopicBuf::from_static("a/b").unwrap(), "a/b");
    }

    #[test]
    fn slice_ref_shares_inside_and_copies_outside() {
        let frame = Bytes::from_static(b"..a/b..");
        let inside = core::str::from_utf8(&frame[2..5]).unwrap();
        let t = TopicBuf::slice_ref(&frame, TopicName::new(inside).unwrap());
        assert_eq!(t.as_bytes().as_ptr(), frame[2..].as_ptr());
        assert_eq!(t, "a/b");
        // Ends exactly at the end of the frame.
        let tail = core::str::from_utf8(&frame[4..]).unwrap();
        assert_eq!(
            TopicBuf::slice_ref(&frame, TopicName::new(tail).unwrap()),
            "b.."
        );
        let other = String::from("a/b");
        let t = TopicBuf::slice_ref(&frame, TopicName::new(&other).unwrap());
        assert_eq!(t, "a/b");
        assert_ne!(t.as_bytes().as_ptr(), other.as_ptr());
        // Overlapping the end of the frame: copied, not a panic.
        let empty = Bytes::new();
        assert_eq!(
            TopicBuf::slice_ref(&empty, TopicName::new(tail).unwrap()),
            "b.."
        );
    }
}
