//! A cursor over one packet's body. Every read checks the length first and fails with
//! `UnexpectedEnd`: the frame is complete, so running short means the packet is malformed,
//! never that more bytes are coming.

use mqtt_topic::TopicName;

use crate::{varint, Error, PacketType};

#[derive(Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pub(crate) packet: PacketType,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a [u8], packet: PacketType) -> Self {
        Self { buf, packet }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next byte, not consumed.
    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// Consumes `n` bytes that `peek` has seen.
    #[inline]
    pub(crate) fn advance(&mut self, n: usize) {
        self.buf = &self.buf[n..];
    }

    #[inline]
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    #[inline]
    fn end(&self) -> Error {
        Error::UnexpectedEnd {
            packet: self.packet,
        }
    }

    /// Fails unless every byte was consumed.
    #[inline]
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                packet: self.packet,
                extra: self.buf.len(),
            })
        }
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.buf.len() {
            return Err(self.end());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        let (&b, tail) = self.buf.split_first().ok_or(self.end())?;
        self.buf = tail;
        Ok(b)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u32, Error> {
        match varint::read(self.buf) {
            varint::Read::Done(v, n) => {
                self.buf = &self.buf[n..];
                Ok(v)
            }
            varint::Read::Short => Err(self.end()),
            varint::Read::TooLong => Err(Error::VarIntTooLong),
            varint::Read::NotMinimal => Err(Error::VarIntNotMinimal),
        }
    }

    /// Binary Data: a two-byte length, then that many bytes.
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// UTF-8 without the NUL check, for callers that scan for NUL along with other bytes
    /// (topic names and filters).
    #[inline]
    pub(crate) fn utf8(&mut self) -> Result<&'a str, Error> {
        let b = self.binary()?;
        // [MQTT-1.5.4-1] [MQTT-1.5.3-1] `from_utf8` rejects ill-formed sequences and encoded
        // surrogates; [MQTT-1.5.4-3] a BOM (EF BB BF) is kept as U+FEFF.
        str_from(b).map_err(|_| Error::InvalidUtf8 {
            packet: self.packet,
        })
    }

    /// A UTF-8 Encoded String.
    #[inline]
    pub(crate) fn string(&mut self) -> Result<&'a str, Error> {
        let b = self.binary()?;
        // ASCII without U+0000, nearly every string, is recognised in one pass.
        if let Some(s) = str_from_ascii(b, Ascii::NoNul) {
            return Ok(s);
        }
        // [MQTT-1.5.4-1] [MQTT-1.5.3-1] as in `utf8`, then [MQTT-1.5.4-2].
        let s = core::str::from_utf8(b).map_err(|_| Error::InvalidUtf8 {
            packet: self.packet,
        })?;
        check_no_nul(s, self.packet)?;
        Ok(s)
    }

    /// A UTF-8 Encoded String that is checked but not kept (user properties, which stay in
    /// the wire bytes and are read again by their iterator). ASCII without U+0000, the usual
    /// case, is recognised in one vectorised pass instead of `from_utf8` and a NUL scan;
    /// anything else takes the path of [`Reader::string`], so the errors are the same.
    #[inline]
    pub(crate) fn skip_string(&mut self) -> Result<(), Error> {
        let b = self.binary()?;
        // ASCII is well-formed UTF-8; a byte >= 0x80 or a 0 sends it down the full path.
        if !any_high_or_nul(b, true) {
            return Ok(());
        }
        // [MQTT-1.5.4-1] [MQTT-1.5.3-1] as in `utf8`, then [MQTT-1.5.4-2].
        let s = core::str::from_utf8(b).map_err(|_| Error::InvalidUtf8 {
            packet: self.packet,
        })?;
        check_no_nul(s, self.packet)
    }

    /// A Topic Name: a string that mqtt-topic accepts as a name, as its checked type.
    #[inline]
    pub(crate) fn topic_name(&mut self) -> Result<TopicName<'a>, Error> {
        let b = self.binary()?;
        // An ASCII name, nearly every name, is checked for UTF-8 and the name rules in one
        // pass; anything else takes both checks for the precise error.
        match TopicName::from_ascii(b) {
            Some(name) => Ok(name),
            None => self.topic_name_slow(b),
        }
    }

    /// A Topic Name or, as 5.0 allows with a Topic Alias, an empty string (`None`).
    #[inline]
    pub(crate) fn topic_name_or_empty(&mut self) -> Result<Option<TopicName<'a>>, Error> {
        let b = self.binary()?;
        match TopicName::from_ascii(b) {
            Some(name) => Ok(Some(name)),
            None if b.is_empty() => Ok(None),
            None => self.topic_name_slow(b).map(Some),
        }
    }

    #[cold]
    #[inline(never)]
    fn topic_name_slow(&self, b: &'a [u8]) -> Result<TopicName<'a>, Error> {
        let s = str_from(b).map_err(|_| Error::InvalidUtf8 {
            packet: self.packet,
        })?;
        // The topic crate's scan covers U+0000 too.
        TopicName::new(s).map_err(|e| topic_error(e, self.packet, Error::InvalidTopicName))
    }

    /// A Topic Filter.
    #[inline]
    pub(crate) fn topic_filter(&mut self) -> Result<&'a str, Error> {
        let s = self.utf8()?;
        mqtt_topic::validate_filter(s)
            .map_err(|e| topic_error(e, self.packet, Error::InvalidTopicFilter))?;
        Ok(s)
    }
}

/// `b` as a `&str` if it is well-formed UTF-8.
///
/// Topics and most strings MQTT carries are ASCII, and an ASCII scan plus the unchecked
/// conversion in [`str_from_ascii`] (the crate's one `unsafe` block, an audited exception to
/// `forbid(unsafe_code)`) costs a fraction of `from_utf8` on the short, unaligned strings in
/// a packet. Measured with callgrind on the decode of a QoS 1 PUBLISH with a 29-byte topic:
/// 423 instructions with `from_utf8`, 328 with `is_ascii` and the conversion (17.1 ns
/// instead of 22.7 ns a decode); the word-at-a-time scan that replaced `is_ascii` also
/// checks for U+0000 in the same pass where a string needs it.
#[inline]
fn str_from(b: &[u8]) -> Result<&str, core::str::Utf8Error> {
    match str_from_ascii(b, Ascii::Any) {
        Some(s) => Ok(s),
        None => core::str::from_utf8(b),
    }
}

/// Which ASCII strings [`str_from_ascii`] accepts.
#[derive(Clone, Copy)]
pub(crate) enum Ascii {
    /// Any.
    Any,
    /// Without NUL.
    NoNul,
}

/// `b` as a `&str` if every byte is ASCII and `b` is the `kind` of string asked for; `None`
/// sends the caller down the full `from_utf8` path, which gives the precise error.
#[allow(unsafe_code)]
#[inline(always)]
fn str_from_ascii(b: &[u8], kind: Ascii) -> Option<&str> {
    let ascii = match kind {
        Ascii::Any => !any_high_or_nul(b, false),
        Ascii::NoNul => !any_high_or_nul(b, true),
    };
    if !ascii {
        return None;
    }
    // SAFETY: each check has just said that every byte is below 0x80: `any_high_or_nul`
    // tests the high bit of every byte (its tests below compare it with a byte loop). A
    // sequence of such bytes is well-formed UTF-8, the only requirement of
    // `from_utf8_unchecked`. (Topic names take `mqtt_topic::TopicName::from_ascii`, whose
    // own audited conversion rests on the same argument.)
    Some(unsafe { core::str::from_utf8_unchecked(b) })
}

/// `b` as a `&str` if it is ASCII without NUL: a string [`Reader::string`] accepts, found
/// the quick way (`None` says nothing either way).
#[inline(always)]
pub(crate) fn ascii_string(b: &[u8]) -> Option<&str> {
    str_from_ascii(b, Ascii::NoNul)
}

/// Whether a byte of `bytes` is >= 0x80 or, with `nul`, 0.
#[inline(always)]
fn any_high_or_nul(bytes: &[u8], nul: bool) -> bool {
    any_flagged(bytes, true, nul)
}

/// Whether a byte of `bytes` is, with `high`, >= 0x80 or, with `nul`, 0. Blocks of 32 bytes
/// are an OR-reduction LLVM vectorises; what is left goes eight bytes at a time as one word
/// (a few instructions a word instead of several a byte), the last word overlapping the one
/// before it, or gathered by `short_word` when the whole rest is shorter than a word.
#[inline(always)]
fn any_flagged(bytes: &[u8], high: bool, nul: bool) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // High bits, and the classic "has a zero byte" test, `(w - 0x01..) & !w & 0x80..`: its
    // bits can be wrong above a zero byte, but it is non-zero exactly when there is one.
    let word = |w: u64| {
        (if high { w & HI } else { 0 }) | if nul { w.wrapping_sub(LO) & !w & HI } else { 0 }
    };
    let load = |w: &[u8]| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    let n = bytes.len();
    // Most strings in a packet (property names and values, ids) are short: one or two
    // overlapping words, without setting up the block loop.
    if n <= 16 {
        return if n >= 8 {
            word(load(&bytes[..8])) | word(load(&bytes[n - 8..])) != 0
        } else {
            word(short_word(bytes, b'a')) != 0
        };
    }
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        if block.iter().fold(0, |acc, &b| {
            acc | (if high { b & 0x80 } else { 0 }) | u8::from(nul && b == 0)
        }) != 0
        {
            return true;
        }
    }
    let tail = blocks.remainder();
    if tail.len() >= 8 {
        tail.chunks_exact(8).any(|w| word(load(w)) != 0) || word(load(&tail[tail.len() - 8..])) != 0
    } else {
        word(short_word(tail, b'a')) != 0
    }
}

/// The bytes of `t` (shorter than 8) gathered into one word, for tests that ask whether
/// *any* byte has a property, so repeats do not matter: two overlapping 4-byte loads from 4
/// bytes up, bytes 0, n/2 and n-1 below (which cover 1 to 3 bytes), `fill` elsewhere. A few
/// instructions where a byte loop took one shift and mask per byte.
#[inline(always)]
pub(crate) fn short_word(t: &[u8], fill: u8) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    let n = t.len();
    if n >= 4 {
        let lo = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let hi = u32::from_le_bytes([t[n - 4], t[n - 3], t[n - 2], t[n - 1]]);
        u64::from(lo) | u64::from(hi) << 32
    } else if n > 0 {
        let v = u64::from(t[0]) | u64::from(t[n / 2]) << 8 | u64::from(t[n - 1]) << 16;
        v | (LO * u64::from(fill)) & !0xFF_FFFF
    } else {
        LO * u64::from(fill)
    }
}

/// A NUL is a string rule ([MQTT-1.5.4-2], malformed) before it is a topic rule: report it
/// as such so both paths give the same error.
#[inline]
pub(crate) fn topic_error(
    e: mqtt_topic::Error,
    packet: PacketType,
    wrap: fn(mqtt_topic::Error) -> Error,
) -> Error {
    match e {
        mqtt_topic::Error::NullCharacter { .. } => Error::NullCharacter { packet },
        e => wrap(e),
    }
}

#[inline]
pub(crate) fn check_no_nul(s: &str, packet: PacketType) -> Result<(), Error> {
    // [MQTT-1.5.4-2] [MQTT-1.5.3-2]
    if any_flagged(s.as_bytes(), false, true) {
        return Err(Error::NullCharacter { packet });
    }
    Ok(())
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    fn field(s: &[u8]) -> [u8; 80] {
        let mut out = [0xAA; 80];
        out[..2].copy_from_slice(&(s.len() as u16).to_be_bytes());
        out[2..2 + s.len()].copy_from_slice(s);
        out
    }

    /// `skip_string` (the user-property fast path) accepts and refuses exactly what
    /// `string` does, with the same error, for short strings and ones past a 32-byte block.
    #[test]
    fn str_from_agrees_with_from_utf8() {
        let long_ascii = [b'q'; 70];
        let mut long_high = long_ascii;
        long_high[69] = 0xC3;
        let cases: [&[u8]; 9] = [
            b"",
            b"sensors/t1",
            &long_ascii,
            &long_high,
            "caf\u{e9}".as_bytes(),
            &[0xED, 0xA0, 0x80],
            &[0x7F, 0x80],
            &[0xF4, 0x90, 0x80, 0x80],
            "\u{feff}x".as_bytes(),
        ];
        for c in cases {
            assert_eq!(str_from(c).ok(), core::str::from_utf8(c).ok(), "{c:x?}");
        }
    }

    /// The word-at-a-time scan behind the `unsafe` conversion agrees with a byte loop at
    /// every length around the 8-byte words and 32-byte blocks, wherever the byte sits.
    #[test]
    fn any_flagged_agrees_with_a_byte_loop() {
        for len in 0..80 {
            for at in 0..len.max(1) {
                for bad in [0u8, 0x7F, 0x80, 0xC3, 0xFF, 1, b'a'] {
                    let mut b = [b'k'; 80];
                    if len > 0 {
                        b[at] = bad;
                    }
                    let b = &b[..len];
                    for (high, nul) in [(true, false), (true, true), (false, true)] {
                        let want = b.iter().any(|&x| (high && x >= 0x80) || (nul && x == 0));
                        assert_eq!(any_flagged(b, high, nul), want, "{b:x?} {high} {nul}");
                    }
                }
            }
        }
    }

    #[test]
    fn skip_string_agrees_with_string() {
        let long = [b'a'; 40];
        let mut long_nul = long;
        long_nul[35] = 0;
        let cases: [&[u8]; 10] = [
            b"",
            b"trace-id",
            b"a\0b",
            "caf\u{e9}".as_bytes(),
            &[0xC3],
            &[0xED, 0xA0, 0x80],
            &long,
            &long_nul,
            "\u{feff}x".as_bytes(),
            &[b'x', 0xC3, 0xA9, 0],
        ];
        for c in cases {
            let buf = field(c);
            let body = &buf[..2 + c.len()];
            let mut a = Reader::new(body, PacketType::Publish);
            let mut b = Reader::new(body, PacketType::Publish);
            assert_eq!(a.skip_string(), b.string().map(drop), "{c:?}");
            assert_eq!(a.buf.len(), b.buf.len());
        }
        // A length past the end is the same error too.
        let short = [0, 5, b'a'];
        assert_eq!(
            Reader::new(&short, PacketType::Publish).skip_string(),
            Reader::new(&short, PacketType::Publish).string().map(drop)
        );
    }

    #[test]
    fn nul_found_in_every_position() {
        for len in 1..70 {
            for at in 0..len {
                let mut s = [b'z'; 70];
                s[at] = 0;
                let s = core::str::from_utf8(&s[..len]).unwrap();
                assert!(check_no_nul(s, PacketType::Publish).is_err(), "{len} {at}");
            }
            let s = core::str::from_utf8(&[b'z'; 70][..len]).unwrap();
            assert!(check_no_nul(s, PacketType::Publish).is_ok());
        }
    }
}
