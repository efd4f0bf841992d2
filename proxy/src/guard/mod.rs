//! The guard: what happens to a client packet before it may use the cache or an upstream.
//! Validation (header, question, EDNS) lives in `dns::wire::parse_query`; this module adds
//! per-client rate limiting.

/// CIDR parsing and the longest-prefix table live with the config schema (one parser).
pub use crate::config::cidr;
mod metrics;
pub mod ratelimit;

pub use metrics::{GuardMetrics, LimitedAction};
pub use ratelimit::{Decision, RateLimiter};
