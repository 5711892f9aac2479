use core::fmt;

use crate::Error;

/// [MQTT-4.7.3-3] the longest name or filter, in bytes.
const MAX_LEN: usize = u16::MAX as usize;

/// Bytes per block of the fast scan in [`validate_name`]; 32 lets LLVM use two SSE or one AVX2
/// compare per block.
const BLOCK: usize = 32;

/// Checks a topic name: non-empty, at most 65,535 bytes, no U+0000, no wildcard.
///
/// UTF-8 well-formedness is already guaranteed by `&str`. Control characters and U+FEFF are
/// allowed: the specification only says they *should* not be used.
///
/// ```
/// assert!(mqtt_topic::validate_name("sport/tennis").is_ok());
/// assert!(mqtt_topic::validate_name("sport/+").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<(), Error> {
    check_len(name)?;
    if has_forbidden(name.as_bytes(), false) {
        return first_name_error(name.as_bytes());
    }
    Ok(())
}

/// Whether `bytes` are a topic name written in ASCII: 1 to 65,535 bytes, none of them 0,
/// `+`, `#` or above 0x7F.
///
/// For decoders, which receive names as bytes: `true` means the bytes are well-formed UTF-8
/// *and* a valid name ([`validate_name`]), found in the one pass that `validate_name` alone
/// costs. `false` says nothing either way; check UTF-8 and call `validate_name` for the
/// precise error.
///
/// ```
/// assert!(mqtt_topic::is_ascii_name(b"sport/tennis"));
/// assert!(!mqtt_topic::is_ascii_name(b"sport/+"));
/// assert!(!mqtt_topic::is_ascii_name("sport/t\u{e9}nnis".as_bytes())); // valid, not ASCII
/// ```
// Not inlined: a call costs a few instructions, and inlined into a state machine's input
// path (with its vectorised block loop) it made a 3.1.1 publish/ack cycle 6 % slower
// (`cargo bench -p mqtt-state --bench session`) for fewer instructions.
#[inline(never)]
pub fn is_ascii_name(bytes: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&bytes.len()) && !has_forbidden(bytes, true)
}

/// Whether `bytes` holds 0, `+`, `#` or, with `high`, a byte above 0x7F. This runs for
/// every PUBLISH a broker receives, so it is one pass with no early exit inside a block: an
/// OR-reduction over a fixed-size block vectorises, a byte loop with three compares and a
/// branch each does not.
#[inline(always)]
fn has_forbidden(bytes: &[u8], high: bool) -> bool {
    let mut blocks = bytes.chunks_exact(BLOCK);
    for block in &mut blocks {
        if block
            .iter()
            .fold(0u8, |acc, &b| acc | forbidden_in_name(b, high))
            != 0
        {
            return true;
        }
    }
    // Most topics are shorter than a block: the tail goes eight bytes at a time as one
    // word, which costs a few instructions per word instead of several per byte.
    let tail = blocks.remainder();
    let word = |w: &[u8]| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    if tail.len() >= 8 {
        // Whole words, then one more word ending at the last byte (overlapping the previous
        // one rather than padding a partial word).
        tail.chunks_exact(8)
            .any(|w| word_has_forbidden(word(w), high))
            || word_has_forbidden(word(&tail[tail.len() - 8..]), high)
    } else {
        // Shorter than a word: the question is whether *any* byte is forbidden, so repeats
        // are harmless. Two overlapping 4-byte loads from 4 bytes up; bytes 0, n/2 and n-1
        // (which cover 1 to 3 bytes) below; an allowed byte elsewhere.
        let n = tail.len();
        let v = if n >= 4 {
            let lo = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
            let hi = u32::from_le_bytes([tail[n - 4], tail[n - 3], tail[n - 2], tail[n - 1]]);
            u64::from(lo) | u64::from(hi) << 32
        } else if n > 0 {
            let v = u64::from(tail[0]) | u64::from(tail[n / 2]) << 8 | u64::from(tail[n - 1]) << 16;
            v | u64::from_le_bytes([b'a'; 8]) & !0xFF_FFFF
        } else {
            // A name of whole blocks.
            u64::from_le_bytes([b'a'; 8])
        };
        word_has_forbidden(v, high)
    }
}

/// Whether any byte of `x` is 0, `+`, `#` or, with `high`, above 0x7F.
/// `(v - 0x01..) & !v & 0x80..` is non-zero exactly when some byte of `v` is zero; XOR turns
/// "equals c" into "is zero".
#[inline(always)]
fn word_has_forbidden(x: u64, high: bool) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    // `+` (0x2B) and `#` (0x23) differ only in bit 3, and no other byte ORed with 0x08
    // gives 0x2B: one test covers both.
    let high = if high { x & HI } else { 0 };
    zero(x) | zero((x | (LO * 0x08)) ^ (LO * u64::from(b'+'))) | high != 0
}

/// 1 if `b` may not appear in a topic name (or, with `high`, is above 0x7F), else 0 (a `u8`
/// rather than a `bool` so the reduction in [`has_forbidden`] is plain bitwise arithmetic).
#[inline(always)]
fn forbidden_in_name(b: u8, high: bool) -> u8 {
    // As in `word_has_forbidden`: `b | 0x08 == b'+'` exactly for `+` and `#`.
    u8::from(b == 0) | u8::from(b | 0x08 == b'+') | u8::from(high && b >= 0x80)
}

/// The error for the first forbidden byte of a name; the scan that found one does not say
/// where, so that it stays branch-free.
#[cold]
fn first_name_error(bytes: &[u8]) -> Result<(), Error> {
    for (at, &b) in bytes.iter().enumerate() {
        match b {
            // [MQTT-4.7.3-2] no U+0000
            0 => return Err(Error::NullCharacter { at }),
            // [MQTT-4.7.0-1] / [MQTT-3.3.2-2] no wildcards in a topic name
            b'+' | b'#' => return Err(Error::WildcardInName { at }),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a topic filter: non-empty, at most 65,535 bytes, no U+0000, `#` only alone and last,
/// `+` only alone in its level.
///
/// This is the syntax of section 4.7 only. A `$share/{ShareName}/{filter}` string is a valid
/// filter here, as it is in MQTT 3.1.1; an MQTT 5 server that wants shared subscriptions parses
/// it with [`Subscription::parse`](crate::Subscription::parse) or
/// [`parse_shared`](crate::parse_shared), which add the rules of section 4.8.2.
///
/// ```
/// assert!(mqtt_topic::validate_filter("sport/+/player1/#").is_ok());
/// assert!(mqtt_topic::validate_filter("sport/tennis#").is_err());
/// assert!(mqtt_topic::validate_filter("sport/ten+nis").is_err());
/// ```
pub fn validate_filter(filter: &str) -> Result<(), Error> {
    check_len(filter)?;
    check_filter_bytes(filter.as_bytes(), 0)
}

/// Checks the wildcard placement and NULs of `bytes`, which start at byte `base` of the string
/// the caller was given (so errors report offsets into that string). The length has been
/// checked by the caller.
pub(crate) fn check_filter_bytes(bytes: &[u8], base: usize) -> Result<(), Error> {
    // Most bytes of a filter are ordinary: a word at a time, find the lanes holding NUL, `+`
    // or `#` (exactly, lane by lane) and check only those, in order, so the first offending
    // byte is still the one reported.
    let mut words = bytes.chunks_exact(8);
    for (k, word) in (&mut words).enumerate() {
        let w = u64::from_le_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        let mut lanes = special_lanes(w);
        while lanes != 0 {
            check_filter_byte(bytes, 8 * k + (lanes.trailing_zeros() / 8) as usize, base)?;
            lanes &= lanes - 1;
        }
    }
    let tail = bytes.len() - words.remainder().len();
    for (j, &b) in words.remainder().iter().enumerate() {
        if forbidden_in_name(b, false) != 0 {
            check_filter_byte(bytes, tail + j, base)?;
        }
    }
    Ok(())
}

/// The high bit of each byte of `w` that is 0, `+` or `#`, and no other bit. Unlike the
/// yes/no test in [`word_has_forbidden`], exact lane by lane: `(b & 0x7F) + 0x7F` cannot
/// carry into the next byte.
#[inline(always)]
fn special_lanes(w: u64) -> u64 {
    const LO7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const LO: u64 = 0x0101_0101_0101_0101;
    let zero = |v: u64| !(((v & LO7) + LO7) | v | LO7);
    // As in `word_has_forbidden`: `b | 0x08 == b'+'` exactly for `+` and `#`.
    zero(w) | zero((w | (LO * 0x08)) ^ (LO * u64::from(b'+')))
}

/// Checks the NUL or wildcard at `bytes[i]` (`at` reported as `base + i`).
#[inline]
fn check_filter_byte(bytes: &[u8], i: usize, base: usize) -> Result<(), Error> {
    let at = base + i;
    let last = bytes.len() - 1;
    match bytes[i] {
        // [MQTT-4.7.3-2] no U+0000
        0 => Err(Error::NullCharacter { at }),
        b => {
            let starts_level = i == 0 || bytes[i - 1] == b'/';
            let ends_level = i == last || bytes[i + 1] == b'/';
            if b == b'#' {
                // [MQTT-4.7.1-1] '#' alone in its level and the last character
                if !starts_level || i != last {
                    return Err(Error::MisplacedMultiLevelWildcard { at });
                }
            } else if !(starts_level && ends_level) {
                // [MQTT-4.7.1-2] '+' fills its whole level
                return Err(Error::MisplacedSingleLevelWildcard { at });
            }
            Ok(())
        }
    }
}

pub(crate) fn check_len(s: &str) -> Result<(), Error> {
    if s.is_empty() {
        // [MQTT-4.7.3-1] at least one character
        return Err(Error::Empty);
    }
    if s.len() > MAX_LEN {
        // [MQTT-4.7.3-3] at most 65,535 bytes
        return Err(Error::TooLong { len: s.len() });
    }
    Ok(())
}

/// A topic name that is known to be valid (see [`validate_name`]).
///
/// ```
/// use mqtt_topic::TopicName;
/// let name = TopicName::new("sport/tennis/player1")?;
/// assert_eq!(name.as_str(), "sport/tennis/player1");
/// assert!(TopicName::new("sport/#").is_err());
/// # Ok::<(), mqtt_topic::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName<'a>(&'a str);

impl<'a> TopicName<'a> {
    /// Validates `name`.
    pub fn new(name: &'a str) -> Result<Self, Error> {
        validate_name(name).map(|()| Self(name))
    }

    /// A name from received bytes written in ASCII, checked in one pass
    /// ([`is_ascii_name`]): UTF-8 and the name rules together, where `from_utf8` and
    /// [`TopicName::new`] would take two. `None` says nothing either way: check UTF-8 and
    /// call [`TopicName::new`] for the precise error.
    ///
    /// For decoders: the name they hand on carries its check, so a message built from it
    /// is not checked again.
    ///
    /// ```
    /// use mqtt_topic::TopicName;
    /// assert_eq!(TopicName::from_ascii(b"a/b").map(|n| n.as_str()), Some("a/b"));
    /// assert!(TopicName::from_ascii(b"a/+").is_none());
    /// assert!(TopicName::from_ascii("\u{e9}".as_bytes()).is_none()); // valid, not ASCII
    /// ```
    #[inline]
    #[allow(unsafe_code)]
    pub fn from_ascii(bytes: &'a [u8]) -> Option<Self> {
        if !is_ascii_name(bytes) {
            return None;
        }
        // SAFETY: `is_ascii_name` returns true only when no byte is above 0x7F (its
        // `high` scan; `is_ascii_name_agrees_with_validate_name` and
        // `from_ascii_is_ascii` test it at every position). ASCII is well-formed UTF-8,
        // the only requirement of `from_utf8_unchecked`.
        Some(Self(unsafe { core::str::from_utf8_unchecked(bytes) }))
    }
    /// Wraps a name that was validated before (one the trees stored from a `TopicName`).
    #[cfg(feature = "alloc")]
    pub(crate) fn new_prevalidated(name: &'a str) -> Self {
        Self(name)
    }
    /// The name as a string slice.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
    /// The levels of the name, split at `/` (a name has at least one level, possibly empty).
    ///
    /// ```
    /// let name = mqtt_topic::TopicName::new("/a//b")?;
    /// assert!(name.levels().eq(["", "a", "", "b"]));
    /// # Ok::<(), mqtt_topic::Error>(())
    /// ```
    pub fn levels(&self) -> core::str::Split<'a, char> {
        self.0.split('/')
    }
}

/// A topic filter that is known to be valid (see [`validate_filter`]).
///
/// ```
/// use mqtt_topic::{TopicFilter, TopicName};
/// let filter = TopicFilter::new("sport/+/player1")?;
/// assert!(filter.matches(TopicName::new("sport/tennis/player1")?));
/// assert!(TopicFilter::new("sport+").is_err());
/// # Ok::<(), mqtt_topic::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter<'a>(&'a str);

impl<'a> TopicFilter<'a> {
    /// Validates `filter`.
    pub fn new(filter: &'a str) -> Result<Self, Error> {
        validate_filter(filter).map(|()| Self(filter))
    }
    /// Wraps a slice the caller has validated already (the inner filter of a shared filter).
    pub(crate) fn new_prevalidated(filter: &'a str) -> Self {
        Self(filter)
    }
    /// The filter as a string slice.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
    /// The levels of the filter, split at `/`.
    pub fn levels(&self) -> core::str::Split<'a, char> {
        self.0.split('/')
    }
    /// Whether the filter contains `+` or `#`.
    ///
    /// ```
    /// assert!(mqtt_topic::TopicFilter::new("a/+")?.has_wildcards());
    /// assert!(!mqtt_topic::TopicFilter::new("a/b")?.has_wildcards());
    /// # Ok::<(), mqtt_topic::Error>(())
    /// ```
    pub fn has_wildcards(&self) -> bool {
        self.0.bytes().any(|b| b == b'+' || b == b'#')
    }
    /// Whether this filter matches `name`; see [`matches()`](crate::matches).
    pub fn matches(&self, name: TopicName<'_>) -> bool {
        crate::matches(*self, name)
    }
}

impl fmt::Display for TopicName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Display for TopicFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl AsRef<str> for TopicName<'_> {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl AsRef<str> for TopicFilter<'_> {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl<'a> TryFrom<&'a str> for TopicName<'a> {
    type Error = Error;
    fn try_from(name: &'a str) -> Result<Self, Error> {
        Self::new(name)
    }
}

impl<'a> TryFrom<&'a str> for TopicFilter<'a> {
    type Error = Error;
    fn try_from(filter: &'a str) -> Result<Self, Error> {
        Self::new(filter)
    }
}

#[cfg(feature = "alloc")]
mod owned {
    use alloc::string::String;
    use core::fmt;

    use super::{validate_filter, validate_name, TopicFilter, TopicName};
    use crate::Error;

    /// An owned, valid topic name (see [`validate_name`]).
    ///
    /// ```
    /// use mqtt_topic::OwnedTopicName;
    /// let name = OwnedTopicName::new(String::from("a/b"))?;
    /// assert_eq!(name.as_topic_name().as_str(), "a/b");
    /// # Ok::<(), mqtt_topic::Error>(())
    /// ```
    #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct OwnedTopicName(String);

    impl OwnedTopicName {
        /// Validates `name` and takes ownership of it.
        pub fn new(name: String) -> Result<Self, Error> {
            validate_name(&name).map(|()| Self(name))
        }
        /// The name as a string slice.
        pub fn as_str(&self) -> &str {
            &self.0
        }
        /// A borrowed view.
        pub fn as_topic_name(&self) -> TopicName<'_> {
            TopicName(&self.0)
        }
        /// The underlying string.
        pub fn into_string(self) -> String {
            self.0
        }
    }

    /// An owned, valid topic filter (see [`validate_filter`]).
    ///
    /// ```
    /// use mqtt_topic::OwnedTopicFilter;
    /// let filter = OwnedTopicFilter::new(String::from("a/#"))?;
    /// assert_eq!(filter.as_topic_filter().as_str(), "a/#");
    /// # Ok::<(), mqtt_topic::Error>(())
    /// ```
    #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct OwnedTopicFilter(String);

    impl OwnedTopicFilter {
        /// Validates `filter` and takes ownership of it.
        pub fn new(filter: String) -> Result<Self, Error> {
            validate_filter(&filter).map(|()| Self(filter))
        }
        /// The filter as a string slice.
        pub fn as_str(&self) -> &str {
            &self.0
        }
        /// A borrowed view.
        pub fn as_topic_filter(&self) -> TopicFilter<'_> {
            TopicFilter(&self.0)
        }
        /// The underlying string.
        pub fn into_string(self) -> String {
            self.0
        }
    }

    impl From<TopicName<'_>> for OwnedTopicName {
        fn from(name: TopicName<'_>) -> Self {
            Self(name.0.into())
        }
    }

    impl From<TopicFilter<'_>> for OwnedTopicFilter {
        fn from(filter: TopicFilter<'_>) -> Self {
            Self(filter.0.into())
        }
    }

    impl TryFrom<String> for OwnedTopicName {
        type Error = Error;
        fn try_from(name: String) -> Result<Self, Error> {
            Self::new(name)
        }
    }

    impl TryFrom<String> for OwnedTopicFilter {
        type Error = Error;
        fn try_from(filter: String) -> Result<Self, Error> {
            Self::new(filter)
        }
    }

    impl fmt::Display for OwnedTopicName {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl fmt::Display for OwnedTopicFilter {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
}

#[cfg(feature = "alloc")]
pub use owned::{OwnedTopicFilter, OwnedTopicName};

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;

    /// `is_ascii_name` says yes exactly to ASCII bytes that `validate_name` accepts, with
    /// any byte at any position of names from empty to past three blocks, and at the
    /// length limit.
    #[test]
    fn is_ascii_name_agrees_with_validate_name() {
        let reference = |b: &[u8]| {
            b.is_ascii() && core::str::from_utf8(b).is_ok_and(|s| validate_name(s).is_ok())
        };
        for len in 0..=100 {
            for at in 0..len.max(1) {
                for byte in [b'a', 0, b'+', b'#', 0x7F, 0x80, 0xC3, 0xFF, b'/', b'$'] {
                    let mut v = vec![b'a'; len];
                    if len > 0 {
                        v[at] = byte;
                    }
                    assert_eq!(is_ascii_name(&v), reference(&v), "{v:?}");
                }
            }
        }
        assert!(is_ascii_name(&vec![b'a'; MAX_LEN]));
        assert!(!is_ascii_name(&vec![b'a'; MAX_LEN + 1]));
    }

    /// The `unsafe` conversion in `from_ascii` trusts `is_ascii_name` to see every high
    /// byte: checked for every byte value at every position of short and long names.
    #[test]
    fn from_ascii_is_ascii() {
        for len in [1, 2, 3, 7, 8, 9, 16, 31, 32, 33, 40, 64, 70] {
            for at in 0..len {
                for byte in 0x80..=0xFF {
                    let mut name = [b'a'; 70];
                    name[at] = byte;
                    assert!(TopicName::from_ascii(&name[..len]).is_none());
                }
            }
        }
        assert_eq!(TopicName::from_ascii(b"a/b"), Some(TopicName("a/b")));
        assert_eq!(TopicName::from_ascii(b""), None);
    }

    #[test]
    fn mqtt_4_7_3_1_empty_name_and_filter_rejected() {
        assert_eq!(validate_name(""), Err(Error::Empty));
        assert_eq!(validate_filter(""), Err(Error::Empty));
    }

    #[test]
    fn mqtt_4_7_3_1_single_separator_is_valid() {
        // "/" is one character: two empty levels, valid as both name and filter.
        assert_eq!(validate_name("/"), Ok(()));
        assert_eq!(validate_filter("/"), Ok(()));
    }

    #[test]
    fn mqtt_4_7_3_3_length_limit_is_65535_bytes() {
        let ok = "a".repeat(65_535);
        assert_eq!(validate_name(&ok), Ok(()));
        assert_eq!(validate_filter(&ok), Ok(()));
        let long = "a".repeat(65_536);
        assert_eq!(validate_name(&long), Err(Error::TooLong { len: 65_536 }));
        assert_eq!(validate_filter(&long), Err(Error::TooLong { len: 65_536 }));
        // The limit is in UTF-8 bytes, not characters: 21,846 three-byte characters = 65,538.
        let wide = "€".repeat(21_846);
        assert_eq!(validate_name(&wide), Err(Error::TooLong { len: 65_538 }));
    }

    #[test]
    fn mqtt_4_7_3_2_nul_rejected_with_offset() {
        assert_eq!(validate_name("a\0b"), Err(Error::NullCharacter { at: 1 }));
        assert_eq!(validate_filter("a/\0"), Err(Error::NullCharacter { at: 2 }));
    }

    #[test]
    fn mqtt_3_3_2_2_wildcards_rejected_in_name() {
        assert_eq!(validate_name("+"), Err(Error::WildcardInName { at: 0 }));
        assert_eq!(validate_name("a/#"), Err(Error::WildcardInName { at: 2 }));
        assert_eq!(validate_name("a+b"), Err(Error::WildcardInName { at: 1 }));
    }

    /// The word-at-a-time filter check gives the same result, first error included, as a
    /// plain byte loop, for every string over the interesting bytes up to length 11 (every
    /// lane of a word, a tail, and wildcards next to separators).
    #[test]
    fn filter_check_agrees_with_a_byte_loop() {
        fn reference(bytes: &[u8], base: usize) -> Result<(), Error> {
            let last = bytes.len().wrapping_sub(1);
            for (i, &b) in bytes.iter().enumerate() {
                let at = base + i;
                match b {
                    0 => return Err(Error::NullCharacter { at }),
                    b'+' | b'#' => {
                        let starts_level = i == 0 || bytes[i - 1] == b'/';
                        let ends_level = i == last || bytes[i + 1] == b'/';
                        if b == b'#' {
                            if !starts_level || i != last {
                                return Err(Error::MisplacedMultiLevelWildcard { at });
                            }
                        } else if !(starts_level && ends_level) {
                            return Err(Error::MisplacedSingleLevelWildcard { at });
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        let alphabet = [b'a', b'/', b'+', b'#', 0, 0x2B ^ 0x08 ^ 0x10, 0x80];
        let mut buf = [0u8; 11];
        for len in 0..=buf.len() {
            // Every string of `len` bytes over the alphabet would be 7^11; a stride keeps
            // the count near 200k while visiting every byte in every position.
            let total = (alphabet.len() as u64).pow(len as u32);
            let step = (total / 200_000).max(1) | 1;
            let mut k = 0;
            while k < total {
                let mut x = k;
                for b in buf.iter_mut().take(len) {
                    *b = alphabet[(x % alphabet.len() as u64) as usize];
                    x /= alphabet.len() as u64;
                }
                let s = &buf[..len];
                assert_eq!(check_filter_bytes(s, 3), reference(s, 3), "{s:?}");
                k += step;
            }
        }
    }

    /// The bit tricks behind the scans name exactly NUL, `+` and `#`, for every byte value
    /// in every lane of a word.
    #[test]
    fn forbidden_byte_tests_are_exact() {
        for b in 0..=255u8 {
            let want = b == 0 || b == b'+' || b == b'#';
            assert_eq!(forbidden_in_name(b, false) == 1, want, "{b:#x}");
            assert_eq!(forbidden_in_name(b, true) == 1, want || b >= 0x80, "{b:#x}");
            for lane in 0..8 {
                let mut w = [b'a'; 8];
                w[lane] = b;
                assert_eq!(
                    word_has_forbidden(u64::from_le_bytes(w), false),
                    want,
                    "{b:#x} @{lane}"
                );
                assert_eq!(
                    word_has_forbidden(u64::from_le_bytes(w), true),
                    want || b >= 0x80,
                    "{b:#x} @{lane} (high)"
                );
                for other in [0u8, b'+', b'#', b'a', 0xFF] {
                    // Lane exactness: each lane flags itself only, whatever its neighbours.
                    let mut w = [other; 8];
                    w[lane] = b;
                    let got = special_lanes(u64::from_le_bytes(w)) >> (8 * lane + 7) & 1 == 1;
                    assert_eq!(got, want, "{b:#x} @{lane} among {other:#x}");
                }
            }
        }
    }

    #[test]
    fn mqtt_3_3_2_2_error_offset_in_every_block_position() {
        // The fast scan works in 32-byte blocks: a forbidden byte in any block, at any
        // position, and in the tail must be found, and the first one reported.
        for len in [1, 2, 3, 4, 5, 7, 8, 9, 15, 31, 32, 33, 39, 64, 65, 100] {
            for at in 0..len {
                for (byte, want) in [
                    ('\0', Error::NullCharacter { at }),
                    ('+', Error::WildcardInName { at }),
                    ('#', Error::WildcardInName { at }),
                ] {
                    let mut s: String = "x".repeat(len);
                    s.replace_range(at..=at, byte.encode_utf8(&mut [0; 4]));
                    // a second forbidden byte later must not be the one reported
                    if at + 2 < len {
                        s.replace_range(at + 2..at + 3, "#");
                    }
                    assert_eq!(validate_name(&s), Err(want), "len {len} at {at}");
                }
            }
            assert_eq!(validate_name(&"x".repeat(len)), Ok(()));
        }
    }

    #[test]
    fn mqtt_4_7_3_2_non_ascii_utf8_name_is_valid() {
        // Multi-byte characters contain no 0x00, 0x23 or 0x2B bytes: never misreported.
        assert_eq!(validate_name("ü/€/𝄞/\u{7f}/\u{feff}"), Ok(()));
    }

    #[test]
    fn mqtt_4_7_1_1_hash_alone_and_last() {
        for ok in ["#", "a/#", "/#", "+/#", "a//#"] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("a#", 1),
            ("#/", 0),
            ("#/a", 0),
            ("a/#/b", 2),
            ("a/b#", 3),
            ("##", 0),
            ("a/#a", 2),
        ];
        for (filter, at) in bad {
            assert_eq!(
                validate_filter(filter),
                Err(Error::MisplacedMultiLevelWildcard { at }),
                "{filter}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_1_2_plus_fills_level() {
        for ok in ["+", "+/", "/+", "+/+", "a/+/b", "+/#", "a/+//+"] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        let bad = [("a+", 1), ("+a", 0), ("a/b+/c", 3), ("++", 0), ("a/++", 2)];
        for (filter, at) in bad {
            assert_eq!(
                validate_filter(filter),
                Err(Error::MisplacedSingleLevelWildcard { at }),
                "{filter}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_0_1_filter_wildcards_but_name_none() {
        assert!(TopicFilter::new("a/+/#").is_ok());
        assert!(TopicName::new("a/+/#").is_err());
        assert!(TopicName::new("a/b/c").is_ok());
    }

    #[test]
    fn share_prefix_is_a_valid_plain_filter() {
        // Section 4.7 syntax only: `$share/...` is checked by `Subscription::parse`.
        assert_eq!(validate_filter("$share/g/a/#"), Ok(()));
        assert_eq!(validate_filter("$share/+/a"), Ok(()));
    }

    #[test]
    fn typed_wrappers_round_trip() {
        let name = TopicName::new("a/b").unwrap();
        assert_eq!(name.as_str(), "a/b");
        assert_eq!(alloc::format!("{name}"), "a/b");
        assert!(name.levels().eq(["a", "b"]));
        let filter = TopicFilter::try_from("a/+").unwrap();
        assert!(filter.has_wildcards());
        assert!(filter.levels().eq(["a", "+"]));
        let owned = OwnedTopicFilter::from(filter);
        assert_eq!(owned.as_topic_filter(), filter);
        assert_eq!(
            OwnedTopicName::new("a/+".into()),
            Err(Error::WildcardInName { at: 2 })
        );
        assert_eq!(
            OwnedTopicName::try_from(String::from("x"))
                .unwrap()
                .into_string(),
            "x"
        );
    }
}
