//! Integration tests: a real proxy on loopback against real in-process DoT upstreams.

#[path = "../common/cluster_dns.rs"]
mod cluster_dns;
#[path = "../common/skip.rs"]
mod skip;
mod support;

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
mod observability;
mod policy;
mod reload;
