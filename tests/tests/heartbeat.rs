//! The adaptive heartbeat (`mqtt_state::Heartbeat`) in a deterministic simulation: a
//! client with a 10-minute keep alive behind a NAT gateway that silently drops a mapping
//! left idle for longer than a timeout the client is never told, which changes mid-run,
//! talking to the real broker core over a link with a little latency.
//!
//! A dropped mapping is the mobile-network failure: whatever either side sends after it
//! vanishes, nothing reports an error, and only a ping left unanswered shows it. The
//! client must find each timeout within a bounded number of pings, settle just below it,
//! never let the keep alive lapse ([MQTT-3.1.2-20]), and, after a lost ping, reconnect
//! as soon as its pong timeout says the path is gone.

use std::collections::VecDeque;

use bytes::BytesMut;
use mqtt_broker::codec::ProtocolVersion;
use mqtt_broker::{Broker, BrokerConfig, BrokerEvent, ConnectionId};
use mqtt_state::{Client, ClientConfig, Duration, Error, HeartbeatConfig, Instant};

const KEEP_ALIVE_S: u16 = 600;
const PHASE: Duration = Duration::from_secs(8 * 3600);

/// One TCP connection through the gateway: its mapping and the bytes in flight.
struct Path {
    /// Mapping timeout in force (the gateway's, hidden from the client).
    alive: bool,
    last_activity: Instant,
    up: VecDeque<(Instant, Vec<u8>)>,
    down: VecDeque<(Instant, Vec<u8>)>,
    broker_id: ConnectionId,
}

struct Sim {
    now: Instant,
    tolerance: Duration,
    rng: u64,
    broker: Broker,
    client: Client,
    path: Path,
    /// Old connections the broker still holds (their mapping is gone).
    stale: Vec<ConnectionId>,
    last_client_send: Instant,
    pings: u64,
    reconnects: u64,
    /// When the last PINGREQ went out and whether the path was already dead then.
    last_ping: Option<Instant>,
}

impl Sim {
    fn new() -> Self {
        let now = Instant::from_millis(1_000);
        let config = BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        };
        let mut broker = Broker::new(config, now);
        let mut cc = ClientConfig::new(ProtocolVersion::V3_1_1, "phone");
        cc.keep_alive = KEEP_ALIVE_S;
        cc.clean_start = false;
        cc.heartbeat = Some(HeartbeatConfig::default());
        let client = Client::new(cc);
        let broker_id = broker.open(now);
        let mut sim = Self {
            now,
            tolerance: Duration::from_secs(100),
            rng: 0x2545_f491_4f6c_dd1d,
            broker,
            client,
            path: Path {
                alive: true,
                last_activity: now,
                up: VecDeque::new(),
                down: VecDeque::new(),
                broker_id,
            },
            stale: Vec::new(),
            last_client_send: now,
            pings: 0,
            reconnects: 0,
            last_ping: None,
        };
        sim.client.connect(now).unwrap();
        sim
    }

    fn latency(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_millis(10 + self.rng % 40)
    }

    /// The gateway sees a packet: a mapping idle for longer than its timeout is gone,
    /// and with it this packet and all that follow.
    fn through_gateway(&mut self) -> bool {
        if self.path.alive && self.now.saturating_since(self.path.last_activity) > self.tolerance {
            self.path.alive = false;
        }
        if self.path.alive {
            self.path.last_activity = self.now;
        }
        self.path.alive
    }

    /// Moves whatever the client and the broker have to send onto the path.
    fn pump(&mut self) -> Result<(), Error> {
        let mut buf = vec![0u8; 4096];
        loop {
            let mut progress = false;
            while let Some(n) = self.client.poll_transmit(self.now, &mut buf)? {
                progress = true;
                self.last_client_send = self.now;
                if buf[..n] == [0xC0, 0x00] {
                    self.pings += 1;
                    self.last_ping = Some(self.now);
                }
                if self.through_gateway() {
                    let at = self.now + self.latency();
                    self.path.up.push_back((at, buf[..n].to_vec()));
                }
            }
            while let Some(event) = self.broker.poll_event() {
                progress = true;
                match event {
                    BrokerEvent::Transmit(id) => {
                        while let Some(n) =
                            self.broker.poll_transmit(self.now, id, &mut buf).unwrap()
                        {
                            if id == self.path.broker_id && self.through_gateway() {
                                let at = self.now + self.latency();
                                self.path.down.push_back((at, buf[..n].to_vec()));
                            }
                        }
                    }
                    BrokerEvent::Close { id, .. } => {
                        self.broker.handle_close(self.now, id);
                        self.stale.retain(|&s| s != id);
                    }
                    _ => {}
                }
            }
            while self.client.poll_event().is_some() {
                progress = true;
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// A new TCP connection and mapping, at once: the link failed, not the server.
    fn reconnect(&mut self) {
        self.client.handle_close(self.now);
        self.stale.push(self.path.broker_id);
        self.path = Path {
            alive: true,
            last_activity: self.now,
            up: VecDeque::new(),
            down: VecDeque::new(),
            broker_id: self.broker.open(self.now),
        };
        self.reconnects += 1;
        self.client.connect(self.now).unwrap();
    }

    /// Runs until `until`, checking the keep alive all along.
    fn run(&mut self, until: Instant, mut each_step: impl FnMut(&mut Self)) {
        while self.now < until {
            if let Err(e) = self.pump() {
                assert_eq!(e, Error::KeepAliveTimeout, "at {:?}", self.now);
                // Found by the pong timeout, not a keep alive later.
                let ping = self.last_ping.expect("a ping went unanswered");
                let waited = self.now.saturating_since(ping);
                assert!(
                    waited <= Duration::from_secs(11),
                    "lost path found {waited:?} after the ping"
                );
                self.reconnect();
                continue;
            }
            each_step(self);
            // [MQTT-3.1.2-20]: never more than a keep alive without sending.
            let quiet = self.now.saturating_since(self.last_client_send);
            assert!(
                quiet <= Duration::from_secs(u64::from(KEEP_ALIVE_S)),
                "client silent for {quiet:?}"
            );
            let next = [
                self.client.poll_timeout(),
                self.broker.poll_timeout(),
                self.path.up.front().map(|p| p.0),
                self.path.down.front().map(|p| p.0),
                Some(until),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
            self.now = next.max(self.now);
            while self.path.up.front().is_some_and(|p| p.0 <= self.now) {
                let (_, bytes) = self.path.up.pop_front().unwrap();
                let mut input = BytesMut::from(&bytes[..]);
                self.broker
                    .handle_input(self.now, self.path.broker_id, &mut input);
            }
            while self.path.down.front().is_some_and(|p| p.0 <= self.now) {
                let (_, bytes) = self.path.down.pop_front().unwrap();
                let mut input = BytesMut::from(&bytes[..]);
                let _ = self.client.handle_input(self.now, &mut input);
            }
            self.client.handle_timeout(self.now);
            self.broker.handle_timeout(self.now);
        }
    }
}

#[test]
fn the_client_finds_each_gateway_timeout_and_follows_it_as_it_changes() {
    let mut sim = Sim::new();
    let precision = HeartbeatConfig::default().precision;
    let keep_alive = Duration::from_secs(u64::from(KEEP_ALIVE_S));
    // Seconds a mapping may stay idle, one phase each; the last tolerates the keep alive.
    for secs in [100, 45, 250, 28, 170, 900] {
        sim.tolerance = Duration::from_secs(secs);
        let start = sim.now;
        let (pings0, reconnects0) = (sim.pings, sim.reconnects);
        let mut found_at: Option<(u64, u64)> = None;
        let tolerance = sim.tolerance;
        sim.run(start + PHASE, |sim| {
            let Some(interval) = sim.client.ping_interval() else {
                return;
            };
            assert!(interval <= keep_alive, "{interval:?}");
            let hb = sim.client.heartbeat().unwrap();
            let settled = if tolerance >= keep_alive {
                interval == keep_alive
            } else {
                hb.converged()
                    && interval <= tolerance
                    && interval.as_millis() + 2 * precision.as_millis() >= tolerance.as_millis()
            };
            if settled && found_at.is_none() {
                found_at = Some((sim.pings, sim.reconnects));
            }
        });
        let (pings_found, reconnects_found) = found_at.unwrap_or_else(|| {
            panic!(
                "{secs} s: never settled: {} pings, {} reconnects, at {:?}: {:?}",
                sim.pings - pings0,
                sim.reconnects - reconnects0,
                sim.client.ping_interval(),
                sim.client.heartbeat()
            )
        });
        let to_find = pings_found - pings0;
        let after = sim.pings - pings_found;
        let lost_after = sim.reconnects - reconnects_found;
        println!(
            "{secs} s: settled at {:?} after {to_find} pings ({} reconnects); then {after} pings, {lost_after} reconnects",
            sim.client.ping_interval().unwrap(),
            reconnects_found - reconnects0,
        );
        // A lower timeout is found by the loss that shows it and a search by halving
        // (log2(600 s / 5 s) = 7); a higher one by a recheck above the learned interval,
        // which comes at most 80 answered pings after the last.
        assert!(
            to_find <= 20 || (to_find <= 100 && secs > 100),
            "{secs} s: {to_find}"
        );
        // Settled, the client pings just below the timeout and loses only rechecks.
        assert!(
            lost_after * 10 <= after + 20,
            "{secs} s: {lost_after} of {after}"
        );
    }
}

/// A ping that waits when the client itself closes cleanly proves nothing about the path:
/// not counted as lost.
#[test]
fn a_clean_disconnect_while_a_ping_waits_is_not_a_loss() {
    let mut cc = ClientConfig::new(ProtocolVersion::V3_1_1, "c");
    cc.keep_alive = 60;
    cc.heartbeat = Some(HeartbeatConfig::default());
    let mut client = Client::new(cc);
    let mut now = Instant::from_millis(0);
    let mut out = [0u8; 256];
    client.connect(now).unwrap();
    while client.poll_transmit(now, &mut out).unwrap().is_some() {}
    let mut connack = BytesMut::from(&[0x20u8, 0x02, 0x00, 0x00][..]);
    client.handle_input(now, &mut connack).unwrap();
    // The first probe: the heartbeat doubles its 15 s floor.
    now = client.poll_timeout().unwrap();
    assert_eq!(now, Instant::from_millis(30_000));
    client.handle_timeout(now);
    assert_eq!(
        client.poll_transmit(now, &mut out).unwrap(),
        Some(2),
        "PINGREQ"
    );
    client
        .disconnect(now, mqtt_broker::codec::ReasonCode::Success)
        .unwrap();
    while client.poll_transmit(now, &mut out).unwrap().is_some() {}
    assert!(client.is_closed());
    client.handle_close(now);
    assert_eq!(client.heartbeat().unwrap().losses(), 0);
    // Whereas a connection that dies under a waiting ping is one.
    client.connect(now).unwrap();
    while client.poll_transmit(now, &mut out).unwrap().is_some() {}
    let mut connack = BytesMut::from(&[0x20u8, 0x02, 0x00, 0x00][..]);
    client.handle_input(now, &mut connack).unwrap();
    now = client.poll_timeout().unwrap();
    client.handle_timeout(now);
    assert_eq!(
        client.poll_transmit(now, &mut out).unwrap(),
        Some(2),
        "PINGREQ"
    );
    client.handle_close(now);
    assert_eq!(client.heartbeat().unwrap().losses(), 1);
}
