//! A cluster of broker cores in memory, joined by a bus that behaves as NATS does:
//! subscriptions by filter, a copy per matching subscription, queue groups that hand each
//! message to one member, publishers not hearing their own plain messages. Messages cross
//! nodes at every QoS and are downgraded, shared subscriptions deliver once cluster-wide,
//! retained messages and wills reach every node, a client that moves takes its session.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use mqtt_broker::*;
use mqtt_codec::{QoS, ReasonCode};
use mqtt_state::*;
use mqtt_topic::{TopicFilter, TopicName};
use support::*;

struct Cluster {
    nodes: Vec<Net<AllowAll>>,
    /// Each node's bus subscriptions.
    subs: Vec<BTreeSet<ClusterFilter>>,
    /// Round-robin position per queue (share, filter).
    cursor: BTreeMap<(String, String), usize>,
    /// Every operation each node handed out, for the tests that look at them.
    ops: Vec<Vec<ClusterOp>>,
    /// Whether the bus reports subscriptions in place at once; else they wait in
    /// `unconfirmed` until `confirm`.
    confirm_at_once: bool,
    unconfirmed: Vec<usize>,
}

fn matches(filter: &str, topic: &str) -> bool {
    let (Ok(f), Ok(t)) = (TopicFilter::new(filter), TopicName::new(topic)) else {
        return false;
    };
    f.matches(t)
}

impl Cluster {
    fn new(n: usize) -> Self {
        let nodes = (0..n)
            .map(|i| {
                Net::with(Broker::new(
                    BrokerConfig {
                        sys_interval: None,
                        cluster: Some(ClusterConfig {
                            node: format!("n{i}"),
                        }),
                        ..BrokerConfig::default()
                    },
                    Instant::ZERO,
                ))
            })
            .collect();
        Cluster {
            nodes,
            subs: vec![BTreeSet::new(); n],
            cursor: BTreeMap::new(),
            ops: vec![Vec::new(); n],
            confirm_at_once: true,
            unconfirmed: vec![0; n],
        }
    }

    /// Reports node `i`'s subscriptions in place on the bus.
    fn confirm(&mut self, i: usize) {
        let now = self.nodes[i].now;
        for _ in 0..std::mem::take(&mut self.unconfirmed[i]) {
            self.nodes[i].broker.cluster_subscribed(now);
        }
        self.drive();
    }

    fn drive(&mut self) {
        for _ in 0..1000 {
            let mut progress = false;
            for i in 0..self.nodes.len() {
                self.nodes[i].drive();
                while let Some(op) = self.nodes[i].broker.poll_cluster() {
                    progress = true;
                    self.ops[i].push(op.clone());
                    self.carry(i, op);
                }
            }
            if !progress {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// What NATS would do with node `from`'s operation.
    fn carry(&mut self, from: usize, op: ClusterOp) {
        match op {
            ClusterOp::Subscribe(f) => {
                self.subs[from].insert(f);
                if self.confirm_at_once {
                    let now = self.nodes[from].now;
                    self.nodes[from].broker.cluster_subscribed(now);
                } else {
                    self.unconfirmed[from] += 1;
                }
            }
            ClusterOp::Unsubscribe(f) => {
                self.subs[from].remove(&f);
            }
            ClusterOp::Publish {
                topic,
                retain,
                frame,
            } => {
                let now = self.nodes[from].now;
                // Plain subscriptions: a copy per matching one, never to the publisher.
                for n in 0..self.nodes.len() {
                    if n == from {
                        continue;
                    }
                    let vias: Vec<String> = self.subs[n]
                        .iter()
                        .filter(|f| f.share.is_none() && matches(&f.filter, &topic))
                        .map(|f| f.filter.clone())
                        .collect();
                    for via in vias {
                        self.nodes[n]
                            .broker
                            .cluster_publish(now, &frame, ClusterTarget::Plain { via: &via })
                            .unwrap();
                    }
                }
                // Queue groups: one member node each, the publisher included.
                let queues: BTreeSet<(String, String)> = self
                    .subs
                    .iter()
                    .flatten()
                    .filter_map(|f| f.share.clone().map(|s| (s, f.filter.clone())))
                    .filter(|(_, f)| matches(f, &topic))
                    .collect();
                for (share, filter) in queues {
                    let key = ClusterFilter {
                        filter: filter.clone(),
                        share: Some(share.clone()),
                    };
                    let members: Vec<usize> = (0..self.nodes.len())
                        .filter(|&n| self.subs[n].contains(&key))
                        .collect();
                    let c = self
                        .cursor
                        .entry((share.clone(), filter.clone()))
                        .or_insert(0);
                    let n = members[*c % members.len()];
                    *c += 1;
                    let target = ClusterTarget::Shared {
                        share: &share,
                        filter: &filter,
                    };
                    self.nodes[n]
                        .broker
                        .cluster_publish(now, &frame, target)
                        .unwrap();
                }
                // Retained: kept where every node reads it.
                if retain {
                    for n in 0..self.nodes.len() {
                        if n != from {
                            self.nodes[n].broker.cluster_retained(now, &frame).unwrap();
                        }
                    }
                }
            }
            ClusterOp::Claim { client_id } => {
                for n in 0..self.nodes.len() {
                    if n != from {
                        let now = self.nodes[n].now;
                        self.nodes[n].broker.session_taken(now, &client_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn join(&mut self, node: usize, config: ClientConfig) -> usize {
        let c = self.nodes[node].join(config);
        self.drive();
        c
    }

    fn subscribe(&mut self, node: usize, client: usize, filter: &str, qos: QoS) {
        self.nodes[node].subscribe(client, filter, q(qos));
        self.drive();
    }

    fn publish(
        &mut self,
        node: usize,
        client: usize,
        topic: &'static str,
        payload: &'static str,
        qos: QoS,
        retain: bool,
    ) {
        self.nodes[node].publish(client, topic, payload, qos, retain);
        self.drive();
    }
}

#[test]
fn a_message_reaches_subscribers_on_every_node_once_downgraded() {
    let mut c = Cluster::new(3);
    let s0 = c.join(0, ClientConfig::new(V5, "s0"));
    c.subscribe(0, s0, "a/#", QoS::ExactlyOnce);
    let s1 = c.join(1, ClientConfig::new(V4, "s1"));
    c.subscribe(1, s1, "a/+", QoS::AtLeastOnce);
    // Two overlapping filters on one node: the bus brings two copies; one is delivered.
    c.subscribe(1, s1, "a/b", QoS::AtLeastOnce);
    let s2 = c.join(2, ClientConfig::new(V5, "s2"));
    c.subscribe(2, s2, "other", QoS::AtLeastOnce);
    let p = c.join(2, ClientConfig::new(V5, "p"));
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        c.publish(2, p, "a/b", "m", qos, false);
    }
    let all = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    assert_eq!(c.nodes[0].take(s0), all.map(|q| got("a/b", "m", q, false)));
    // [MQTT-3.8.4-8] at most the subscription's QoS, on another node as here.
    let downgraded = all.map(|q| got("a/b", "m", q.min(QoS::AtLeastOnce), false));
    assert_eq!(c.nodes[1].take(s1), downgraded);
    assert!(c.nodes[2].take(s2).is_empty());
    // Every publish went out once; no node forwarded one it received.
    let publishes: Vec<usize> = c
        .ops
        .iter()
        .map(|ops| {
            ops.iter()
                .filter(|o| matches!(o, ClusterOp::Publish { .. }))
                .count()
        })
        .collect();
    assert_eq!(publishes, [0, 0, 3]);
}

#[test]
fn interest_is_one_subscribe_per_filter_and_node() {
    let mut c = Cluster::new(2);
    let a = c.join(0, ClientConfig::new(V5, "a"));
    let b = c.join(0, ClientConfig::new(V5, "b"));
    c.subscribe(0, a, "t/#", QoS::AtLeastOnce);
    c.subscribe(0, b, "t/#", QoS::AtMostOnce);
    c.subscribe(0, b, "$share/g/t/#", QoS::AtMostOnce);
    let subs: Vec<&ClusterOp> = c.ops[0]
        .iter()
        .filter(|o| matches!(o, ClusterOp::Subscribe(_)))
        .collect();
    assert_eq!(subs.len(), 2, "{subs:?}");
    let interest: Vec<ClusterFilter> = c.nodes[0].broker.cluster_interest().cloned().collect();
    assert_eq!(interest.len(), 2);
    c.nodes[0].peers[a]
        .client
        .unsubscribe(Instant::ZERO, &["t/#"])
        .unwrap();
    c.drive();
    assert!(!c.ops[0]
        .iter()
        .any(|o| matches!(o, ClusterOp::Unsubscribe(_))));
    // The last subscriber of the filter leaves (its session ends): Unsubscribe.
    c.nodes[0].cut(b);
    c.drive();
    let unsubs = c.ops[0]
        .iter()
        .filter(|o| matches!(o, ClusterOp::Unsubscribe(_)))
        .count();
    assert_eq!(unsubs, 2);
    assert_eq!(c.nodes[0].broker.cluster_interest().count(), 0);
}

#[test]
fn a_shared_subscription_delivers_each_message_once_across_the_cluster() {
    let mut c = Cluster::new(3);
    let mut members = Vec::new();
    for node in 0..3 {
        let m = c.join(node, ClientConfig::new(V5, ["m0", "m1", "m2"][node]));
        c.subscribe(node, m, "$share/g/jobs/#", QoS::AtLeastOnce);
        members.push((node, m));
    }
    // A second member on node 0, and a plain subscriber that gets everything.
    let m0b = c.join(0, ClientConfig::new(V5, "m0b"));
    c.subscribe(0, m0b, "$share/g/jobs/#", QoS::AtLeastOnce);
    members.push((0, m0b));
    let all = c.join(1, ClientConfig::new(V5, "all"));
    c.subscribe(1, all, "jobs/#", QoS::AtLeastOnce);
    let p = c.join(0, ClientConfig::new(V5, "p"));
    const TOPICS: [&str; 30] = [
        "jobs/0", "jobs/1", "jobs/2", "jobs/3", "jobs/4", "jobs/5", "jobs/6", "jobs/7", "jobs/8",
        "jobs/9", "jobs/10", "jobs/11", "jobs/12", "jobs/13", "jobs/14", "jobs/15", "jobs/16",
        "jobs/17", "jobs/18", "jobs/19", "jobs/20", "jobs/21", "jobs/22", "jobs/23", "jobs/24",
        "jobs/25", "jobs/26", "jobs/27", "jobs/28", "jobs/29",
    ];
    for t in TOPICS {
        c.publish(0, p, t, "x", QoS::AtLeastOnce, false);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut per_node = [0usize; 3];
    for (node, m) in members {
        let got = c.nodes[node].take(m);
        per_node[node] += got.len();
        seen.extend(got.into_iter().map(|g| g.0));
    }
    seen.sort();
    let mut want: Vec<String> = TOPICS.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(seen, want, "each message to one member, cluster-wide");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "every node's members had some: {per_node:?}"
    );
    assert_eq!(
        c.nodes[1].take(all).len(),
        30,
        "the plain subscriber gets all"
    );
}

#[test]
fn retained_messages_are_cluster_wide() {
    let mut c = Cluster::new(3);
    let p = c.join(0, ClientConfig::new(V5, "p"));
    c.publish(0, p, "state/door", "open", QoS::AtLeastOnce, true);
    // Node 2 had no subscriber when it was published; one that comes later gets it.
    let s = c.join(2, ClientConfig::new(V5, "s"));
    c.subscribe(2, s, "state/#", QoS::AtLeastOnce);
    assert_eq!(
        c.nodes[2].take(s),
        [got("state/door", "open", QoS::AtLeastOnce, true)]
    );
    // Cleared on node 0: gone on node 1 too.
    c.publish(0, p, "state/door", "", QoS::AtLeastOnce, true);
    let s1 = c.join(1, ClientConfig::new(V5, "s1"));
    c.subscribe(1, s1, "state/#", QoS::AtLeastOnce);
    assert!(c.nodes[1].take(s1).is_empty());
}

#[test]
fn a_will_reaches_other_nodes_and_sys_stays_home() {
    let mut c = Cluster::new(2);
    let s = c.join(1, ClientConfig::new(V5, "s"));
    c.subscribe(1, s, "#", QoS::AtLeastOnce);
    c.subscribe(1, s, "$SYS/#", QoS::AtLeastOnce);
    let mut config = ClientConfig::new(V5, "dying");
    config.will = Some((
        Message::new(
            TopicBuf::from_static("status/dying").unwrap(),
            "gone",
            QoS::AtLeastOnce,
        ),
        0,
    ));
    let d = c.join(0, config);
    c.nodes[0].cut(d);
    c.drive();
    // $SYS of node 0 is node 0's own.
    c.nodes[0].broker.handle_timeout(Instant::ZERO);
    let before = c.ops[0].len();
    let _ = c.nodes[0].broker.publish(
        Instant::ZERO,
        Message::new(
            TopicBuf::from_static("$SYS/broker/x").unwrap(),
            "1",
            QoS::AtMostOnce,
        ),
    );
    c.drive();
    assert!(
        !c.ops[0][before..]
            .iter()
            .any(|o| matches!(o, ClusterOp::Publish { .. })),
        "$SYS is not sent to the cluster"
    );
    assert_eq!(
        c.nodes[1].take(s),
        [got("status/dying", "gone", QoS::AtLeastOnce, false)]
    );
}

#[test]
fn a_client_that_connects_to_another_node_takes_its_session_over() {
    let mut c = Cluster::new(2);
    let first = c.join(0, persistent(V5, "mover"));
    c.subscribe(0, first, "t", QoS::AtLeastOnce);
    assert_eq!(c.nodes[0].broker.session_count(), 1);
    let second = c.join(1, persistent(V5, "mover"));
    // [MQTT-3.1.4-3] the old connection is closed with Session taken over.
    let taken = c.nodes[0].events(first).iter().any(|e| {
        matches!(
            e,
            Event::Disconnected {
                reason: ReasonCode::SessionTakenOver,
                ..
            }
        )
    });
    assert!(taken, "the first connection heard Session taken over");
    assert_eq!(
        c.nodes[0].broker.session_count(),
        0,
        "its session ended there"
    );
    assert_eq!(c.nodes[1].broker.session_count(), 1);
    assert!(
        c.nodes[1].peers[second].id.is_some(),
        "the new one is connected"
    );
    // The filter it had on node 0 is no longer node 0's interest.
    assert_eq!(c.nodes[0].broker.cluster_interest().count(), 0);
}

#[test]
fn a_frame_that_is_not_a_publish_is_refused() {
    let mut c = Cluster::new(1);
    let bad = Bytes::from_static(&[0xc0, 0]);
    assert!(matches!(
        c.nodes[0]
            .broker
            .cluster_publish(Instant::ZERO, &bad, ClusterTarget::Plain { via: "#" }),
        Err(mqtt_broker::Error::InvalidClusterMessage)
    ));
    assert!(c.nodes[0]
        .broker
        .cluster_retained(Instant::ZERO, &bad)
        .is_err());
    c.drive();
}

#[test]
fn assigned_client_identifiers_differ_between_nodes() {
    // Two clients without an identifier, one per node: each keeps its session.
    let mut c = Cluster::new(2);
    let a = c.join(0, ClientConfig::new(V5, ""));
    c.subscribe(0, a, "t", QoS::AtLeastOnce);
    let b = c.join(1, ClientConfig::new(V5, ""));
    c.subscribe(1, b, "t", QoS::AtLeastOnce);
    assert_eq!(c.nodes[0].broker.session_count(), 1, "not taken over");
    assert_eq!(c.nodes[1].broker.session_count(), 1);
}

#[test]
fn a_shared_group_on_another_node_only() {
    let mut c = Cluster::new(2);
    let m = c.join(1, ClientConfig::new(V5, "m"));
    c.subscribe(1, m, "$share/g/x/#", QoS::AtLeastOnce);
    let p = c.join(0, ClientConfig::new(V4, "p"));
    c.publish(0, p, "x/1", "hello", QoS::AtLeastOnce, false);
    assert_eq!(
        c.nodes[1].take(m),
        [got("x/1", "hello", QoS::AtLeastOnce, false)]
    );
}

#[test]
fn a_suback_waits_until_the_other_nodes_send_here() {
    // [MQTT-3.8.4-1] once the SUBACK is out, messages published on any node reach the
    // subscriber: it waits for the bus to report the subscription in place.
    let mut c = Cluster::new(2);
    c.confirm_at_once = false;
    let s = c.join(1, ClientConfig::new(V5, "s"));
    c.nodes[1].peers[s]
        .client
        .subscribe(Instant::ZERO, &[("t/#", q(QoS::AtLeastOnce))], None)
        .unwrap();
    c.drive();
    assert!(
        c.nodes[1].ack_codes(s).is_empty(),
        "no SUBACK before the bus has it"
    );
    c.confirm(1);
    assert_eq!(c.nodes[1].ack_codes(s), [vec![ReasonCode::GrantedQoS1]]);
    // A filter the node already has needs nothing from the bus.
    let s2 = c.join(1, ClientConfig::new(V5, "s2"));
    c.nodes[1].peers[s2]
        .client
        .subscribe(Instant::ZERO, &[("t/#", q(QoS::AtLeastOnce))], None)
        .unwrap();
    c.drive();
    assert_eq!(c.nodes[1].ack_codes(s2), [vec![ReasonCode::GrantedQoS1]]);
}
