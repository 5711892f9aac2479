//! The adaptive heartbeat: see [`Heartbeat`].

use crate::Duration;

/// How far failed rechecks stretch the wait before the next one.
const MAX_RECHECK_FACTOR: u32 = 8;

/// Settings of a [`Heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatConfig {
    /// The shortest interval ever used, and the one assumed to work at first.
    pub min_interval: Duration,
    /// The search stops when the proven and the disproven interval are this close.
    pub precision: Duration,
    /// How long a ping may wait for its answer before the path counts as lost. Far below
    /// the keep alive: a lost path is found (and the connection replaced) this long after
    /// the ping, not a keep alive later.
    pub pong_timeout: Duration,
    /// Answered pings at the learned interval before a probe above it.
    pub recheck_after: u32,
}

impl Default for HeartbeatConfig {
    /// 15 s minimum, 5 s precision, 10 s to answer a ping, a recheck after 10 pings.
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(15),
            precision: Duration::from_secs(5),
            pong_timeout: Duration::from_secs(10),
            recheck_after: 10,
        }
    }
}

/// An adaptive ping interval for clients behind NAT gateways and mobile networks.
///
/// A gateway drops the mapping of a connection that stays idle for longer than its own
/// timeout, often well below the MQTT keep alive (mobile carriers: anywhere from 30 s to
/// 30 min, and it changes with the cell and the network). After that, nothing the client
/// sends arrives and nothing tells it so: a client that pings once per keep alive learns
/// of the loss only a keep alive later, and a push service that pings every 30 s to be
/// safe wakes the radio (and drains the battery) far more often than the path needs.
///
/// [`Heartbeat`] learns the longest idle interval the path tolerates, below the keep
/// alive. Each ping is a probe of the interval the connection was idle before it: an
/// answer proves that interval, a ping left unanswered within
/// [`HeartbeatConfig::pong_timeout`] (or a connection that dies while the ping waits)
/// disproves it. Between the longest proven and the shortest disproven interval it
/// searches by halving, so it brackets the gateway's timeout to within
/// [`HeartbeatConfig::precision`] in a number of probes logarithmic in
/// `keep alive / precision`, and then pings at the longest proven interval. After
/// [`HeartbeatConfig::recheck_after`] answered pings it probes above that again, in case
/// the path got more tolerant (a probe that fails doubles the wait before the next one,
/// so a stable path costs few reconnections). A ping lost at an interval already proven
/// means the path got less tolerant: the proven interval is halved (backing off
/// quickly, since each loss costs a reconnection) and the search starts again below it.
///
/// It never pings less often than the keep alive requires ([MQTT-3.1.2-20]): every
/// interval is capped by the negotiated keep alive. A [`crate::Client`] configured with
/// [`crate::ClientConfig::heartbeat`] drives it by itself; after a loss the client fails
/// with [`crate::Error::KeepAliveTimeout`] and the adapter should reconnect at once (the
/// link, not the server, failed).
///
/// ```
/// use mqtt_state::{Duration, Heartbeat, HeartbeatConfig};
///
/// let keep_alive = Duration::from_secs(300);
/// let mut hb = Heartbeat::new(HeartbeatConfig::default());
/// // A gateway that drops mappings idle for more than 100 s.
/// let mut probes = 0;
/// while !hb.converged() {
///     let interval = hb.interval(keep_alive);
///     probes += 1;
///     if interval.as_secs() <= 100 { hb.answered(interval) } else { hb.lost(interval) }
/// }
/// let learned = hb.interval(keep_alive).as_secs();
/// assert!((95..=100).contains(&learned), "{learned}");
/// assert!(probes <= 8);
/// ```
#[derive(Debug, Clone)]
pub struct Heartbeat {
    config: HeartbeatConfig,
    /// The longest interval answered since the path last got worse; after a loss, the
    /// fallback to try first (`verified` false until it is answered).
    proven: Duration,
    verified: bool,
    /// The shortest interval lost since; `None` while none is known.
    disproven: Option<Duration>,
    /// Answered pings at `proven` since the search converged or the last recheck.
    steady: u32,
    /// Answered pings to wait for before the next recheck (doubles after each failed one).
    recheck_after: u32,
    probes: u64,
    losses: u64,
}

impl Heartbeat {
    /// Starts from `config.min_interval`, assumed to work.
    pub fn new(config: HeartbeatConfig) -> Self {
        Self {
            proven: config.min_interval,
            verified: true,
            disproven: None,
            steady: 0,
            recheck_after: config.recheck_after.max(1),
            probes: 0,
            losses: 0,
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &HeartbeatConfig {
        &self.config
    }

    /// The idle interval after which to ping next, under the negotiated `keep_alive`
    /// (which caps it; a zero keep alive, no pings, leaves nothing to learn and gives
    /// `min_interval`).
    pub fn interval(&self, keep_alive: Duration) -> Duration {
        let min = self.config.min_interval;
        let cap = if keep_alive.as_millis() == 0 {
            min
        } else {
            keep_alive
        };
        let next = match self.disproven {
            // After a loss, the fallback first.
            _ if !self.verified => self.proven,
            // Upward, doubling, until a ping is lost or the keep alive is reached.
            None => Duration::from_millis(self.proven.as_millis().saturating_mul(2)),
            // Halving the bracket.
            Some(bad) if !self.narrow(bad) => {
                Duration::from_millis((self.proven.as_millis() + bad.as_millis()) / 2)
            }
            // Converged: the proven interval, and now and then the disproven one again.
            Some(bad) if self.steady >= self.recheck_after => bad,
            Some(_) => self.proven,
        };
        Duration::from_millis(next.as_millis().clamp(min.as_millis(), cap.as_millis())).min(cap)
    }

    /// Whether the search has bracketed the path's tolerance: [`Heartbeat::interval`] is
    /// the proven interval until the next recheck. (A path that tolerates the keep alive
    /// never brackets: it is pinged at the keep alive.)
    pub fn converged(&self) -> bool {
        self.verified && self.disproven.is_some_and(|bad| self.narrow(bad))
    }

    fn narrow(&self, bad: Duration) -> bool {
        bad.as_millis().saturating_sub(self.proven.as_millis()) <= self.config.precision.as_millis()
    }

    /// A ping sent after `idle` without traffic was answered: the path tolerates `idle`.
    pub fn answered(&mut self, idle: Duration) {
        self.probes += 1;
        // Within the precision of the fallback counts as trying it (traffic from the
        // server may have shortened the idle time a little).
        if idle.as_millis() + self.config.precision.as_millis() >= self.proven.as_millis() {
            self.verified = true;
        }
        if idle > self.proven {
            self.proven = idle;
        }
        match self.disproven {
            // The path got more tolerant (a recheck succeeded): search upward again.
            Some(bad) if idle >= bad => {
                self.disproven = None;
                self.steady = 0;
                self.recheck_after = self.config.recheck_after.max(1);
            }
            Some(bad) if self.narrow(bad) && self.verified => self.steady += 1,
            _ => {}
        }
    }

    /// A ping sent after `idle` without traffic went unanswered (or the connection died
    /// while it waited): the path does not tolerate `idle`.
    pub fn lost(&mut self, idle: Duration) {
        self.probes += 1;
        self.losses += 1;
        let recheck = self.converged() && self.steady >= self.recheck_after;
        self.steady = 0;
        if idle <= self.proven {
            // What worked before fails now: back off by half, try that, search above it.
            let half = Duration::from_millis(idle.as_millis() / 2);
            self.proven = half.max(self.config.min_interval);
            self.verified = false;
            self.disproven = Some(idle);
            self.recheck_after = self.config.recheck_after.max(1);
        } else {
            self.disproven = Some(self.disproven.map_or(idle, |bad| bad.min(idle)));
            if recheck {
                // The path is as it was: wait twice as long before probing again, up to
                // MAX_RECHECK_FACTOR times the configured wait (so that a path that got
                // more tolerant is still found within a bounded number of pings).
                let max = self
                    .config
                    .recheck_after
                    .max(1)
                    .saturating_mul(MAX_RECHECK_FACTOR);
                self.recheck_after = self.recheck_after.saturating_mul(2).min(max);
            }
        }
    }

    /// Pings whose fate is known, answered or lost.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Pings lost (each cost a reconnection).
    pub fn losses(&self) -> u64 {
        self.losses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP_ALIVE: Duration = Duration::from_secs(600);

    /// Pings at what `hb` says against a path that drops mappings idle for longer than
    /// `tolerance`, until it has bracketed it (converged, within `precision` below it);
    /// returns the probes that took, and the pings lost in the 1000 pings after.
    fn follow(hb: &mut Heartbeat, tolerance: Duration) -> (u64, u64) {
        let ping = |hb: &mut Heartbeat| {
            let i = hb.interval(KEEP_ALIVE);
            assert!(i <= KEEP_ALIVE && i >= hb.config().min_interval);
            if i <= tolerance {
                hb.answered(i)
            } else {
                hb.lost(i)
            }
        };
        let found = |hb: &Heartbeat| {
            let i = hb.interval(KEEP_ALIVE);
            (hb.converged() || i == KEEP_ALIVE)
                && i <= tolerance
                && i.as_millis() + hb.config().precision.as_millis() >= tolerance.as_millis()
        };
        let before = hb.probes();
        while !found(hb) {
            assert!(hb.probes() - before < 1000, "{tolerance:?} never found");
            ping(hb);
        }
        let probes = hb.probes() - before;
        let losses = hb.losses();
        for _ in 0..1000 {
            ping(hb);
            assert!(hb.interval(KEEP_ALIVE) <= tolerance || hb.steady >= hb.recheck_after);
        }
        (probes, hb.losses() - losses)
    }

    #[test]
    fn brackets_each_tolerance_in_a_bounded_number_of_probes_and_follows_changes() {
        let mut hb = Heartbeat::new(HeartbeatConfig::default());
        for secs in [100, 40, 270, 31, 590, 16, 200, 600] {
            let (probes, lost) = follow(&mut hb, Duration::from_secs(secs));
            std::println!("{secs} s: found in {probes} probes, then {lost} lost in 1000");
            // log2(600 s / 5 s) is 7 halvings. A lower tolerance is found by the loss that
            // reveals it, the back-off and the search; a higher one by a recheck, at most
            // 8 x 10 answered pings after the last.
            assert!(
                probes <= 16 || (secs > 100 && probes <= 100),
                "{secs} s: {probes}"
            );
            // Rechecks that fail come at doubling spacing, up to 80 pings apart.
            assert!(lost <= 16, "{secs} s: {lost} lost in 1000 pings");
        }
    }

    #[test]
    fn a_tolerant_path_is_pinged_at_the_keep_alive() {
        let mut hb = Heartbeat::new(HeartbeatConfig::default());
        for _ in 0..10 {
            let i = hb.interval(Duration::from_secs(60));
            hb.answered(i);
        }
        assert_eq!(
            hb.interval(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(hb.losses(), 0);
        // A zero keep alive (no pings required) leaves the floor.
        assert_eq!(
            hb.interval(Duration::from_millis(0)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn never_below_the_minimum_even_when_everything_is_lost() {
        let mut hb = Heartbeat::new(HeartbeatConfig::default());
        for _ in 0..20 {
            let i = hb.interval(KEEP_ALIVE);
            assert!(i >= Duration::from_secs(15));
            hb.lost(i);
        }
    }
}
