//! The proxy's notion of "now" for TTLs, serve-stale, prefetch and rate limits: tokio's
//! clock plus an offset that tests can move forward, so time-dependent behaviour is tested
//! exactly without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicU64,
}

impl Clock {
    pub fn now(&self) -> Instant {
        self.at(Instant::now())
    }
    /// This clock's time at a real instant already read (one clock read serves a whole
    /// batch of datagrams).
    pub fn at(&self, real: Instant) -> Instant {
        real + Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }
    /// Moves this clock forward (tests).
    pub fn advance(&self, d: Duration) {
        self.offset_ms
            .fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }
}

/// The wall-clock time of `start`, a monotonic instant already read (query logs say when
/// a query arrived or was sent upstream).
pub fn arrived(start: Instant) -> std::time::SystemTime {
    std::time::SystemTime::now()
        .checked_sub(start.elapsed())
        .unwrap_or_else(std::time::SystemTime::now)
}
