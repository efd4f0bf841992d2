//! Smoothed round-trip time of one server (RFC 6298's estimator: SRTT and RTTVAR with
//! gains 1/8 and 1/4), from which the time to wait before asking another server comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Rtt {
    /// Smoothed RTT in microseconds (0 = no sample yet).
    srtt_us: AtomicU64,
    /// Smoothed mean deviation in microseconds.
    rttvar_us: AtomicU64,
}

impl Rtt {
    /// Adds one sample. Concurrent updates may lose one; the estimate stays sane.
    pub fn observe(&self, sample: Duration) {
        let r = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
        let srtt = self.srtt_us.load(Ordering::Relaxed);
        if srtt == 0 {
            self.srtt_us.store(r, Ordering::Relaxed);
            self.rttvar_us.store(r / 2, Ordering::Relaxed);
            return;
        }
        let var = self.rttvar_us.load(Ordering::Relaxed);
        let new_var = (var.saturating_mul(3) + srtt.abs_diff(r)) / 4;
        let new_srtt = (srtt.saturating_mul(7) + r) / 8;
        self.rttvar_us.store(new_var, Ordering::Relaxed);
        self.srtt_us.store(new_srtt.max(1), Ordering::Relaxed);
    }

    /// The smoothed RTT in microseconds, 0 before any sample (sorts first under `fastest`,
    /// so a new server gets measured).
    pub fn srtt_us(&self) -> u64 {
        self.srtt_us.load(Ordering::Relaxed)
    }

    /// SRTT + 4·RTTVAR (RFC 6298's RTO), `initial` before any sample, kept within
    /// `[min, max]` (`max` wins when they cross).
    pub fn timeout(&self, initial: Duration, min: Duration, max: Duration) -> Duration {
        let srtt = self.srtt_us.load(Ordering::Relaxed);
        let t = if srtt == 0 {
            initial
        } else {
            let var = self.rttvar_us.load(Ordering::Relaxed);
            Duration::from_micros(srtt.saturating_add(var.saturating_mul(4)))
        };
        t.max(min).min(max)
    }

    /// Forgets the samples (a server back from being down starts afresh).
    pub fn reset(&self) {
        self.srtt_us.store(0, Ordering::Relaxed);
        self.rttvar_us.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn timeout_follows_the_samples_within_bounds() {
        let r = Rtt::default();
        assert_eq!(r.timeout(400 * MS, 100 * MS, 1000 * MS), 400 * MS);
        r.observe(10 * MS);
        // 10 + 4 * 5 = 30 ms, raised to the floor.
        assert_eq!(r.timeout(400 * MS, 100 * MS, 1000 * MS), 100 * MS);
        for _ in 0..50 {
            r.observe(300 * MS);
        }
        let t = r.timeout(400 * MS, 100 * MS, 1000 * MS);
        assert!(t > 300 * MS && t < 400 * MS, "{t:?}");
        for _ in 0..50 {
            r.observe(5000 * MS);
        }
        assert_eq!(r.timeout(400 * MS, 100 * MS, 1000 * MS), 1000 * MS);
        // Crossed bounds (a group timeout below twice the floor): the ceiling wins.
        assert_eq!(r.timeout(400 * MS, 100 * MS, 60 * MS), 60 * MS);
        r.reset();
        assert_eq!(r.srtt_us(), 0);
    }

    #[test]
    fn jitter_widens_the_timeout() {
        let steady = Rtt::default();
        let jittery = Rtt::default();
        for i in 0..40 {
            steady.observe(50 * MS);
            jittery.observe(if i % 2 == 0 { 10 * MS } else { 90 * MS });
        }
        let max = Duration::from_secs(10);
        assert!(jittery.timeout(MS, MS, max) > steady.timeout(MS, MS, max));
    }
}
