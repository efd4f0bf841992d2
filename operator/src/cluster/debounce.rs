//! Batching bursts of pod churn into one publish.

use std::time::Duration;

use tokio::time::Instant;

/// Trailing-edge debounce with a ceiling.
///
/// A change arms it; each further change pushes the deadline to `quiet` after the latest
/// change, but never past `max_delay` after the first unpublished one. So a burst of hundreds
/// of pod events becomes one publish `quiet` after the burst ends, and steady churn still
/// publishes at least every `max_delay`.
#[derive(Clone, Debug)]
pub struct Debouncer {
    quiet: Duration,
    max_delay: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debouncer {
    pub fn new(quiet: Duration, max_delay: Duration) -> Self {
        Debouncer {
            quiet,
            max_delay: max_delay.max(quiet),
            first: None,
            last: None,
        }
    }

    /// Records a change seen at `now`.
    pub fn changed(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When to publish; `None` when nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max_delay))
    }

    /// True when a publish is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| d <= now)
    }

    /// Marks the pending changes as published.
    pub fn reset(&mut self) {
        self.first = None;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut d = Debouncer::new(2 * s, 10 * s);
        assert_eq!(d.deadline(), None);
        d.changed(t0);
        assert_eq!(d.deadline(), Some(t0 + 2 * s));
        d.changed(t0 + s);
        assert_eq!(d.deadline(), Some(t0 + 3 * s));
        assert!(!d.due(t0 + 2 * s));
        assert!(d.due(t0 + 3 * s));
        // Steady churn: a change every second never leaves 2s of quiet, yet 10s after the
        // first change the publish happens anyway.
        for i in 2..20 {
            d.changed(t0 + i * s);
        }
        assert_eq!(d.deadline(), Some(t0 + 10 * s));
        d.reset();
        assert_eq!(d.deadline(), None);
        assert!(!d.due(t0 + 100 * s));
    }
}
