//! Query logging with dnstap: protobuf messages (`proto`) over Frame Streams (`fstrm`) to
//! a collector on a Unix socket or TCP.
//!
//! Never in the way of answering: the query path hands an [`Event`] to a bounded queue with
//! `try_send` and moves on; when the queue is full (the collector slow, stalled or gone) the
//! message is dropped and counted (`dot_proxy_dnstap_dropped_total`). One writer task owns
//! the connection: it reconnects with backoff, does the handshake, encodes and writes in
//! batches, and gives a connection up when a write stalls. What a collector sends after the
//! handshake is read and ignored, so garbage cannot stall or crash anything.

pub mod fstrm;
pub mod proto;
mod writer;

#[cfg(test)]
use writer::encode;
use writer::{host_name, run, Header, Target};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::config::{Cidr, DnstapConfig};
use crate::dns::{rcode, wire::header};
use crate::metrics::Transport;
use proto::SocketProtocol;

/// Which exchange an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A client's query and the answer it got: CLIENT_QUERY and CLIENT_RESPONSE.
    Client,
    /// A query sent upstream and the answer (if any): FORWARDER_QUERY and _RESPONSE.
    Forwarder,
}

/// One exchange, as the query path hands it over: no allocation but the copy of a client's
/// messages (one buffer for both), and no encoding on the query path.
#[derive(Debug)]
pub struct Event {
    side: Side,
    protocol: SocketProtocol,
    /// The client, its address already cut to the configured prefix (None: not logged);
    /// None for a forwarder event.
    client: Option<(IpAddr, u16)>,
    /// The proxy's listening address, or the upstream server.
    server: SocketAddr,
    /// A client event's copied messages.
    own: Vec<u8>,
    query: Part,
    response: Part,
    query_time: SystemTime,
    response_time: SystemTime,
    /// Its bytes, charged to the memory budget's dnstap share until written (or dropped).
    charge: Option<crate::budget::Charge>,
}

/// What a queued event holds besides its messages (the event itself, the queue's slot).
const EVENT_OVERHEAD: usize = 256;

/// Where an event's DNS message is.
#[derive(Debug)]
enum Part {
    None,
    /// A range of the event's own buffer.
    Own(std::ops::Range<usize>),
    Shared(Bytes),
}

impl Event {
    fn part<'a>(&'a self, p: &'a Part) -> Option<&'a [u8]> {
        match p {
            Part::None => None,
            Part::Own(r) => self.own.get(r.clone()),
            Part::Shared(b) => Some(b),
        }
    }

    /// The bytes it holds while queued.
    fn held_bytes(&self) -> usize {
        let shared = |p: &Part| match p {
            Part::Shared(b) => b.len(),
            _ => 0,
        };
        EVENT_OVERHEAD + self.own.capacity() + shared(&self.query) + shared(&self.response)
    }

    fn messages(&self) -> u64 {
        u64::from(self.part(&self.query).is_some()) + u64::from(self.part(&self.response).is_some())
    }
}

/// Which messages are wanted, and how client addresses are cut.
#[derive(Clone, Debug)]
struct Filter {
    client_query: bool,
    client_response: bool,
    forwarder_query: bool,
    forwarder_response: bool,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    only_errors: bool,
    sample_rate: f64,
}

/// The query path's handle: cheap to call, never blocks.
pub struct Tap {
    tx: mpsc::Sender<Event>,
    /// The memory budget's dnstap share: the queue is bounded in bytes as well as events.
    share: Arc<crate::budget::Share>,
    filter: Filter,
    dropped: Counter,
    /// The config it was built from (a reload with the same section keeps the tap).
    cfg: DnstapConfig,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("cfg", &self.cfg).finish()
    }
}

/// What query logging counts of itself: messages written and dropped, and the collector
/// connection.
#[derive(Clone, Debug, Default)]
pub struct TapMetrics {
    written: Counter,
    dropped: Counter,
    connected: Gauge,
    connects: Counter,
}

impl TapMetrics {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "dnstap_messages",
            "dnstap messages written to the collector",
            self.written.clone(),
        );
        r.register(
            "dnstap_dropped",
            "dnstap messages dropped (queue full, collector slow, stalled or gone); queries are never held back",
            self.dropped.clone(),
        );
        r.register(
            "dnstap_connected",
            "1 while a dnstap collector connection is up (handshake done)",
            self.connected.clone(),
        );
        r.register(
            "dnstap_connects",
            "dnstap collector connections established (handshake done)",
            self.connects.clone(),
        );
    }
}

impl Tap {
    /// The tap a new config gets: `previous` (the running pipeline's, with its collector
    /// connection) while the section is unchanged; else a new writer task (on the current
    /// runtime) for an enabled section; None when dnstap is off.
    pub fn from_config(
        cfg: &DnstapConfig,
        previous: Option<&Arc<Tap>>,
        metrics: &TapMetrics,
        share: &Arc<crate::budget::Share>,
    ) -> Option<Arc<Tap>> {
        if let Some(t) = previous.filter(|t| t.cfg == *cfg) {
            return Some(t.clone());
        }
        if !cfg.enabled {
            return None;
        }
        let target = match (&cfg.socket, cfg.address) {
            (Some(p), _) => Target::Unix(p.clone()),
            (None, Some(a)) => Target::Tcp(a),
            (None, None) => return None,
        };
        let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
        let stats = metrics.clone();
        let identity = if cfg.identity.is_empty() {
            host_name()
        } else {
            cfg.identity.clone()
        };
        let version = if cfg.version.is_empty() {
            format!("dot-proxy {}", env!("CARGO_PKG_VERSION"))
        } else {
            cfg.version.clone()
        };
        let header = Header::new(&identity, &version);
        tokio::spawn(run(rx, target, header, stats.clone()));
        Some(Arc::new(Tap {
            tx,
            share: share.clone(),
            filter: Filter {
                client_query: cfg.client_query,
                client_response: cfg.client_response,
                forwarder_query: cfg.forwarder_query,
                forwarder_response: cfg.forwarder_response,
                ipv4_prefix: cfg.client_ipv4_prefix,
                ipv6_prefix: cfg.client_ipv6_prefix,
                only_errors: cfg.only_errors,
                sample_rate: cfg.sample_rate,
            },
            dropped: stats.dropped,
            cfg: cfg.clone(),
        }))
    }

    /// The section this tap was built from.
    pub fn config(&self) -> &DnstapConfig {
        &self.cfg
    }

    fn wanted(&self, side: Side, response: Option<&[u8]>) -> bool {
        let f = &self.filter;
        let kinds = match side {
            Side::Client => f.client_query || f.client_response,
            Side::Forwarder => f.forwarder_query || f.forwarder_response,
        };
        if !kinds {
            return false;
        }
        if f.only_errors {
            let error = response.is_some_and(|r| {
                r.len() >= 4
                    && matches!(
                        header::rcode(r),
                        rcode::SERVFAIL | rcode::REFUSED | rcode::NXDOMAIN
                    )
            });
            // A forwarder exchange without an answer (timeout, error) is a failure too.
            if !(error || (side == Side::Forwarder && response.is_none())) {
                return false;
            }
        }
        f.sample_rate >= 1.0 || rand::random::<f64>() < f.sample_rate
    }

    /// A client's query and the answer it got. `arrived` is when the query came in.
    pub fn client(
        &self,
        query: &[u8],
        answer: &[u8],
        client: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        arrived: SystemTime,
    ) {
        if !self.wanted(Side::Client, Some(answer)) {
            return;
        }
        let (q, r) = (self.filter.client_query, self.filter.client_response);
        let protocol = match transport {
            Transport::udp => SocketProtocol::Udp,
            Transport::tcp => SocketProtocol::Tcp,
        };
        // One allocation holds both messages.
        let mut own = Vec::with_capacity(query.len() + answer.len());
        let mut part = |wanted: bool, msg: &[u8]| {
            if !wanted {
                return Part::None;
            }
            let start = own.len();
            own.extend_from_slice(msg);
            Part::Own(start..own.len())
        };
        let query = part(q, query);
        let response = part(r, answer);
        self.send(Event {
            side: Side::Client,
            protocol,
            client: self.cut_ip(client.ip()).map(|a| (a, client.port())),
            server: local,
            own,
            query,
            response,
            query_time: arrived,
            response_time: SystemTime::now(),
            charge: None,
        });
    }

    /// A query sent to `server` and its answer (None: none came).
    pub fn forwarder(
        &self,
        query: &Bytes,
        answer: Option<&Bytes>,
        server: SocketAddr,
        protocol: SocketProtocol,
        sent: SystemTime,
    ) {
        if !self.wanted(Side::Forwarder, answer.map(|a| a.as_ref())) {
            return;
        }
        let shared = |wanted: bool, b: Option<&Bytes>| match b {
            Some(b) if wanted => Part::Shared(b.clone()),
            _ => Part::None,
        };
        self.send(Event {
            side: Side::Forwarder,
            protocol,
            client: None,
            server,
            own: Vec::new(),
            query: shared(self.filter.forwarder_query, Some(query)),
            response: shared(self.filter.forwarder_response, answer),
            query_time: sent,
            response_time: SystemTime::now(),
            charge: None,
        });
    }

    fn send(&self, mut ev: Event) {
        ev.charge = self.share.try_charge(ev.held_bytes());
        if ev.charge.is_none() {
            self.dropped.inc_by(ev.messages());
            return;
        }
        if let Err(e) = self.tx.try_send(ev) {
            let ev = match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            };
            self.dropped.inc_by(ev.messages());
        }
    }

    /// The client address cut to the configured prefix; None when the prefix is 0.
    fn cut_ip(&self, ip: IpAddr) -> Option<IpAddr> {
        cut_ip(ip, self.filter.ipv4_prefix, self.filter.ipv6_prefix)
    }
}

/// `ip` with the bits past the prefix cleared; None when the prefix is 0.
pub fn cut_ip(ip: IpAddr, v4: u8, v6: u8) -> Option<IpAddr> {
    let ip = match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
        a => a,
    };
    let len = if ip.is_ipv4() { v4 } else { v6 };
    if len == 0 {
        return None;
    }
    let c = Cidr::new(ip, len);
    Some(if c.v6 {
        IpAddr::from(c.net.to_be_bytes())
    } else {
        IpAddr::from((c.net as u32).to_be_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::proto::{DnstapType, MessageType, SocketFamily};
    use super::*;
    use prost::Message as _;
    use std::time::Duration;

    #[test]
    fn addresses_are_cut_to_the_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(cut_ip(ip("10.1.2.3"), 24, 56), Some(ip("10.1.2.0")));
        assert_eq!(cut_ip(ip("10.1.2.3"), 32, 56), Some(ip("10.1.2.3")));
        assert_eq!(cut_ip(ip("10.1.2.3"), 0, 56), None);
        let v6 = ip("2001:db8:aaaa:bbbb:cccc::1");
        assert_eq!(cut_ip(v6, 24, 56), Some(ip("2001:db8:aaaa:bb00::")));
        assert_eq!(cut_ip(v6, 24, 128), Some(v6));
        assert_eq!(cut_ip(ip("::ffff:10.1.2.3"), 24, 128), Some(ip("10.1.2.0")));
    }

    #[test]
    fn an_event_encodes_as_two_framed_messages() {
        let header = Header::new("node-a", "dot-proxy test");
        let ev = Event {
            side: Side::Client,
            protocol: SocketProtocol::Udp,
            client: Some(("10.0.0.0".parse().expect("ip"), 4242)),
            server: "169.254.20.10:53".parse().expect("addr"),
            own: b"queryanswer".to_vec(),
            query: Part::Own(0..5),
            response: Part::Own(5..11),
            query_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            response_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500),
            charge: None,
        };
        let mut out = Vec::new();
        assert_eq!(encode(&ev, &header, &mut out), 2);
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < out.len() {
            let len = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
            let d = proto::Dnstap::decode(&out[at + 4..at + 4 + len]).expect("decodes");
            assert_eq!(d.version.as_deref(), Some(&b"dot-proxy test"[..]));
            assert_eq!(d.r#type, DnstapType::Message as i32);
            assert_eq!(d.identity.as_deref(), Some(&b"node-a"[..]));
            let m = d.message.expect("message");
            assert_eq!(m.query_address.as_deref(), Some(&[10, 0, 0, 0][..]));
            assert_eq!(m.query_port, Some(4242));
            assert_eq!(m.response_port, Some(53));
            assert_eq!(m.response_address.as_deref(), Some(&[169, 254, 20, 10][..]));
            assert_eq!(m.socket_family, Some(SocketFamily::Inet as i32));
            assert_eq!(m.socket_protocol, Some(SocketProtocol::Udp as i32));
            assert_eq!(m.query_time_nsec, Some(0));
            assert_eq!(m.query_time_sec, Some(1_700_000_000));
            kinds.push(m.r#type);
            if m.r#type == MessageType::ClientResponse as i32 {
                assert_eq!(m.response_message.as_deref(), Some(&b"answer"[..]));
                assert_eq!(m.response_time_nsec, Some(500_000_000));
            } else {
                assert_eq!(m.query_message.as_deref(), Some(&b"query"[..]));
                assert!(m.response_message.is_none());
            }
            at += 4 + len;
        }
        assert_eq!(kinds, vec![5, 6]);
    }
}
