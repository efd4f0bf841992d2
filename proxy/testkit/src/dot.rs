//! A real in-process DNS-over-TLS upstream (tokio-rustls + hickory-proto) whose answers,
//! TTLs, delays and connection behaviour the test controls, certificates made in the test
//! (rcgen), a plain-DNS (UDP) server answering from the same zone, and the zone itself.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::TlsAcceptor;

use dot_proxy::config::UpstreamServer;

/// A CA and a server certificate for `upstream.test` / 127.0.0.1, made fresh per test.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    /// The CA's own certificate.
    pub ca_der: Vec<u8>,
    pub ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dot-proxy test CA");
        let ca_cert = params.self_signed(&ca_key).expect("ca cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
        let ca = rcgen::Issuer::new(params, ca_key);
        let (cert_der, key_der) = Self::issue(&ca, &["upstream.test", "127.0.0.1"]);
        Pki {
            dir,
            ca_file,
            cert_der,
            key_der,
            ca_der: ca_cert.der().to_vec(),
            ca,
        }
    }

    /// A new leaf (new key) for the given names, signed by this CA.
    pub fn issue(
        ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
        names: &[&str],
    ) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut sans = Vec::new();
        for n in names {
            sans.push(match IpAddr::from_str(n) {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName((*n).try_into().expect("dns name")),
            });
        }
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, ca).expect("leaf");
        (cert.der().to_vec(), key.serialize_der())
    }

    pub fn spki_pin(&self) -> dot_proxy::config::SpkiPin {
        dot_proxy::upstream::tls_config::spki_pin_of(&self.cert_der)
            .expect("pin")
            .parse()
            .expect("pin")
    }
}

/// How the upstream behaves; every field can change while it runs.
#[derive(Default)]
pub struct Behaviour {
    /// Delay before each answer, ms.
    pub delay_ms: AtomicU64,
    /// Accept connections but never answer.
    pub stall: AtomicBool,
    /// Close a connection after this many ms without a query (0 = never).
    pub idle_close_ms: AtomicU64,
    /// Close each connection after answering this many queries (0 = never).
    pub close_after: AtomicUsize,
    /// TTL of positive answers.
    pub ttl: AtomicU32,
    /// Answer SERVFAIL to everything.
    pub servfail: AtomicBool,
    /// Answer NXDOMAIN to everything (a name that went away).
    pub nxdomain: AtomicBool,
    /// edns-tcp-keepalive timeout to announce, in 100 ms units (0 = none).
    pub keepalive_units: AtomicU32,
    /// Set AA=1 on every answer, as an authoritative server would.
    pub authoritative: AtomicBool,
    /// Extra delay, ms, of answers to names whose first label starts with `slow`.
    pub slow_ms: AtomicU64,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub queries: AtomicUsize,
    pub connections: AtomicUsize,
    /// Connections this server has seen end (closed by either side, or dropped).
    pub closed: AtomicUsize,
    /// Raw query bytes as received (after the length prefix).
    pub raw: Mutex<Vec<Vec<u8>>>,
    pub behaviour: Behaviour,
    pub acceptor: Mutex<TlsAcceptor>,
    pub pki: Pki,
    /// TLS handshakes that resumed an earlier session.
    pub resumed: AtomicUsize,
    /// The accept loop, aborted (its listener closed) during an outage.
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Bumped to drop every open connection at once.
    kill: tokio::sync::watch::Sender<u64>,
}

fn acceptor(cert: &[u8], key: &[u8]) -> TlsAcceptor {
    chain_acceptor(&[cert.to_vec()], key)
}

/// A TLS acceptor presenting `chain` (leaf first, then whatever else the server sends).
fn chain_acceptor(chain: &[Vec<u8>], key: &[u8]) -> TlsAcceptor {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        chain
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.clone()))
            .collect(),
        rustls::pki_types::PrivateKeyDer::try_from(key.to_vec()).expect("key"),
    )
    .expect("server config");
    TlsAcceptor::from(Arc::new(cfg))
}

impl Upstream {
    pub async fn start() -> Arc<Upstream> {
        Self::start_with(Pki::new()).await
    }

    /// `N` upstreams, each with its own PKI: `let [a, b] = Upstream::start_n().await;`
    pub async fn start_n<const N: usize>() -> [Arc<Upstream>; N] {
        let mut ups = Vec::with_capacity(N);
        for _ in 0..N {
            ups.push(Self::start().await);
        }
        ups.try_into()
            .unwrap_or_else(|_| unreachable!("N upstreams"))
    }

    pub async fn start_with(pki: Pki) -> Arc<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let up = Arc::new(Upstream {
            addr: listener.local_addr().expect("addr"),
            queries: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            raw: Mutex::new(Vec::new()),
            behaviour: Behaviour {
                ttl: AtomicU32::new(300),
                ..Default::default()
            },
            acceptor: Mutex::new(acceptor(&pki.cert_der, &pki.key_der)),
            pki,
            resumed: AtomicUsize::new(0),
            accept_task: Mutex::new(None),
            kill: tokio::sync::watch::channel(0).0,
        });
        up.spawn_accept(listener);
        up
    }

    fn spawn_accept(self: &Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    break;
                };
                me.connections.fetch_add(1, Ordering::SeqCst);
                // As DNS servers do: answers written back to back are not held by Nagle.
                let _ = tcp.set_nodelay(true);
                let acc = me.acceptor.lock().expect("lock").clone();
                let me2 = me.clone();
                let ended = me.clone();
                let mut kill = me.kill.subscribe();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = async {
                            if let Ok(tls) = acc.accept(tcp).await {
                                if tls.get_ref().1.handshake_kind()
                                    == Some(rustls::HandshakeKind::Resumed)
                                {
                                    me2.resumed.fetch_add(1, Ordering::SeqCst);
                                }
                                me2.serve(tls).await;
                            }
                        } => {}
                        _ = kill.changed() => {}
                    }
                    ended.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        *self.accept_task.lock().expect("lock") = Some(task);
    }

    /// The server goes away: its listening socket closes (connects are refused) and every
    /// open connection is dropped.
    pub fn go_down(&self) {
        if let Some(t) = self.accept_task.lock().expect("lock").take() {
            t.abort();
        }
        self.kill.send_modify(|g| *g += 1);
    }

    /// The server is back on the same address.
    pub async fn come_back(self: &Arc<Self>) {
        let l = crate::wait::eventually(
            &format!("{} bound again", self.addr),
            Duration::from_secs(1),
            || async { TcpListener::bind(self.addr).await.ok() },
        )
        .await;
        self.spawn_accept(l);
    }

    /// Serves a given certificate and key from now on (key rotation).
    pub fn set_cert(&self, cert: &[u8], key: &[u8]) {
        *self.acceptor.lock().expect("lock") = acceptor(cert, key);
    }

    /// Serves a leaf followed by other certificates (an intermediate, or any certificate a
    /// rogue server sends along).
    pub fn set_chain(&self, chain: &[Vec<u8>], key: &[u8]) {
        *self.acceptor.lock().expect("lock") = chain_acceptor(chain, key);
    }

    /// Replaces the server key and certificate (key rotation); returns the new SPKI pin.
    pub fn rotate_key(&self) -> String {
        let (cert, key) = Pki::issue(&self.pki.ca, &["upstream.test", "127.0.0.1"]);
        *self.acceptor.lock().expect("lock") = acceptor(&cert, &key);
        dot_proxy::upstream::tls_config::spki_pin_of(&cert).expect("pin")
    }

    async fn serve(self: Arc<Self>, tls: tokio_rustls::server::TlsStream<TcpStream>) {
        let (mut rd, wr) = tokio::io::split(tls);
        let wr = Arc::new(tokio::sync::Mutex::new(wr));
        let mut answered = 0usize;
        let mut writes = tokio::task::JoinSet::new();
        loop {
            let idle = self.behaviour.idle_close_ms.load(Ordering::SeqCst);
            let read = async {
                let len = rd.read_u16().await? as usize;
                let mut buf = vec![0u8; len];
                rd.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            };
            let buf = if idle > 0 {
                match tokio::time::timeout(Duration::from_millis(idle), read).await {
                    Ok(Ok(b)) => b,
                    _ => break,
                }
            } else {
                match read.await {
                    Ok(b) => b,
                    Err(_) => break,
                }
            };
            self.queries.fetch_add(1, Ordering::SeqCst);
            self.raw.lock().expect("lock").push(buf.clone());
            if self.behaviour.stall.load(Ordering::SeqCst) {
                continue;
            }
            let Some(resp) = self.answer(&buf) else {
                continue;
            };
            let slow_name = buf.get(13..17) == Some(b"slow".as_slice());
            let delay = self.behaviour.delay_ms.load(Ordering::SeqCst)
                + if slow_name {
                    self.behaviour.slow_ms.load(Ordering::SeqCst)
                } else {
                    0
                };
            let wr2 = wr.clone();
            let write = async move {
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let mut w = wr2.lock().await;
                let mut frame = (resp.len() as u16).to_be_bytes().to_vec();
                frame.extend_from_slice(&resp);
                let _ = w.write_all(&frame).await;
                let _ = w.flush().await;
            };
            answered += 1;
            let close_after = self.behaviour.close_after.load(Ordering::SeqCst);
            if close_after > 0 && answered >= close_after {
                writes.spawn(write);
                break;
            }
            // Answers go out as each is ready: out of order when delays differ.
            writes.spawn(write);
        }
        while writes.join_next().await.is_some() {}
        let mut w = wr.lock().await;
        let _ = w.shutdown().await;
    }

    /// [`zone_answer`] with this server's behaviour.
    pub fn answer(&self, raw: &[u8]) -> Option<Vec<u8>> {
        zone_answer(&self.behaviour, raw)
    }

    pub fn server(&self) -> UpstreamServer {
        let mut s = UpstreamServer::tls(self.addr, "upstream.test");
        s.ca_file = Some(self.pki.ca_file.clone());
        s
    }

    /// A plain-DNS (UDP) server on loopback answering from the same synthetic zone;
    /// returns its address and a counter of the queries it got.
    pub async fn plain_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind plain");
        let addr = sock.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let zone = Upstream::start_with(Pki::new()).await;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                c.fetch_add(1, Ordering::SeqCst);
                // Names under cluster.local answer as if under example.test.
                if let Ok(mut m) = Message::from_vec(&buf[..n]) {
                    if let Some(q) = m.queries.first_mut() {
                        let orig = q.name().clone();
                        let text = orig.to_ascii().replace("cluster.local.", "example.test.");
                        q.set_name(Name::from_ascii(&text).expect("name"));
                        if let Some(resp) = m.to_vec().ok().and_then(|raw| zone.answer(&raw)) {
                            if let Ok(mut r) = Message::from_vec(&resp) {
                                for rec in r.answers.iter_mut() {
                                    rec.name = orig.clone();
                                }
                                if let Some(q) = r.queries.first_mut() {
                                    q.set_name(orig.clone());
                                }
                                if let Ok(b) = r.to_vec() {
                                    let _ = sock.send_to(&b, peer).await;
                                }
                            }
                        }
                    }
                }
            }
        });
        (addr, count)
    }

    /// Waits (at most 5 s) until every connection accepted so far has ended (new ones may
    /// open meanwhile).
    pub async fn wait_closed(&self, what: &str) {
        let used = self.connections.load(Ordering::SeqCst);
        crate::wait::until(what, Duration::from_secs(5), || async {
            self.closed.load(Ordering::SeqCst) >= used
        })
        .await;
    }

    pub fn query_count(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The SOA record of `apex` (for the authority section of negative answers): `ttl`, and
/// `minimum` the negative-caching TTL; its names are `ns.` and `hostmaster.` under the apex.
pub fn soa(apex: &Name, ttl: u32, minimum: u32) -> Record {
    let under = |label: &str| Name::from_labels([label]).and_then(|l| l.append_domain(apex));
    let soa = SOA::new(
        under("ns").expect("name"),
        under("hostmaster").expect("name"),
        1,
        7200,
        1800,
        86400,
        minimum,
    );
    Record::from_rdata(apex.clone(), ttl, RData::SOA(soa))
}

/// The synthetic zone:
/// - `nx*.example.test` and names outside `example.test`: NXDOMAIN with SOA (TTL 60, minimum 30)
/// - `nodata.example.test`: NOERROR, no answer, SOA
/// - `big.example.test TXT`: an answer of about 3000 bytes
/// - `ttl<N>.example.test`: A with TTL N
/// - other names under `example.test`: A 192.0.2.1 with the behaviour's TTL; AAAA: NODATA
pub fn zone_answer(behaviour: &Behaviour, raw: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(raw).ok()?;
    let query = q.queries.first()?.clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = q.metadata.checking_disabled;
    m.metadata.authoritative = behaviour.authoritative.load(Ordering::SeqCst);
    m.add_query(query.clone());
    if let Some(e) = &q.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(e.flags().dnssec_ok);
        let units = behaviour.keepalive_units.load(Ordering::SeqCst);
        if units > 0 {
            edns.options_mut()
                .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                    11,
                    (units as u16).to_be_bytes().to_vec(),
                ));
        }
        m.set_edns(edns);
    }
    if behaviour.servfail.load(Ordering::SeqCst) {
        m.metadata.response_code = ResponseCode::ServFail;
        return m.to_vec().ok();
    }
    let name = query.name().to_lowercase();
    let text = name.to_ascii();
    let zone = Name::from_ascii("example.test.").ok()?;
    let soa = soa(&zone, 60, 30);
    let first = text.split('.').next().unwrap_or("");
    if !zone.zone_of(&name) || first.starts_with("nx") || behaviour.nxdomain.load(Ordering::SeqCst)
    {
        m.metadata.response_code = ResponseCode::NXDomain;
        m.add_authority(soa);
    } else if first == "nodata" {
        m.add_authority(soa);
    } else if first == "big" && query.query_type() == RecordType::TXT {
        for i in 0..12 {
            let s = format!("{i:02}-{}", "x".repeat(240));
            m.add_answer(Record::from_rdata(
                query.name().clone(),
                300,
                RData::TXT(TXT::new(vec![s])),
            ));
        }
    } else if first.starts_with("multi")
        && matches!(query.query_type(), RecordType::A | RecordType::AAAA)
    {
        // Four addresses, in a fixed order: the cache's rotation shows in the order.
        for i in 1..=4u8 {
            let rdata = if query.query_type() == RecordType::A {
                RData::A(A::new(192, 0, 2, i))
            } else {
                RData::AAAA(hickory_proto::rr::rdata::AAAA::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    u16::from(i),
                ))
            };
            m.add_answer(Record::from_rdata(query.name().clone(), 300, rdata));
        }
    } else if query.query_type() == RecordType::A {
        let ttl = first
            .strip_prefix("ttl")
            .and_then(|n| n.parse().ok())
            .unwrap_or(behaviour.ttl.load(Ordering::SeqCst));
        m.add_answer(Record::from_rdata(
            query.name().clone(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
    } else if query.query_type() == RecordType::HTTPS {
        // Both address hints, so filter_aaaa's removal of the IPv6 one can be seen.
        m.add_answer(dot_proxy::test_util::https_with_both_hints(
            query.name().clone(),
            300,
        ));
    } else {
        m.add_authority(soa);
    }
    m.to_vec().ok()
}
