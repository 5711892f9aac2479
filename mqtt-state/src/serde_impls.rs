//! serde for the codec's types, kept here so that the codec needs no serde: `with` modules
//! for the fields that hold them, validating on the way in (a snapshot read back is input).

use core::fmt;

use mqtt_codec::{PacketId, QoS, SubscriptionId};
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Utf8Bytes;

impl Serialize for Utf8Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Utf8Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `String` is checked UTF-8 by its own Deserialize.
        alloc::string::String::deserialize(d).map(Utf8Bytes::from)
    }
}

/// A message's `TopicBuf` as a string, checked on the way in ([MQTT-3.3.2-2]
/// [MQTT-4.7.3-1..3]): a snapshot read back is input.
pub(crate) mod topic {
    use super::*;
    use mqtt_topic::TopicBuf;

    pub(crate) fn serialize<S: Serializer>(t: &TopicBuf, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TopicBuf, D::Error> {
        let s = alloc::string::String::deserialize(d)?;
        TopicBuf::try_from(s).map_err(D::Error::custom)
    }
}

/// A message's boxed properties as the properties themselves (empty when absent), so that
/// snapshots read and write as they did when they were inline.
pub(crate) mod properties {
    use super::*;
    use crate::MessageProperties;
    use alloc::boxed::Box;

    pub(crate) fn serialize<S: Serializer>(
        p: &Option<Box<MessageProperties>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        static NONE: MessageProperties = MessageProperties::new();
        p.as_deref().unwrap_or(&NONE).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Box<MessageProperties>>, D::Error> {
        let p = MessageProperties::deserialize(d)?;
        Ok((!p.is_empty()).then(|| Box::new(p)))
    }
}

/// `QoS` as its number, 0 to 2.
pub(crate) mod qos {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(q: &QoS, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*q as u8)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<QoS, D::Error> {
        let n = u8::deserialize(d)?;
        QoS::try_from(n).map_err(|_| D::Error::custom("QoS is 0, 1 or 2"))
    }
}

/// `PacketId` as its number, never 0.
pub(crate) mod packet_id {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(id: &PacketId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(id.get())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PacketId, D::Error> {
        PacketId::new(u16::deserialize(d)?).ok_or_else(|| D::Error::custom("packet id 0"))
    }
}

/// `Option<PacketId>` as an optional number.
pub(crate) mod opt_packet_id {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(id: &Option<PacketId>, s: S) -> Result<S::Ok, S::Error> {
        id.map(PacketId::get).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PacketId>, D::Error> {
        match Option::<u16>::deserialize(d)? {
            None => Ok(None),
            Some(n) => PacketId::new(n)
                .map(Some)
                .ok_or_else(|| D::Error::custom("packet id 0")),
        }
    }
}

/// Subscription identifiers as a sequence of numbers (the form snapshots had when the
/// list held at most four, so those read back), each checked on the way in.
impl Serialize for crate::SubscriptionIdList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(|id| id.get()))
    }
}

impl<'de> Deserialize<'de> for crate::SubscriptionIdList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = crate::SubscriptionIdList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of subscription identifiers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // Grown as read, never sized from the input's claim.
                let mut ids = crate::SubscriptionIdList::new();
                while let Some(n) = seq.next_element::<u32>()? {
                    let id = SubscriptionId::new(n)
                        .ok_or_else(|| A::Error::custom("subscription id out of range"))?;
                    ids.push(id);
                }
                Ok(ids)
            }
        }
        d.deserialize_seq(V)
    }
}

/// A user property block, checked well formed when read back.
pub(crate) mod user_block {
    use super::*;
    use bytes::Bytes;

    pub(crate) fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        b.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let b = Bytes::deserialize(d)?;
        mqtt_codec::UserProperties::from_block(&b)
            .map_err(|_| D::Error::custom("malformed user property block"))?;
        Ok(b)
    }
}
