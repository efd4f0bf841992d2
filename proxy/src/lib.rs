//! dot-proxy: a node-local DNS resolver. Plain DNS in over UDP and TCP, answers from a
//! cache, or forwarded over DNS-over-TLS (RFC 7858) to upstream resolvers.
//!
//! A query's path: [`listener`] -> guard ([`dns::wire::parse_query`], [`guard`]) ->
//! [`policy`] -> [`cache`] (a miss becomes one [`pipeline::Request`]) -> [`route`] ->
//! [`upstream`] group -> TLS connection -> back. [`pipeline`] ties those steps together;
//! each part builds itself from its config section ([`config`], the `dot-proxy-config`
//! crate); [`server`] assembles them and swaps them on reload.
#![forbid(unsafe_code)]

pub mod admin;
pub mod budget;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod completion;
pub mod config;
pub mod dns;
pub mod dnstap;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod kubernetes;
pub mod listener;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod netsetup;
pub mod pipeline;
pub mod policy;
pub mod reload;
pub mod route;
pub mod server;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod test_util;
pub mod upstream;
