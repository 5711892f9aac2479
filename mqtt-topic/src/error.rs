/// What is wrong with a topic name, a topic filter or a shared-subscription filter.
///
/// Each variant names the normative statement it enforces. The IDs are those of MQTT 5.0; where
/// MQTT 3.1.1 numbers the same rule differently, the variant's documentation says so.
/// Byte offsets (`at`) always count from the start of the string that was passed in, also for
/// the inner filter of a `$share/...` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [MQTT-4.7.3-1] names and filters are at least one character long.
    #[error("[MQTT-4.7.3-1] topic is empty")]
    Empty,
    /// [MQTT-4.7.3-3] names and filters are at most 65,535 bytes.
    #[error("[MQTT-4.7.3-3] topic is {len} bytes, more than 65535")]
    TooLong {
        /// The length in bytes.
        len: usize,
    },
    /// [MQTT-4.7.3-2] names and filters never contain U+0000.
    #[error("[MQTT-4.7.3-2] topic contains U+0000 at byte {at}")]
    NullCharacter {
        /// Byte offset of the NUL.
        at: usize,
    },
    /// [MQTT-4.7.0-1] / [MQTT-3.3.2-2] a topic name contains `+` or `#`
    /// (MQTT 3.1.1: [MQTT-4.7.1-1]).
    #[error("[MQTT-3.3.2-2] topic name contains wildcard at byte {at}")]
    WildcardInName {
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// [MQTT-4.7.1-1] `#` is not alone in its level or not last (MQTT 3.1.1: [MQTT-4.7.1-2]).
    #[error("[MQTT-4.7.1-1] '#' at byte {at} is not alone in the last level")]
    MisplacedMultiLevelWildcard {
        /// Byte offset of the `#`.
        at: usize,
    },
    /// [MQTT-4.7.1-2] `+` does not fill its whole level (MQTT 3.1.1: [MQTT-4.7.1-3]).
    #[error("[MQTT-4.7.1-2] '+' at byte {at} does not fill its level")]
    MisplacedSingleLevelWildcard {
        /// Byte offset of the `+`.
        at: usize,
    },
    /// [MQTT-4.8.2-1] `$share/` is not followed by a ShareName of at least one character.
    #[error("[MQTT-4.8.2-1] shared subscription has an empty ShareName")]
    EmptyShareName,
    /// [MQTT-4.8.2-2] the ShareName contains `+` or `#`.
    #[error("[MQTT-4.8.2-2] ShareName contains wildcard at byte {at}")]
    WildcardInShareName {
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// [MQTT-4.8.2-2] the ShareName is not followed by `/` and a non-empty topic filter.
    #[error("[MQTT-4.8.2-2] shared subscription has no topic filter after the ShareName")]
    MissingSharedFilter,
}

#[cfg(test)]
mod tests {
    use super::Error;
    use alloc::string::ToString;

    #[test]
    fn messages_cite_the_spec_and_the_offset() {
        let cases = [
            (Error::Empty, "[MQTT-4.7.3-1]"),
            (
                Error::TooLong { len: 70_000 },
                "[MQTT-4.7.3-3] topic is 70000 bytes",
            ),
            (
                Error::NullCharacter { at: 3 },
                "[MQTT-4.7.3-2] topic contains U+0000 at byte 3",
            ),
            (Error::WildcardInName { at: 1 }, "[MQTT-3.3.2-2]"),
            (
                Error::MisplacedMultiLevelWildcard { at: 2 },
                "[MQTT-4.7.1-1] '#' at byte 2",
            ),
            (
                Error::MisplacedSingleLevelWildcard { at: 4 },
                "[MQTT-4.7.1-2] '+' at byte 4",
            ),
            (Error::EmptyShareName, "[MQTT-4.8.2-1]"),
            (
                Error::WildcardInShareName { at: 7 },
                "[MQTT-4.8.2-2] ShareName contains wildcard at byte 7",
            ),
            (Error::MissingSharedFilter, "[MQTT-4.8.2-2]"),
        ];
        for (error, text) in cases {
            assert!(error.to_string().starts_with(text), "{error}");
        }
    }
}
