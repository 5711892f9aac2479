//! Variable Byte Integers: 1 to 4 bytes, 7 bits each, least significant group first.

/// The largest value four bytes hold.
pub(crate) const MAX: u32 = 268_435_455;

/// How many bytes `v` takes; `v` must not exceed [`MAX`].
#[inline]
pub(crate) const fn len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `v` into `out`, returning the number of bytes; `out` holds at least 4.
#[inline]
pub(crate) fn write(mut v: u32, out: &mut [u8; 4]) -> usize {
    // Nearly every packet's length takes one or two bytes: no loop for those.
    if v < 128 {
        out[0] = v as u8;
        return 1;
    }
    if v < 16_384 {
        out[0] = (v & 0x7F) as u8 | 0x80;
        out[1] = (v >> 7) as u8;
        return 2;
    }
    let mut i = 0;
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v != 0 {
            b |= 0x80;
        }
        out[i] = b;
        i += 1;
        if v == 0 {
            return i;
        }
    }
}

/// Writes `v` into `out`, which is exactly [`len`]`(v)` bytes long. Byte stores: copying
/// 1-4 bytes from a scratch array by a slice of runtime length was a call to `memcpy`.
#[inline]
pub(crate) fn write_exact(mut v: u32, out: &mut [u8]) {
    match out {
        // Nearly every packet: no loop.
        [a] => *a = v as u8,
        [a, b] => {
            *a = v as u8 | 0x80;
            *b = (v >> 7) as u8;
        }
        _ => {
            let last = out.len().saturating_sub(1);
            for (i, o) in out.iter_mut().enumerate() {
                *o = (v & 0x7F) as u8 | if i < last { 0x80 } else { 0 };
                v >>= 7;
            }
        }
    }
}

/// The outcome of reading a Variable Byte Integer from the front of a slice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// The value and how many bytes it took.
    Done(u32, usize),
    /// The slice ended before the last byte.
    Short,
    /// A fifth byte would be needed.
    TooLong,
    /// More bytes than the value needs ([MQTT-1.5.5-1]).
    NotMinimal,
}

#[inline]
pub(crate) fn read(buf: &[u8]) -> Read {
    let mut value = 0u32;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Read::Short;
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            // [MQTT-1.5.5-1] a last byte of 0 after the first is padding.
            if i > 0 && b == 0 {
                return Read::NotMinimal;
            }
            return Read::Done(value, i + 1);
        }
    }
    Read::TooLong
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_round_trip() {
        for v in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX] {
            let mut out = [0; 4];
            let n = write(v, &mut out);
            assert_eq!(n, len(v));
            assert_eq!(read(&out[..n]), Read::Done(v, n));
            // The encoder's byte-store form writes the same bytes.
            let mut exact = [0xEE; 4];
            write_exact(v, &mut exact[..n]);
            assert_eq!(exact[..n], out[..n], "{v}");
            // Every shorter prefix is incomplete, not wrong.
            for k in 0..n {
                assert_eq!(read(&out[..k]), Read::Short);
            }
        }
    }

    #[test]
    fn spec_examples() {
        // Table 1.1 of the 5.0 standard.
        assert_eq!(read(&[0x7F]), Read::Done(127, 1));
        assert_eq!(read(&[0x80, 0x01]), Read::Done(128, 2));
        assert_eq!(read(&[0xFF, 0x7F]), Read::Done(16_383, 2));
        assert_eq!(read(&[0x80, 0x80, 0x01]), Read::Done(16_384, 3));
        assert_eq!(read(&[0xFF, 0xFF, 0xFF, 0x7F]), Read::Done(MAX, 4));
    }

    #[test]
    fn fifth_byte_is_malformed() {
        assert_eq!(read(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]), Read::TooLong);
    }

    #[test]
    fn mqtt_1_5_5_1_minimal_encoding() {
        assert_eq!(read(&[0x80, 0x00]), Read::NotMinimal);
        assert_eq!(read(&[0x81, 0x80, 0x00]), Read::NotMinimal);
        assert_eq!(read(&[0x00]), Read::Done(0, 1));
    }
}
