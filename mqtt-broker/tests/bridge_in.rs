//! Incoming bridges: a broker (mosquitto) connecting to this one as a client with the top
//! bit of its 3.1 / 3.1.1 protocol level set (mosquitto's `try_private`, not in the
//! standard). Its subscriptions get No Local and Retain As Published, as mosquitto grants
//! them: without No Local, `topic # both` sends what it published back to it (a loop
//! between the two brokers); without Retain As Published, retained messages reach its side
//! unretained ([MQTT-3.3.1-12] would clear RETAIN for an established subscription).

mod support;

use mqtt_codec::QoS;
use mqtt_state::*;
use support::*;

fn bridge(v: mqtt_codec::ProtocolVersion, id: &'static str) -> ClientConfig {
    ClientConfig {
        bridge: true,
        ..persistent(v, id)
    }
}

#[test]
fn a_bridge_gets_no_local_and_retain_as_published() {
    for v in [V31, V4] {
        let mut net = Net::new();
        let b = net.join(bridge(v, "bridge"));
        let s = net.join(ClientConfig::new(v, "s"));
        let p = net.join(ClientConfig::new(v, "p"));
        net.subscribe(b, "#", q(QoS::AtLeastOnce));
        net.subscribe(s, "#", q(QoS::AtLeastOnce));
        assert_eq!(net.ack_codes(b).len(), 1, "{v:?}");
        // What the bridge publishes reaches the others, never the bridge itself.
        net.publish(b, "from/bridge", "b1", QoS::AtLeastOnce, false);
        net.publish(b, "from/bridge/r", "b2", QoS::ExactlyOnce, true);
        assert!(net.take(b).is_empty(), "{v:?}: echoed to the bridge");
        assert_eq!(
            net.take(s),
            [
                got("from/bridge", "b1", QoS::AtLeastOnce, false),
                // [MQTT-3.3.1-12] an ordinary 3.1.1 subscriber: RETAIN cleared.
                got("from/bridge/r", "b2", QoS::AtLeastOnce, false)
            ],
            "{v:?}"
        );
        // What others publish reaches the bridge with its retain flag as published.
        net.publish(p, "to/bridge", "p1", QoS::AtMostOnce, true);
        net.publish(p, "to/bridge", "p2", QoS::AtLeastOnce, false);
        assert_eq!(
            net.take(b),
            [
                got("to/bridge", "p1", QoS::AtMostOnce, true),
                got("to/bridge", "p2", QoS::AtLeastOnce, false)
            ],
            "{v:?}"
        );
        assert_eq!(
            net.take(s),
            [
                got("to/bridge", "p1", QoS::AtMostOnce, false),
                got("to/bridge", "p2", QoS::AtLeastOnce, false)
            ],
            "{v:?}"
        );
    }
}

#[test]
fn an_ordinary_client_and_a_5_0_bridge_keep_the_standard_behaviour() {
    // The same client without the bit gets its own messages back, unretained: what the
    // test above checks is the bit's doing. At 5.0 `bridge` is ignored (mosquitto's 5.0
    // bridges ask for No Local and Retain As Published themselves).
    for config in [persistent(V4, "plain"), bridge(V5, "bridge5")] {
        let mut net = Net::new();
        let c = net.join(config);
        let p = net.join(ClientConfig::new(V4, "p"));
        net.subscribe(c, "#", q(QoS::AtLeastOnce));
        net.publish(c, "own", "echo", QoS::AtLeastOnce, false);
        net.publish(p, "other", "kept?", QoS::AtLeastOnce, true);
        assert_eq!(
            net.take(c),
            [
                got("own", "echo", QoS::AtLeastOnce, false),
                got("other", "kept?", QoS::AtLeastOnce, false)
            ]
        );
    }
}

#[test]
fn a_bridge_s_subscription_options_survive_a_restart() {
    // mosquitto resubscribes on every reconnection anyway, but a durable broker restores
    // the subscriptions as they were granted: the options are the subscription's, stored
    // with it, not re-derived from whoever resumes the session.
    let mut net = Net::durable();
    let b = net.join(bridge(V4, "bridge"));
    net.subscribe(b, "t/#", q(QoS::AtLeastOnce));
    net.crash_and_restore(100);
    // The session resumed by a connection without the bit.
    let b2 = net.join(persistent(V4, "bridge"));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.publish(b2, "t/own", "not back", QoS::AtLeastOnce, false);
    net.publish(p, "t/other", "retained", QoS::AtLeastOnce, true);
    assert_eq!(
        net.take(b2),
        [got("t/other", "retained", QoS::AtLeastOnce, true)]
    );
    let _ = net.take(b);
}
