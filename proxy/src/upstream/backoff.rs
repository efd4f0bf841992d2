//! The connect backoff of the encrypted transports (DoT, DoH, DoQ): after a failed connect,
//! new ones to that server are refused for a short while (100 ms, doubling to 500 ms), so a
//! dead server costs one connect attempt per interval instead of one per query. Short and
//! capped on purpose: this is what limits connects to a dead server, and recovery must not
//! wait for it (the group keeps a down server out of use and probes it).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::stats::UpstreamErrorKind;
use super::stats::UpstreamStats;
use super::UpstreamError;

#[derive(Default)]
pub struct ConnectBackoff {
    /// Until when connects are refused, and the last interval.
    state: Mutex<(Option<Instant>, Duration)>,
}

impl ConnectBackoff {
    /// Err while in backoff after a failed connect.
    pub fn check(&self) -> Result<(), UpstreamError> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.is_some_and(|until| Instant::now() < until) {
            return Err(UpstreamError::Connect(
                "in backoff after a failed connect".into(),
            ));
        }
        Ok(())
    }

    pub fn succeeded(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (None, Duration::ZERO);
    }

    /// A connect failed: counted in `stats` (`tls` or `connect`), backoff extended; returns
    /// the error for the caller to pass on.
    pub fn failed(&self, stats: &UpstreamStats, e: UpstreamError) -> UpstreamError {
        stats.error(match e {
            UpstreamError::Tls(_) => UpstreamErrorKind::tls,
            _ => UpstreamErrorKind::connect,
        });
        self.extend();
        e
    }

    fn extend(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let next = (s.1 * 2).clamp(Duration::from_millis(100), Duration::from_millis(500));
        *s = (Some(Instant::now() + next), next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_to_half_a_second_and_clears_on_success() {
        let b = ConnectBackoff::default();
        assert!(b.check().is_ok());
        b.extend();
        assert!(b.check().is_err());
        tokio::time::advance(Duration::from_millis(101)).await;
        assert!(b.check().is_ok());
        b.extend();
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(b.check().is_err(), "200 ms the second time");
        b.extend();
        b.extend();
        b.extend();
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(b.check().is_err());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(b.check().is_ok(), "capped at 500 ms");
        b.extend();
        b.succeeded();
        assert!(b.check().is_ok());
    }
}
