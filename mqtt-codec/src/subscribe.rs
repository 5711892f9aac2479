use crate::packet::{require_v5, Plan};
use crate::properties::block_len;
use crate::publish::packet_id;
use crate::reader::{topic_error, Reader};
use crate::writer::{field_len, Sink};
use crate::{
    Error, List, PacketId, PacketType, ProtocolVersion, SubscribeProperties, SubscriptionOptions,
};

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subscription<'a> {
    /// The topic filter (validated by mqtt-topic; may be `$share/{group}/{filter}`).
    pub filter: &'a str,
    /// The options byte.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
///
/// ```
/// use mqtt_codec::{List, PacketId, QoS, Subscribe, Subscription, SubscriptionOptions};
/// let subs = [Subscription { filter: "a/#", options: SubscriptionOptions::qos(QoS::AtLeastOnce) }];
/// let s = Subscribe::new(PacketId::new(1).unwrap(), List::new(&subs));
/// assert_eq!(s.filters.len(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    /// The packet identifier.
    pub packet_id: PacketId,
    /// 5.0 properties.
    pub properties: SubscribeProperties<'a>,
    /// The filters, at least one.
    pub filters: List<'a, Subscription<'a>>,
}

impl<'a> Subscribe<'a> {
    /// A SUBSCRIBE without properties.
    pub fn new(packet_id: PacketId, filters: List<'a, Subscription<'a>>) -> Self {
        Self {
            packet_id,
            properties: SubscribeProperties::default(),
            filters,
        }
    }

    pub(crate) fn decode(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, Error> {
        // [MQTT-2.3.1-1]
        let packet_id = packet_id(r)?;
        let properties = if v.is_v5() {
            SubscribeProperties::decode(r)?
        } else {
            SubscribeProperties::default()
        };
        let payload = r.clone().rest();
        // [MQTT-3.8.3-3] (3.1.1) / [MQTT-3.8.3-2] (5.0) at least one filter.
        if r.is_empty() {
            return Err(Error::EmptyPayload {
                packet: PacketType::Subscribe,
            });
        }
        while !r.is_empty() {
            // [MQTT-3.8.3-1] each filter is a UTF-8 string, and a valid filter.
            let filter = r.topic_filter()?;
            let options = SubscriptionOptions::from_byte(r.u8()?, v)?;
            check_shared(filter, options, v)?;
        }
        Ok(Self {
            packet_id,
            properties,
            filters: List::wire(payload),
        })
    }

    pub(crate) fn plan(&self, v: ProtocolVersion) -> Result<Plan, Error> {
        let t = PacketType::Subscribe;
        require_v5(v, !self.properties.is_empty(), "SUBSCRIBE properties")?;
        let mut plan = Plan::default();
        let mut n = 2;
        if v.is_v5() {
            plan.props = self.properties.body_len(t)?;
            n += block_len(plan.props);
        }
        let mut any = false;
        for s in self.filters.iter() {
            mqtt_topic::validate_filter(s.filter)
                .map_err(|e| topic_error(e, t, Error::InvalidTopicFilter))?;
            s.options.to_byte(v)?;
            check_shared(s.filter, s.options, v)?;
            // `validate_filter` above refused U+0000 ([MQTT-1.5.4-2]), so only the length
            // is left to check.
            n += field_len(s.filter.as_bytes())? + 1;
            any = true;
        }
        if !any {
            return Err(Error::EmptyPayload { packet: t });
        }
        plan.remaining = n;
        Ok(plan)
    }

    pub(crate) fn write<S: Sink>(&self, v: ProtocolVersion, plan: &Plan, s: &mut S) {
        s.u16(self.packet_id.get());
        if v.is_v5() {
            self.properties.write(s, plan.props);
        }
        for sub in self.filters.iter() {
            s.binary(sub.filter.as_bytes());
            // Checked by `plan`.
            s.u8(sub.options.to_byte(v).unwrap_or(0));
        }
    }
}

/// 5.0 shared subscriptions: a `$share/` filter must parse as one ([MQTT-4.8.2-1],
/// [MQTT-4.8.2-2], mqtt-topic's rules), and [MQTT-3.8.3-4] must not ask for No Local.
/// Before 5.0, `$share/...` is an ordinary filter.
fn check_shared(
    filter: &str,
    options: SubscriptionOptions,
    v: ProtocolVersion,
) -> Result<(), Error> {
    if !v.is_v5() {
        return Ok(());
    }
    let shared = mqtt_topic::parse_shared(filter)
        .map_err(|e| topic_error(e, PacketType::Subscribe, Error::InvalidTopicFilter))?;
    if options.no_local && shared.is_some() {
        return Err(Error::NoLocalOnSharedSubscription);
    }
    Ok(())
}
