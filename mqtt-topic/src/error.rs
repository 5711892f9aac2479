/// What is wrong with a topic name or filter.
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
    /// [MQTT-4.7.0-1] / [MQTT-3.3.2-2] a topic name contains `+` or `#`.
    #[error("[MQTT-3.3.2-2] topic name contains wildcard at byte {at}")]
    WildcardInName {
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// [MQTT-4.7.1-1] `#` is not alone in its level or not last.
    #[error("[MQTT-4.7.1-1] '#' at byte {at} is not alone in the last level")]
    MisplacedMultiLevelWildcard {
        /// Byte offset of the `#`.
        at: usize,
    },
    /// [MQTT-4.7.1-2] `+` does not fill its whole level.
    #[error("[MQTT-4.7.1-2] '+' at byte {at} does not fill its level")]
    MisplacedSingleLevelWildcard {
        /// Byte offset of the `+`.
        at: usize,
    },
}
