//! Time as the caller tells it: milliseconds on a monotonic clock of the caller's choosing.

use core::num::NonZeroU64;
use core::ops::{Add, Sub};

/// A point in time, in milliseconds since an epoch the caller picks (process start, boot).
/// Only differences matter; the machines never read a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Instant(u64);

/// A span of time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Duration(u64);

impl Instant {
    /// The epoch itself.
    pub const ZERO: Instant = Instant(0);

    /// `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub const fn saturating_since(self, earlier: Instant) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl Duration {
    /// No time.
    pub const ZERO: Duration = Duration(0);

    /// `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(s.saturating_mul(1000))
    }

    /// Whole milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded down.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.0))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_since(earlier)
    }
}

impl Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration(self.0.saturating_add(d.0))
    }
}

#[cfg(feature = "std")]
impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

#[cfg(feature = "std")]
impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        std::time::Duration::from_millis(d.0)
    }
}

/// The machines' timers. Each connection keeps one deadline per timer; `poll_timeout` is the
/// earliest of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Timer {
    /// Client: send PINGREQ when nothing was sent for the keep alive. Server: close when
    /// nothing was received for 1.5 times the keep alive.
    KeepAlive = 0,
    /// Client: the PINGRESP (or any packet) must arrive by then.
    PingResp = 1,
    /// Client: CONNACK must arrive by then. Server: CONNECT must.
    Connect = 2,
}

const TIMERS: usize = 3;

/// One optional deadline per [`Timer`]: each is the deadline's millisecond plus one, so
/// that zero means none and a deadline takes 8 bytes instead of 16 (every connection
/// carries the table). A deadline at the clock's very last millisecond is kept one
/// millisecond early.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimerTable([Option<NonZeroU64>; TIMERS]);

impl TimerTable {
    pub(crate) fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = NonZeroU64::new(at.0.saturating_add(1));
    }
    pub(crate) fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }
    pub(crate) fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize].map(|at| Instant(at.get() - 1))
    }
    pub(crate) fn clear(&mut self) {
        self.0 = [None; TIMERS];
    }
    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        let earliest = self.0.iter().flatten().min()?;
        Some(Instant(earliest.get() - 1))
    }
    /// Whether `t` is due at `now`.
    pub(crate) fn expired(&self, t: Timer, now: Instant) -> bool {
        self.get(t).is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_reports_the_earliest() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::KeepAlive, Instant::from_millis(50));
        t.set(Timer::Connect, Instant::from_millis(20));
        assert_eq!(t.next(), Some(Instant::from_millis(20)));
        assert!(t.expired(Timer::Connect, Instant::from_millis(20)));
        assert!(!t.expired(Timer::KeepAlive, Instant::from_millis(49)));
        t.stop(Timer::Connect);
        assert_eq!(t.next(), Some(Instant::from_millis(50)));
    }

    #[test]
    fn arithmetic_saturates() {
        let a = Instant::from_millis(10);
        assert_eq!(a - Instant::from_millis(20), Duration::ZERO);
        assert_eq!(
            Instant::from_millis(u64::MAX) + Duration::from_secs(1),
            Instant::from_millis(u64::MAX)
        );
        assert_eq!(Duration::from_secs(2).as_millis(), 2000);
    }
}
