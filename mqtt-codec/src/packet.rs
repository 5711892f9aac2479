use crate::reader::Reader;
use crate::writer::{Sink, SliceSink};
use crate::{
    varint, Auth, ConnAck, Connect, Disconnect, Error, PacketId, PacketType, ProtocolVersion,
    PubAck, Publish, Sender, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

/// Any control packet, borrowing from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// CONNECT.
    Connect(Connect<'a>),
    /// CONNACK.
    ConnAck(ConnAck<'a>),
    /// PUBLISH.
    Publish(Publish<'a>),
    /// PUBACK.
    PubAck(PubAck<'a>),
    /// PUBREC.
    PubRec(PubAck<'a>),
    /// PUBREL.
    PubRel(PubAck<'a>),
    /// PUBCOMP.
    PubComp(PubAck<'a>),
    /// SUBSCRIBE.
    Subscribe(Subscribe<'a>),
    /// SUBACK.
    SubAck(SubAck<'a>),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe<'a>),
    /// UNSUBACK.
    UnsubAck(UnsubAck<'a>),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect<'a>),
    /// AUTH (5.0 only).
    Auth(Auth<'a>),
}

/// How to decode: the negotiated level, the largest packet accepted, and who sent the bytes.
///
/// ```
/// use mqtt_codec::{DecodeOptions, ProtocolVersion, Sender};
/// let opts = DecodeOptions::new(ProtocolVersion::V5)
///     .max_packet_size(64 * 1024)
///     .sender(Sender::Client);
/// assert_eq!(opts.max_packet_size, 65536);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// The level every packet but CONNECT is decoded under.
    pub version: ProtocolVersion,
    /// The largest whole packet (fixed header included) accepted; larger ones are refused
    /// from their fixed header, before their body arrives.
    pub max_packet_size: u32,
    /// Which side sent the bytes, for the rules that bind one direction.
    pub sender: Sender,
}

impl DecodeOptions {
    /// The largest packet the protocol can express: 1 + 4 + 268,435,455 bytes.
    pub const PROTOCOL_MAX_PACKET_SIZE: u32 = 1 + 4 + varint::MAX;

    /// Options for `version`, with no size limit beyond the protocol's and no direction.
    pub const fn new(version: ProtocolVersion) -> Self {
        Self {
            version,
            max_packet_size: Self::PROTOCOL_MAX_PACKET_SIZE,
            sender: Sender::Either,
        }
    }

    /// Sets the largest accepted packet size in bytes.
    pub const fn max_packet_size(mut self, max: u32) -> Self {
        self.max_packet_size = max;
        self
    }

    /// Sets who sent the bytes.
    pub const fn sender(mut self, sender: Sender) -> Self {
        self.sender = sender;
        self
    }
}

/// The result of a decode attempt that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// A whole packet, and how many bytes of the input it used.
    Complete {
        /// The packet.
        packet: T,
        /// Bytes consumed from the front of the input.
        consumed: usize,
    },
    /// The input holds only part of a packet. `needed` is exact once the fixed header is
    /// complete; before that it is 1. Never returned for a frame that is complete but whose
    /// contents are short: that is malformed.
    Incomplete {
        /// At least this many more bytes are needed.
        needed: usize,
    },
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// The packet type.
    pub packet_type: PacketType,
    /// The low nibble of the first byte (validated).
    pub flags: u8,
    /// The Remaining Length.
    pub remaining_length: u32,
    /// The size of the fixed header itself (2 to 5 bytes).
    pub header_len: usize,
}

impl FixedHeader {
    /// The size of the whole packet.
    pub const fn packet_len(&self) -> usize {
        self.header_len + self.remaining_length as usize
    }
}

/// Reads and checks a fixed header: the type and its flags from the first byte, the size
/// against `opts.max_packet_size` as soon as the remaining length is known.
///
/// ```
/// use mqtt_codec::{decode_fixed_header, DecodeOptions, ProtocolVersion, Status};
/// let opts = DecodeOptions::new(ProtocolVersion::V3_1_1);
/// // A PUBLISH announcing 200 bytes, of which none has arrived.
/// match decode_fixed_header(&[0x30, 0xC8, 0x01], &opts).unwrap() {
///     Status::Complete { packet, .. } => assert_eq!(packet.packet_len(), 203),
///     Status::Incomplete { .. } => unreachable!(),
/// }
/// ```
#[inline]
pub fn decode_fixed_header(buf: &[u8], opts: &DecodeOptions) -> Result<Status<FixedHeader>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(Status::Incomplete { needed: 1 });
    };
    let (packet_type, flags) = check_first_byte(first, opts.version)?;
    let (remaining_length, n) = match varint::read(&buf[1..]) {
        varint::Read::Done(v, n) => (v, n),
        varint::Read::Short => return Ok(Status::Incomplete { needed: 1 }),
        varint::Read::TooLong => return Err(Error::VarIntTooLong),
        varint::Read::NotMinimal => return Err(Error::VarIntNotMinimal),
    };
    let header = FixedHeader {
        packet_type,
        flags,
        remaining_length,
        header_len: 1 + n,
    };
    let size = header.packet_len();
    if size > opts.max_packet_size as usize {
        return Err(Error::PacketTooLarge {
            size,
            max: opts.max_packet_size,
        });
    }
    Ok(Status::Complete {
        packet: header,
        consumed: header.header_len,
    })
}

#[inline]
fn check_first_byte(first: u8, version: ProtocolVersion) -> Result<(PacketType, u8), Error> {
    let nibble = first >> 4;
    let flags = first & 0x0F;
    let packet_type = match PacketType::from_nibble(nibble) {
        Some(PacketType::Auth) if !version.is_v5() => None,
        t => t,
    }
    .ok_or(Error::InvalidPacketType { nibble, version })?;
    match packet_type.required_flags() {
        // [MQTT-2.2.2-1] [MQTT-2.2.2-2] [MQTT-2.1.3-1]
        Some(required) if flags != required => Err(Error::InvalidFlags {
            packet: packet_type,
            flags,
        }),
        Some(_) => Ok((packet_type, flags)),
        None => {
            // [MQTT-3.3.1-4] QoS 3 is malformed.
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(Error::InvalidQoS { qos });
            }
            // [MQTT-3.3.1-2] no DUP on QoS 0.
            if qos == 0 && flags & 0x08 != 0 {
                return Err(Error::DupWithQoS0);
            }
            Ok((packet_type, flags))
        }
    }
}

/// Decodes one packet from the front of `buf`.
///
/// Returns the packet and the bytes it used, or [`Status::Incomplete`] when more bytes must
/// arrive first. The packet borrows from `buf`; nothing is allocated or copied. Every rule
/// the codec owns is checked before the packet is returned.
///
/// ```
/// use mqtt_codec::{decode, DecodeOptions, Packet, ProtocolVersion, Status};
/// let bytes = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
/// let opts = DecodeOptions::new(ProtocolVersion::V3_1_1);
/// let Status::Complete { packet: Packet::Publish(p), consumed } = decode(&bytes, &opts)? else {
///     panic!("a whole PUBLISH")
/// };
/// assert_eq!((p.topic.as_str(), p.payload, consumed), ("a/b", &b"hi"[..], 9));
/// # Ok::<(), mqtt_codec::Error>(())
/// ```
#[inline]
pub fn decode<'a>(buf: &'a [u8], opts: &DecodeOptions) -> Result<Status<Packet<'a>>, Error> {
    // A fifth of a busy stream is PUBACK/PUBREC/PUBREL/PUBCOMP with an identifier alone
    // (every one before 5.0, and 5.0's Success form): matched whole here, which checks the
    // same as the general path (exact first byte, so type and flags; remaining length 2;
    // a non-zero identifier; the size limit), at a fraction of its cost.
    if let [first @ (0x40 | 0x50 | 0x62 | 0x70), 2, hi, lo, ..] = *buf {
        if let Some(packet_id) = PacketId::new(u16::from_be_bytes([hi, lo])) {
            if opts.max_packet_size >= 4 {
                let ack = PubAck::new(packet_id);
                let packet = match first {
                    0x40 => Packet::PubAck(ack),
                    0x50 => Packet::PubRec(ack),
                    0x62 => Packet::PubRel(ack),
                    _ => Packet::PubComp(ack),
                };
                return Ok(Status::Complete {
                    packet,
                    consumed: 4,
                });
            }
        }
    }
    let header = match decode_fixed_header(buf, opts)? {
        Status::Complete { packet, .. } => packet,
        Status::Incomplete { needed } => return Ok(Status::Incomplete { needed }),
    };
    let size = header.packet_len();
    let Some(frame) = buf.get(header.header_len..size) else {
        return Ok(Status::Incomplete {
            needed: size - buf.len(),
        });
    };
    decode_frame(&header, frame, opts, size)
}

/// The body decoders by packet type; `$done` wraps each packet where it is built. Binding
/// the packet first and wrapping it afterwards made the compiler copy the whole 272-byte
/// packet, scalar by scalar, so [`decode`] and [`decode_body`] each give their own wrapper.
macro_rules! decode_packet {
    ($header:expr, $body:expr, $opts:expr, $done:ident) => {{
        let header: &FixedHeader = $header;
        let opts: &DecodeOptions = $opts;
        let t = header.packet_type;
        let mut r = Reader::new($body, t);
        let v = opts.version;
        match t {
            PacketType::Publish => $done!(Packet::Publish(Publish::decode(
                header.flags,
                &mut r,
                opts
            )?)),
            PacketType::PubAck => $done!(Packet::PubAck(PubAck::decode(&mut r, v)?)),
            PacketType::PubRec => $done!(Packet::PubRec(PubAck::decode(&mut r, v)?)),
            PacketType::PubRel => $done!(Packet::PubRel(PubAck::decode(&mut r, v)?)),
            PacketType::PubComp => $done!(Packet::PubComp(PubAck::decode(&mut r, v)?)),
            PacketType::Connect => $done!(Packet::Connect(Connect::decode(&mut r)?)),
            PacketType::ConnAck => $done!(Packet::ConnAck(ConnAck::decode(&mut r, v)?)),
            PacketType::Subscribe => $done!(Packet::Subscribe(Subscribe::decode(&mut r, v)?)),
            PacketType::SubAck => $done!(Packet::SubAck(SubAck::decode(&mut r, v)?)),
            PacketType::Unsubscribe => {
                $done!(Packet::Unsubscribe(Unsubscribe::decode(&mut r, v)?))
            }
            PacketType::UnsubAck => $done!(Packet::UnsubAck(UnsubAck::decode(&mut r, v)?)),
            PacketType::PingReq => $done!(r.finish().map(|()| Packet::PingReq)?),
            PacketType::PingResp => $done!(r.finish().map(|()| Packet::PingResp)?),
            PacketType::Disconnect => {
                $done!(Packet::Disconnect(Disconnect::decode(&mut r, opts)?))
            }
            PacketType::Auth => $done!(Packet::Auth(Auth::decode(&mut r)?)),
        }
    }};
}

/// Decodes a packet's body (everything after the fixed header), already framed.
#[inline]
pub fn decode_body<'a>(
    header: &FixedHeader,
    body: &'a [u8],
    opts: &DecodeOptions,
) -> Result<Packet<'a>, Error> {
    macro_rules! done {
        ($packet:expr) => {
            Ok($packet)
        };
    }
    decode_packet!(header, body, opts, done)
}

/// [`decode_body`] with the result `decode` returns, built in place.
#[inline]
fn decode_frame<'a>(
    header: &FixedHeader,
    body: &'a [u8],
    opts: &DecodeOptions,
    consumed: usize,
) -> Result<Status<Packet<'a>>, Error> {
    macro_rules! done {
        ($packet:expr) => {
            Ok(Status::Complete {
                packet: $packet,
                consumed,
            })
        };
    }
    decode_packet!(header, body, opts, done)
}

/// Lengths worked out (and contents validated) before anything is written.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Plan {
    pub(crate) remaining: usize,
    /// Property block bodies: the packet's, and the will's in CONNECT.
    pub(crate) props: usize,
    pub(crate) will_props: usize,
}

impl Plan {
    /// Refuses a body longer than a Remaining Length can express.
    #[inline]
    pub(crate) fn checked(self) -> Result<Self, Error> {
        if self.remaining > varint::MAX as usize {
            return Err(Error::PacketTooLarge {
                size: self.remaining,
                max: varint::MAX,
            });
        }
        Ok(self)
    }

    /// The whole packet: first byte, Remaining Length and body.
    #[inline]
    pub(crate) fn total(&self) -> usize {
        1 + varint::len(self.remaining as u32) + self.remaining
    }
}

/// Refuses a 5.0-only field before 5.0.
#[inline]
pub(crate) fn require_v5(
    version: ProtocolVersion,
    present: bool,
    field: &'static str,
) -> Result<(), Error> {
    if present && !version.is_v5() {
        return Err(Error::NotInVersion { field, version });
    }
    Ok(())
}

impl Packet<'_> {
    /// The packet's type.
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    fn first_byte(&self) -> u8 {
        let t = self.packet_type();
        let flags = match self {
            Packet::Publish(p) => p.flags(),
            _ => t.required_flags().unwrap_or(0),
        };
        (t as u8) << 4 | flags
    }

    fn plan(&self, version: ProtocolVersion) -> Result<Plan, Error> {
        let t = self.packet_type();
        if t == PacketType::Auth {
            require_v5(version, true, "AUTH")?;
        }
        let plan = match self {
            Packet::Connect(p) => p.plan()?,
            Packet::ConnAck(p) => p.plan(version)?,
            Packet::Publish(p) => p.plan(version)?,
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.plan(t, version)?
            }
            Packet::Subscribe(p) => p.plan(version)?,
            Packet::SubAck(p) => p.plan(version)?,
            Packet::Unsubscribe(p) => p.plan(version)?,
            Packet::UnsubAck(p) => p.plan(version)?,
            Packet::PingReq | Packet::PingResp => Plan::default(),
            Packet::Disconnect(p) => p.plan(version)?,
            Packet::Auth(p) => p.plan()?,
        };
        plan.checked()
    }

    fn write<S: Sink>(&self, version: ProtocolVersion, plan: &Plan, s: &mut S) {
        s.u8(self.first_byte());
        s.varint(plan.remaining as u32);
        match self {
            Packet::Connect(p) => p.write(plan, s),
            Packet::ConnAck(p) => p.write(version, plan, s),
            Packet::Publish(p) => p.write(version, plan, s),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.write(version, plan, s)
            }
            Packet::Subscribe(p) => p.write(version, plan, s),
            Packet::SubAck(p) => p.write(version, plan, s),
            Packet::Unsubscribe(p) => p.write(version, plan, s),
            Packet::UnsubAck(p) => p.write(version, plan, s),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(p) => p.write(version, plan, s),
            Packet::Auth(p) => p.write(plan, s),
        }
    }

    /// The exact number of bytes [`Packet::encode`] writes, after checking that the packet
    /// can be encoded at `version` (CONNECT uses its own level).
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, Error> {
        let plan = self.plan(version)?;
        Ok(plan.total())
    }

    /// Encodes into `out`, returning the bytes written. Refuses what the protocol forbids
    /// (a 5.0 field at 3.1.1, a string with U+0000, a wildcard in a topic name, an oversize
    /// field or packet) and a short buffer, writing nothing in either case.
    ///
    /// ```
    /// use mqtt_codec::{Packet, ProtocolVersion, Publish, QosPid, Topic};
    /// let p = Packet::Publish(Publish::new(Topic::new("a/b")?, b"hi", QosPid::AtMostOnce));
    /// let mut out = [0u8; 16];
    /// let n = p.encode(ProtocolVersion::V3_1_1, &mut out)?;
    /// assert_eq!(&out[..n], &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i']);
    /// # Ok::<(), mqtt_codec::Error>(())
    /// ```
    pub fn encode(&self, version: ProtocolVersion, out: &mut [u8]) -> Result<usize, Error> {
        // PUBLISH is most of what a broker writes: it skips the generic dispatch.
        match self {
            Packet::Publish(p) => return p.encode(version, out),
            // The other half of a QoS flow: an identifier alone, in every version.
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)
                if a.reason_code == crate::ReasonCode::Success && a.properties.is_empty() =>
            {
                let Some(out) = out.get_mut(..4) else {
                    return Err(Error::BufferTooSmall { required: 4 });
                };
                let [hi, lo] = a.packet_id.get().to_be_bytes();
                out.copy_from_slice(&[self.first_byte(), 2, hi, lo]);
                return Ok(4);
            }
            _ => {}
        }
        self.encode_planned(version, out)
    }

    /// The general path of [`Packet::encode`], out of line so that the PUBLISH and ack
    /// paths above do not pay for its registers.
    #[inline(never)]
    fn encode_planned(&self, version: ProtocolVersion, out: &mut [u8]) -> Result<usize, Error> {
        let plan = self.plan(version)?;
        let total = plan.total();
        if out.len() < total {
            return Err(Error::BufferTooSmall { required: total });
        }
        let mut s = SliceSink { buf: out, pos: 0 };
        self.write(version, &plan, &mut s);
        debug_assert_eq!(s.pos, total);
        Ok(total)
    }

    /// Encodes into a `BufMut`, after checking its room, returning the bytes written.
    #[cfg(feature = "bytes")]
    pub fn encode_to<B: bytes::BufMut>(
        &self,
        version: ProtocolVersion,
        buf: &mut B,
    ) -> Result<usize, Error> {
        let plan = self.plan(version)?;
        let total = plan.total();
        if buf.remaining_mut() < total {
            return Err(Error::BufferTooSmall { required: total });
        }
        self.write(version, &plan, &mut crate::writer::BufSink(buf));
        Ok(total)
    }

    /// Encodes into a new vector.
    #[cfg(feature = "alloc")]
    pub fn encode_to_vec(&self, version: ProtocolVersion) -> Result<alloc::vec::Vec<u8>, Error> {
        let plan = self.plan(version)?;
        let total = plan.total();
        let mut v = alloc::vec![0; total];
        let mut s = SliceSink {
            buf: &mut v,
            pos: 0,
        };
        self.write(version, &plan, &mut s);
        Ok(v)
    }
}

macro_rules! into_packet {
    ($($ty:ident),*) => {$(
        impl<'a> From<$ty<'a>> for Packet<'a> {
            fn from(p: $ty<'a>) -> Self {
                Packet::$ty(p)
            }
        }
    )*};
}
into_packet!(
    Connect,
    ConnAck,
    Publish,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth
);

/// `Sender` checks shared by the packets that have one-directional rules.
pub(crate) fn from_client(opts: &DecodeOptions) -> bool {
    opts.sender == Sender::Client
}
