//! DNS wire-format helpers for the hot path.
//!
//! The proxy forwards raw bytes: it reads only the header, the question and the EDNS OPT
//! record of a query, and walks a response once (at cache insert) to find its TTLs. Full
//! message parsing (hickory-proto) is used where a message is built from scratch.

pub mod message;
pub mod svcb;
pub mod wire;

pub use wire::{QueryInfo, ResponseInfo, WireError};

/// Response codes the proxy itself sets.
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
}

/// Record types the proxy looks at.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const DNAME: u16 = 39;
    pub const OPT: u16 = 41;
    pub const DS: u16 = 43;
    pub const RRSIG: u16 = 46;
    pub const DNSKEY: u16 = 48;
    pub const SVCB: u16 = 64;
    pub const HTTPS: u16 = 65;
    pub const AXFR: u16 = 252;
    pub const IXFR: u16 = 251;
    pub const ANY: u16 = 255;
}

/// EDNS option codes.
pub mod opt {
    pub const ECS: u16 = 8;
    pub const COOKIE: u16 = 10;
    pub const TCP_KEEPALIVE: u16 = 11;
    pub const PADDING: u16 = 12;
}

/// The UDP payload size the proxy advertises (DNS flag day 2020).
pub const EDNS_UDP_SIZE: u16 = 1232;
/// Largest UDP answer ever sent to a client, whatever it advertises.
pub const MAX_UDP_ANSWER: usize = 4096;
