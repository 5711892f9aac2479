//! Output sinks. Encoders compute the exact length first and check the room, so a sink never
//! runs out in the middle of a packet.

use crate::{varint, Error, PacketType};

/// Where an encoder writes. Implemented for a checked slice cursor and, with the `bytes`
/// feature, for any `BufMut` whose room was checked beforehand.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);

    #[inline]
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    #[inline]
    fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }
    #[inline]
    fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }
    #[inline]
    fn varint(&mut self, v: u32) {
        let mut b = [0; 4];
        let n = varint::write(v, &mut b);
        self.put(&b[..n]);
    }
    /// Binary Data or a string; its length was checked by `field_len`.
    #[inline]
    fn binary(&mut self, b: &[u8]) {
        self.u16(b.len() as u16);
        self.put(b);
    }
}

pub(crate) struct SliceSink<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) pos: usize,
}

impl Sink for SliceSink<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        // The room was checked against `encoded_len`, which the round-trip tests prove exact.
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
    #[inline]
    fn varint(&mut self, v: u32) {
        let n = varint::len(v);
        varint::write_exact(v, &mut self.buf[self.pos..self.pos + n]);
        self.pos += n;
    }
}

#[cfg(feature = "bytes")]
pub(crate) struct BufSink<'a, B: bytes::BufMut>(pub(crate) &'a mut B);

#[cfg(feature = "bytes")]
impl<B: bytes::BufMut> Sink for BufSink<'_, B> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0.put_slice(bytes);
    }
}

/// The encoded length of a string or Binary Data field, refusing one over 65,535 bytes.
#[inline]
pub(crate) fn field_len(b: &[u8]) -> Result<usize, Error> {
    if b.len() > usize::from(u16::MAX) {
        return Err(Error::FieldTooLong { len: b.len() });
    }
    Ok(2 + b.len())
}

/// The encoded length of a UTF-8 string, refusing U+0000.
#[inline]
pub(crate) fn string_len(s: &str, packet: PacketType) -> Result<usize, Error> {
    crate::reader::check_no_nul(s, packet)?;
    field_len(s.as_bytes())
}
