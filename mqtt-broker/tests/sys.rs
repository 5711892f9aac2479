//! `$SYS` statistics.
#![allow(unused_imports)]

mod support;

use bytes::BytesMut;
use mqtt_broker::Error;
use mqtt_broker::*;
use mqtt_codec::{
    Packet, PacketId, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionId,
    SubscriptionOptions, Topic,
};
use mqtt_state::*;
use support::*;

#[test]
fn sys_statistics_are_published() {
    let mut net = Net::with(Broker::new(
        BrokerConfig {
            sys_interval: Some(Duration::from_secs(10)),
            ..BrokerConfig::default()
        },
        Instant::ZERO,
    ));
    let s = net.join(ClientConfig::new(V4, "s"));
    net.subscribe(s, "$SYS/broker/clients/connected", q(QoS::AtMostOnce));
    net.advance(10_000);
    assert_eq!(
        net.take(s),
        [got(
            "$SYS/broker/clients/connected",
            "1",
            QoS::AtMostOnce,
            false
        )]
    );
}
