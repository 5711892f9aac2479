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
    /// The cluster's session store (JetStream's part in `mqtt-tokio`): the session tables
    /// every durable node writes and any node imports from.
    shared: MemStore,
    /// Which node owns each client identifier (the claims).
    owner: BTreeMap<String, usize>,
    /// Nodes running; a dead one is driven no more and answers nothing.
    alive: Vec<bool>,
}

fn matches(filter: &str, topic: &str) -> bool {
    let (Ok(f), Ok(t)) = (TopicFilter::new(filter), TopicName::new(topic)) else {
        return false;
    };
    f.matches(t)
}

impl Cluster {
    fn new(n: usize) -> Self {
        Self::with(
            n,
            BrokerConfig {
                sys_interval: None,
                ..BrokerConfig::default()
            },
        )
    }

    /// Nodes that store what they acknowledge: the session tables in the cluster's store,
    /// the rest in their own.
    fn durable(n: usize) -> Self {
        Self::with(n, durable_config())
    }

    fn with(n: usize, config: BrokerConfig) -> Self {
        let nodes = (0..n)
            .map(|i| {
                let mut net = Net::with(Broker::new(
                    BrokerConfig {
                        cluster: Some(ClusterConfig {
                            node: format!("n{i}"),
                        }),
                        ..config.clone()
                    },
                    Instant::ZERO,
                ));
                net.store = Some(MemStore::new());
                net.auto_commit = false;
                net
            })
            .collect();
        Cluster {
            nodes,
            subs: vec![BTreeSet::new(); n],
            cursor: BTreeMap::new(),
            ops: vec![Vec::new(); n],
            confirm_at_once: true,
            unconfirmed: vec![0; n],
            shared: MemStore::new(),
            owner: BTreeMap::new(),
            alive: vec![true; n],
        }
    }

    /// Writes node `i`'s pending batch: session tables to the cluster's store, the rest
    /// to its own; whether there was one.
    fn commit(&mut self, i: usize) -> bool {
        let mut ops = Vec::new();
        let Some(batch) = self.nodes[i].broker.poll_store(&mut ops) else {
            return false;
        };
        for op in &ops {
            let table = match op {
                StoreOp::Put { table, .. }
                | StoreOp::Delete { table, .. }
                | StoreOp::DeletePrefix { table, .. } => *table,
            };
            if table == Table::Retained {
                op.apply(self.nodes[i].store.as_mut().unwrap());
            } else {
                op.apply(&mut self.shared);
            }
        }
        let now = self.nodes[i].now;
        self.nodes[i].broker.handle_durable(now, batch);
        true
    }

    /// Node `i` stops: no more input, no more answers (its stored part stays).
    fn kill(&mut self, i: usize) {
        self.alive[i] = false;
    }

    /// Imports `client`'s entries of `tables` from the cluster's store into node `to`.
    fn import(&mut self, to: usize, client: &str, tables: &[Table]) {
        let now = self.nodes[to].now;
        for &t in tables {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = self
                .shared
                .iter()
                .filter(|((table, key), _)| {
                    *table == t && t.session_key(key).is_some_and(|(c, _)| c == client)
                })
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in entries {
                self.nodes[to]
                    .broker
                    .cluster_import(now, t, &k, &v)
                    .unwrap();
            }
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
                if !self.alive[i] {
                    continue;
                }
                self.nodes[i].drive();
                while self.commit(i) {
                    progress = true;
                    self.nodes[i].drive();
                }
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
                    if n == from || !self.alive[n] {
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
                        .filter(|&n| self.alive[n] && self.subs[n].contains(&key))
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
            ClusterOp::Claim {
                client_id,
                conn,
                resume,
            } => {
                // As the NATS adapter does: the record first (its subscriptions bring
                // messages here from then on), the claim, the old owner lets go and
                // stores its last state, then the whole session.
                let prev = self.owner.insert(client_id.clone(), from);
                let moving = resume && prev.is_some_and(|p| p != from);
                if moving {
                    self.import(from, &client_id, &[Table::Sessions]);
                }
                if let Some(p) = prev.filter(|&p| p != from && self.alive[p]) {
                    let now = self.nodes[p].now;
                    self.nodes[p].broker.session_taken(now, &client_id);
                    self.nodes[p].drive();
                    while self.commit(p) {
                        self.nodes[p].drive();
                    }
                }
                if moving {
                    self.import(from, &client_id, &Table::ALL[..4]);
                }
                let now = self.nodes[from].now;
                let elsewhere = prev.is_some_and(|p| p != from);
                self.nodes[from]
                    .broker
                    .cluster_claimed(now, conn, elsewhere);
            }
            _ => {}
        }
    }

    /// Client `i` of node `from` loses its connection and connects to node `to`, with
    /// its session state (as a device that reconnects elsewhere); its index there.
    fn roam(&mut self, from: usize, i: usize, to: usize) -> usize {
        if self.alive[from] {
            self.nodes[from].cut(i);
        }
        let mut peer = self.nodes[from].peers.remove(i);
        peer.id = None;
        peer.events.clear();
        self.nodes[to].peers.push(peer);
        let j = self.nodes[to].peers.len() - 1;
        self.nodes[to].reconnect(j);
        self.drive();
        j
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

#[test]
fn a_session_moves_with_its_subscriptions_and_queued_messages() {
    let mut c = Cluster::durable(3);
    let m = c.join(0, persistent(V5, "mover"));
    c.subscribe(0, m, "t", QoS::AtLeastOnce);
    c.subscribe(0, m, "x", QoS::ExactlyOnce);
    c.nodes[0].cut(m);
    c.drive();
    let p = c.join(1, ClientConfig::new(V5, "p"));
    for (topic, payload, qos) in [
        ("t", "1", QoS::AtLeastOnce),
        ("x", "2", QoS::ExactlyOnce),
        ("t", "3", QoS::AtLeastOnce),
    ] {
        c.publish(1, p, topic, payload, qos, false);
    }
    // [MQTT-3.1.2-5] resumed on another node, with what was queued on the first, in order
    // ([MQTT-4.6.0-1]).
    let m = c.roam(0, m, 2);
    assert!(session_present(&c.nodes[2], m));
    c.drive();
    assert_eq!(
        c.nodes[2].take(m),
        [
            got("t", "1", QoS::AtLeastOnce, false),
            got("x", "2", QoS::ExactlyOnce, false),
            got("t", "3", QoS::AtLeastOnce, false),
        ]
    );
    // Its subscriptions came along: the next message reaches it on its new node.
    c.publish(1, p, "t", "4", QoS::AtLeastOnce, false);
    assert_eq!(c.nodes[2].take(m), [got("t", "4", QoS::AtLeastOnce, false)]);
    // Node 0 keeps nothing of it, nor any interest for it.
    assert_eq!(c.nodes[0].broker.session_count(), 0);
    assert_eq!(c.nodes[0].broker.cluster_interest().count(), 0);
}

#[test]
fn deliveries_in_flight_go_again_with_dup_on_the_new_node() {
    let mut c = Cluster::durable(2);
    let m = c.join(
        0,
        ClientConfig {
            manual_acks: true,
            ..persistent(V5, "mover")
        },
    );
    c.subscribe(0, m, "t", QoS::AtLeastOnce);
    let p = c.join(1, ClientConfig::new(V5, "p"));
    for payload in ["a", "b"] {
        c.publish(1, p, "t", payload, QoS::AtLeastOnce, false);
    }
    let first = c.nodes[0].deliveries(m);
    assert_eq!(first.len(), 2);
    // Never acknowledged: the client moves.
    let m = c.roam(0, m, 1);
    c.drive();
    let again: Vec<_> = c.nodes[1]
        .deliveries(m)
        .into_iter()
        .map(|(id, dup, m)| (id, dup, text(&m)))
        .collect();
    // [MQTT-4.4.0-1] [MQTT-3.3.1-1] the same identifiers, with DUP, in order.
    let want: Vec<_> = first
        .iter()
        .map(|(id, _, m)| (*id, true, text(m)))
        .collect();
    assert_eq!(again, want);
}

#[test]
fn a_dead_nodes_sessions_resume_elsewhere_with_what_it_acknowledged() {
    let mut c = Cluster::durable(3);
    let m = c.join(0, persistent(V4, "mover"));
    c.subscribe(0, m, "t/#", QoS::ExactlyOnce);
    c.nodes[0].cut(m);
    c.drive();
    let p = c.join(1, ClientConfig::new(V5, "p"));
    for payload in ["1", "2", "3"] {
        c.publish(1, p, "t/a", payload, QoS::AtLeastOnce, false);
    }
    c.publish(1, p, "t/b", "4", QoS::ExactlyOnce, false);
    // Node 0 dies with the session and its four acknowledged messages.
    c.kill(0);
    let m = c.roam(0, m, 2);
    assert!(session_present(&c.nodes[2], m));
    c.drive();
    assert_eq!(
        c.nodes[2].take(m),
        [
            got("t/a", "1", QoS::AtLeastOnce, false),
            got("t/a", "2", QoS::AtLeastOnce, false),
            got("t/a", "3", QoS::AtLeastOnce, false),
            got("t/b", "4", QoS::ExactlyOnce, false),
        ]
    );
    c.publish(1, p, "t/c", "5", QoS::AtLeastOnce, false);
    assert_eq!(
        c.nodes[2].take(m),
        [got("t/c", "5", QoS::AtLeastOnce, false)]
    );
}

#[test]
fn a_clean_start_on_another_node_discards_the_stored_session() {
    let mut c = Cluster::durable(3);
    let m = c.join(0, persistent(V5, "mover"));
    c.subscribe(0, m, "t", QoS::AtLeastOnce);
    c.nodes[0].cut(m);
    c.drive();
    let p = c.join(1, ClientConfig::new(V5, "p"));
    c.publish(1, p, "t", "old", QoS::AtLeastOnce, false);
    // [MQTT-3.1.2-4] a clean start elsewhere: no session, nothing of the old one.
    let fresh = c.join(1, ClientConfig::new(V5, "mover"));
    assert!(!session_present(&c.nodes[1], fresh));
    assert!(c.nodes[1].take(fresh).is_empty());
    c.nodes[1].cut(fresh);
    c.drive();
    // Nor when it asks for its session later, on a third node.
    let back = c.join(2, persistent(V5, "mover"));
    assert!(!session_present(&c.nodes[2], back));
    c.publish(1, p, "t", "new", QoS::AtLeastOnce, false);
    assert!(c.nodes[2].take(back).is_empty());
    assert_eq!(c.nodes[0].broker.session_count(), 0);
}

#[test]
fn a_session_imported_for_a_client_that_left_keeps_its_messages() {
    let mut c = Cluster::durable(2);
    let m = c.join(0, persistent(V5, "mover"));
    c.subscribe(0, m, "t", QoS::AtLeastOnce);
    c.nodes[0].cut(m);
    c.drive();
    let p = c.join(0, ClientConfig::new(V5, "p"));
    c.publish(0, p, "t", "queued", QoS::AtLeastOnce, false);
    // The client connects to node 1 and is gone before its claim is done: node 1 owns
    // the session all the same, with its message.
    let id = c.nodes[1].broker.open(Instant::ZERO);
    let mut client = Client::new(persistent(V5, "mover"));
    client.connect(Instant::ZERO).unwrap();
    let mut out = vec![0u8; 4096];
    let n = client
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    let mut buf = bytes::BytesMut::from(&out[..n]);
    c.nodes[1].broker.handle_input(Instant::ZERO, id, &mut buf);
    let claim = c.nodes[1].broker.poll_cluster();
    assert!(matches!(claim, Some(ClusterOp::Claim { .. })), "{claim:?}");
    c.nodes[1].broker.handle_close(Instant::ZERO, id);
    c.carry(1, claim.unwrap());
    c.drive();
    assert_eq!(c.nodes[0].broker.session_count(), 1, "the publisher's own");
    let m = c.roam(0, m, 1);
    assert!(session_present(&c.nodes[1], m));
    c.drive();
    assert_eq!(
        c.nodes[1].take(m),
        [got("t", "queued", QoS::AtLeastOnce, false)]
    );
}
