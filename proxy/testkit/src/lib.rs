//! The test kit of dot-proxy (dev-only, never published): what the proxy's integration,
//! property and namespace tests and the fuzz target share.
//!
//! - [`dot`]: certificates made in the test (rcgen), a real in-process DNS-over-TLS
//!   upstream the test controls, a plain-DNS server, and the synthetic zone they answer;
//! - [`enc`]: DNS over HTTPS and DNS over QUIC servers that misbehave on demand;
//! - [`cluster_dns`]: a stand-in cluster DNS for search-path completion;
//! - [`kube`]: a fake Kubernetes API server listing a node's pods;
//! - [`exchange`]: fake servers behind the `Exchange` trait and a pipeline over them
//!   ([`Rig`]), for tests under paused time;
//! - [`proxy`]: the proxy started in-process on loopback, and test configs;
//! - [`client`]: queries, UDP and framed TCP clients, bounded load;
//! - [`metrics`]: the admin endpoint, samples, and waits on metrics (reloads);
//! - [`wait`]: the polling loop with a deadline that replaces fixed sleeps;
//! - [`fuzz`]: the fuzz and property-test harness (`fuzz/` runs it);
//! - [`skip`]: tests that need a tool or root, skipped locally and failed in CI.
//!
//! Everything but the module-specific pieces is re-exported at the top.

pub mod client;
pub mod cluster_dns;
pub mod command;
pub mod dot;
pub mod enc;
pub mod exchange;
pub mod fuzz;
pub mod kube;
pub mod metrics;
pub mod proxy;
pub mod skip;
pub mod wait;

pub use clap::Parser;
pub use client::*;
pub use command::run_ok;
pub use dot::*;
pub use exchange::{group, settle, FakeServer, Rig, CLIENT};
pub use metrics::*;
pub use proxy::*;
pub use wait::*;
