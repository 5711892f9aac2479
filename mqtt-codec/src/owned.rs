use bytes::Bytes;

use crate::{decode, DecodeOptions, Error, Packet, Status};

/// A decoded packet that owns its frame, for queues and retransmission buffers.
///
/// It holds the frame as `bytes::Bytes` (a reference-counted view into the receive
/// buffer, `slice_ref`-style: nothing is copied) plus the options it was decoded under.
/// [`OwnedPacket::packet`] borrows a [`Packet`] from it again.
///
/// ```
/// use bytes::Bytes;
/// use mqtt_codec::{DecodeOptions, OwnedPacket, Packet, ProtocolVersion};
/// let mut input = Bytes::from_static(&[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i', 0xC0, 0x00]);
/// let opts = DecodeOptions::new(ProtocolVersion::V3_1_1);
/// let first = OwnedPacket::decode(&mut input, &opts)?.expect("whole");
/// assert_eq!(input.len(), 2); // the PINGREQ is left
/// let Packet::Publish(p) = first.packet() else { panic!() };
/// assert_eq!(p.payload, b"hi");
/// assert_eq!(&first.publish_payload().unwrap()[..], b"hi");
/// # Ok::<(), mqtt_codec::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPacket {
    frame: Bytes,
    opts: DecodeOptions,
}

impl OwnedPacket {
    /// Decodes the packet at the front of `buf` and splits its frame off `buf`. Returns
    /// `Ok(None)` when `buf` holds only part of a packet.
    pub fn decode(buf: &mut Bytes, opts: &DecodeOptions) -> Result<Option<Self>, Error> {
        match decode(buf, opts)? {
            Status::Complete { consumed, .. } => Ok(Some(Self {
                frame: buf.split_to(consumed),
                opts: *opts,
            })),
            Status::Incomplete { .. } => Ok(None),
        }
    }

    /// The whole frame, fixed header included: what to write to resend it verbatim.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The packet, borrowed from the frame. This decodes the frame again (a borrowed view
    /// cannot be stored beside the bytes it borrows without `unsafe`); it allocates nothing
    /// and costs what the first decode did.
    pub fn packet(&self) -> Packet<'_> {
        match decode(&self.frame, &self.opts) {
            Ok(Status::Complete { packet, .. }) => packet,
            // Only a frame that decoded under these options is ever stored, and decoding is
            // a pure function of the bytes and the options.
            other => unreachable!("a stored frame no longer decodes: {other:?}"),
        }
    }

    /// A PUBLISH's payload as `Bytes` sharing the frame's storage.
    pub fn publish_payload(&self) -> Option<Bytes> {
        match self.packet() {
            Packet::Publish(p) => Some(self.frame.slice_ref(p.payload)),
            _ => None,
        }
    }

    /// A PUBLISH's topic name as `Bytes` sharing the frame's storage.
    pub fn publish_topic(&self) -> Option<Bytes> {
        match self.packet() {
            Packet::Publish(p) => Some(self.frame.slice_ref(p.topic.as_bytes())),
            _ => None,
        }
    }
}
