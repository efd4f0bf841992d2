//! Integration tests: a real proxy on loopback against real in-process DoT upstreams.

// The test kit, under the names the tests were written with.
use dot_proxy_testkit as support;
use dot_proxy_testkit::{cluster_dns, skip};

mod cache;
mod cli;
mod completion;
mod core;
mod dnstap;
mod doh_doq;
mod failover;
mod groups;
mod hostile;
mod limits;
mod namespaces;
mod observability;
mod pipeline;
mod policy;
mod reload;
