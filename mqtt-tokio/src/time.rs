//! Conversions between tokio's (and std's) clock and the machines' [`mqtt_state::Instant`].

/// The origin of the machine's clock: `mqtt_state::Instant` counts milliseconds from it.
///
/// The sans-IO machine never reads a clock; every input carries `now`. One `Clock` per
/// client keeps those readings and tokio's timers on the same scale, so that a deadline
/// from `poll_timeout` becomes a `tokio::time::sleep_until` and back without drift.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
    /// The machine's time at `origin`, in milliseconds: not 0 for a clock that resumes
    /// where a stored broker's stopped ([`Clock::resuming_at`]).
    base: u64,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self::with_origin(tokio::time::Instant::now())
    }

    /// A clock whose origin is `origin`.
    pub fn with_origin(origin: tokio::time::Instant) -> Self {
        Self { origin, base: 0 }
    }

    /// A clock that reads `at` now: for a broker restored from a store, whose clock goes
    /// on where the stored one stopped (plus the time it was down).
    pub fn resuming_at(at: mqtt_state::Instant) -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            base: at.as_millis(),
        }
    }

    /// The current time on the machine's scale.
    pub fn now(&self) -> mqtt_state::Instant {
        self.to_state(tokio::time::Instant::now())
    }

    /// `t` on the machine's scale; a time before the origin is the origin.
    pub fn to_state(&self, t: tokio::time::Instant) -> mqtt_state::Instant {
        let ms = t.saturating_duration_since(self.origin).as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        mqtt_state::Instant::from_millis(self.base.saturating_add(ms))
    }

    /// `t` (a std instant) on the machine's scale.
    pub fn from_std(&self, t: std::time::Instant) -> mqtt_state::Instant {
        self.to_state(tokio::time::Instant::from_std(t))
    }

    /// A machine deadline as a tokio instant, for `sleep_until`.
    pub fn to_tokio(&self, t: mqtt_state::Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_millis(t.as_millis().saturating_sub(self.base))
    }

    /// A machine deadline as a std instant.
    pub fn to_std(&self, t: mqtt_state::Instant) -> std::time::Instant {
        self.to_tokio(t).into_std()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let origin = tokio::time::Instant::now();
        let c = Clock::with_origin(origin);
        let later = origin + std::time::Duration::from_millis(1234);
        assert_eq!(c.to_state(later).as_millis(), 1234);
        assert_eq!(c.to_tokio(c.to_state(later)), later);
        assert_eq!(
            c.to_state(origin - std::time::Duration::from_millis(5)),
            mqtt_state::Instant::ZERO
        );
        assert_eq!(c.from_std(later.into_std()).as_millis(), 1234);
    }

    #[test]
    fn resumed() {
        let c = Clock::resuming_at(mqtt_state::Instant::from_millis(10_000));
        let later = c.origin + std::time::Duration::from_millis(1234);
        assert_eq!(c.to_state(later).as_millis(), 11_234);
        assert_eq!(c.to_tokio(c.to_state(later)), later);
        // Before the resume point: the origin.
        assert_eq!(c.to_tokio(mqtt_state::Instant::from_millis(5)), c.origin);
    }
}
