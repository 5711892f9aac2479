use crate::Error;

const MAX_LEN: usize = u16::MAX as usize;

/// Checks a topic name: non-empty, at most 65,535 bytes, no U+0000, no wildcard.
///
/// ```
/// assert!(mqtt_topic::validate_name("sport/tennis").is_ok());
/// assert!(mqtt_topic::validate_name("sport/+").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<(), Error> {
    check_len(name)?;
    // One pass over the bytes: this runs for every PUBLISH a broker receives.
    for (at, &b) in name.as_bytes().iter().enumerate() {
        match b {
            0 => return Err(Error::NullCharacter { at }),
            b'+' | b'#' => return Err(Error::WildcardInName { at }),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a topic filter: non-empty, at most 65,535 bytes, no U+0000, `#` only alone and last,
/// `+` only alone in its level.
///
/// ```
/// assert!(mqtt_topic::validate_filter("sport/+/player1/#").is_ok());
/// assert!(mqtt_topic::validate_filter("sport/tennis#").is_err());
/// ```
pub fn validate_filter(filter: &str) -> Result<(), Error> {
    check_len(filter)?;
    let bytes = filter.as_bytes();
    for (at, &b) in bytes.iter().enumerate() {
        let alone = (at == 0 || bytes[at - 1] == b'/')
            && (at + 1 == bytes.len() || bytes[at + 1] == b'/');
        match b {
            0 => return Err(Error::NullCharacter { at }),
            b'#' if !alone || at + 1 != bytes.len() => {
                return Err(Error::MisplacedMultiLevelWildcard { at })
            }
            b'+' if !alone => return Err(Error::MisplacedSingleLevelWildcard { at }),
            _ => {}
        }
    }
    Ok(())
}

fn check_len(s: &str) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(Error::TooLong { len: s.len() });
    }
    Ok(())
}

/// A topic name that is known to be valid (see [`validate_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName<'a>(&'a str);

impl<'a> TopicName<'a> {
    /// Validates `name`.
    pub fn new(name: &'a str) -> Result<Self, Error> {
        validate_name(name).map(|()| Self(name))
    }
    /// The name as a string slice.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// A topic filter that is known to be valid (see [`validate_filter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter<'a>(&'a str);

impl<'a> TopicFilter<'a> {
    /// Validates `filter`.
    pub fn new(filter: &'a str) -> Result<Self, Error> {
        validate_filter(filter).map(|()| Self(filter))
    }
    /// The filter as a string slice.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}
