//! DNS over HTTPS and DNS over QUIC servers in process (hyper's HTTP/2 server and quinn,
//! both on rustls) that answer from the test zone and misbehave on demand, in each way
//! RFC 8484 and RFC 9250 leave open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::dot::{zone_answer, Behaviour, Pki};
use dot_proxy::config::{Protocol, UpstreamServer};

/// How a test server misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Good = 0,
    /// HTTP 500 (DoH) to every query.
    Status500,
    /// 200 with `content-type: text/html` (DoH).
    WrongType,
    /// A body of 70,000 bytes (DoH).
    Oversize,
    /// The DNS message cut in half (DoH body, DoQ stream).
    Truncated,
    /// The stream reset instead of an answer (DoH RST_STREAM, DoQ RESET_STREAM).
    Reset,
    /// GOAWAY after every second request on a connection (DoH).
    GoawayEvery2,
    /// A length prefix that does not match the message (DoQ).
    BadLength,
    /// Never answers (the stream stays open).
    Stall,
}

pub struct EncServer {
    pub addr: SocketAddr,
    pub pki: Pki,
    pub queries: AtomicUsize,
    pub connections: AtomicUsize,
    /// DoQ: streams the server could open towards the proxy (RFC 9250 servers open none,
    /// and the proxy allows none).
    pub server_opened: AtomicUsize,
    /// DoQ: connections on which the server has finished trying to open those streams.
    pub server_tried: AtomicUsize,
    /// Message IDs as they arrived on the wire.
    pub ids: Mutex<Vec<u16>>,
    mode: AtomicU8,
    pub behaviour: Behaviour,
    /// DoH: the connections open now stop being served at all (no frame read, no PING
    /// acknowledged, the TCP connection left open): a path that went dark.
    pub freeze: tokio::sync::Notify,
    /// DoH: the connections open now are closed at once, their streams unanswered.
    pub close_all: tokio::sync::Notify,
}

impl EncServer {
    fn new(addr: SocketAddr, pki: Pki, mode: Mode) -> EncServer {
        EncServer {
            addr,
            pki,
            queries: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            server_opened: AtomicUsize::new(0),
            server_tried: AtomicUsize::new(0),
            ids: Mutex::new(Vec::new()),
            mode: AtomicU8::new(mode as u8),
            behaviour: Behaviour {
                ttl: AtomicU32::new(300),
                ..Default::default()
            },
            freeze: tokio::sync::Notify::new(),
            close_all: tokio::sync::Notify::new(),
        }
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Status500,
            2 => Mode::WrongType,
            3 => Mode::Oversize,
            4 => Mode::Truncated,
            5 => Mode::Reset,
            6 => Mode::GoawayEvery2,
            7 => Mode::BadLength,
            8 => Mode::Stall,
            _ => Mode::Good,
        }
    }

    /// Records the query and answers it from the test zone.
    fn answer(&self, raw: &[u8]) -> Option<Vec<u8>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if raw.len() >= 2 {
            self.ids
                .lock()
                .expect("lock")
                .push(u16::from_be_bytes([raw[0], raw[1]]));
        }
        zone_answer(&self.behaviour, raw)
    }

    pub fn server(&self, protocol: Protocol) -> UpstreamServer {
        let mut s = UpstreamServer::encrypted(protocol, self.addr, "upstream.test");
        s.ca_file = Some(self.pki.ca_file.clone());
        s
    }

    fn tls_config(&self, alpn: &[u8]) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(
                self.pki.cert_der.clone(),
            )],
            rustls::pki_types::PrivateKeyDer::try_from(self.pki.key_der.clone()).expect("key"),
        )
        .expect("server config");
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg
    }
}

// ------------------------------------------------------------------ DoH

/// A DoH server for `Protocol::Https`, a DoQ one otherwise.
pub async fn enc_server(protocol: Protocol, mode: Mode) -> Arc<EncServer> {
    match protocol {
        Protocol::Https => doh_server(mode).await,
        _ => doq_server(mode).await,
    }
}

pub async fn doh_server(mode: Mode) -> Arc<EncServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let me = Arc::new(EncServer::new(
        listener.local_addr().expect("addr"),
        Pki::new(),
        mode,
    ));
    let acceptor = TlsAcceptor::from(Arc::new(me.tls_config(b"h2")));
    let server = me.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            server.connections.fetch_add(1, Ordering::SeqCst);
            let _ = tcp.set_nodelay(true);
            let (acceptor, server) = (acceptor.clone(), server.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                serve_h2(server, tls).await;
            });
        }
    });
    me
}

async fn serve_h2(
    server: Arc<EncServer>,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) {
    let per_conn = Arc::new(AtomicUsize::new(0));
    let goaway = Arc::new(tokio::sync::Notify::new());
    let svc = {
        let (server, per_conn, goaway) = (server.clone(), per_conn.clone(), goaway.clone());
        service_fn(move |req: Request<Incoming>| {
            let (server, per_conn, goaway) = (server.clone(), per_conn.clone(), goaway.clone());
            async move { doh_handle(&server, &per_conn, &goaway, req).await }
        })
    };
    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    let mut conn = std::pin::pin!(conn);
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = goaway.notified() => conn.as_mut().graceful_shutdown(),
            _ = server.close_all.notified() => break,
            _ = server.freeze.notified() => {
                // Kept, never polled again: the socket stays open and silent.
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn doh_handle(
    server: &EncServer,
    per_conn: &AtomicUsize,
    goaway: &tokio::sync::Notify,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let reply = |status: u16, ctype: &str, body: Vec<u8>| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", ctype)
            // Must not shorten what the cache keeps (RFC 8484 §5.1: TTLs rule).
            .header("cache-control", "max-age=0")
            .body(Full::new(Bytes::from(body)))
            .expect("response"))
    };
    if req.method() != hyper::Method::POST
        || req.uri().path() != "/dns-query"
        || req.headers().get("content-type").map(|v| v.as_bytes())
            != Some(b"application/dns-message")
    {
        return reply(
            415,
            "text/plain",
            b"POST application/dns-message to /dns-query".to_vec(),
        );
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .to_bytes();
    let Some(answer) = server.answer(&body) else {
        return reply(400, "text/plain", Vec::new());
    };
    let n = per_conn.fetch_add(1, Ordering::SeqCst) + 1;
    match server.mode() {
        Mode::Status500 => reply(500, "text/plain", b"oops".to_vec()),
        Mode::WrongType => reply(200, "text/html", answer),
        Mode::Oversize => reply(200, "application/dns-message", vec![0u8; 70_000]),
        Mode::Truncated => reply(
            200,
            "application/dns-message",
            answer[..answer.len() / 2].to_vec(),
        ),
        Mode::Reset => Err(std::io::Error::other("reset")),
        Mode::Stall => std::future::pending().await,
        Mode::GoawayEvery2 => {
            if n.is_multiple_of(2) {
                goaway.notify_one();
            }
            reply(200, "application/dns-message", answer)
        }
        _ => reply(200, "application/dns-message", answer),
    }
}

// ------------------------------------------------------------------ DoQ

pub async fn doq_server(mode: Mode) -> Arc<EncServer> {
    let pki = Pki::new();
    let holder = EncServer::new("127.0.0.1:0".parse().expect("addr"), pki, mode);
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(holder.tls_config(b"doq"))
        .expect("QUIC server config");
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("QUIC endpoint");
    let me = Arc::new(EncServer {
        addr: endpoint.local_addr().expect("addr"),
        ..holder
    });
    let server = me.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else {
                    return;
                };
                server.connections.fetch_add(1, Ordering::SeqCst);
                // A hostile server would open streams of its own: try both kinds.
                {
                    let (server, conn) = (server.clone(), conn.clone());
                    tokio::spawn(async move {
                        let wait = std::time::Duration::from_millis(300);
                        if let Ok(Ok(_)) = tokio::time::timeout(wait, conn.open_bi()).await {
                            server.server_opened.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Ok(Ok(_)) = tokio::time::timeout(wait, conn.open_uni()).await {
                            server.server_opened.fetch_add(1, Ordering::SeqCst);
                        }
                        server.server_tried.fetch_add(1, Ordering::SeqCst);
                    });
                }
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let server = server.clone();
                    tokio::spawn(async move {
                        let Ok(q) = recv.read_to_end(65_537).await else {
                            return;
                        };
                        let len = q
                            .get(..2)
                            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
                        if len != Some(q.len().saturating_sub(2)) {
                            let _ = send.reset(1u8.into());
                            return;
                        }
                        let Some(answer) = server.answer(&q[2..]) else {
                            let _ = send.reset(1u8.into());
                            return;
                        };
                        let mut out = (answer.len() as u16).to_be_bytes().to_vec();
                        match server.mode() {
                            Mode::Reset => {
                                let _ = send.reset(2u8.into());
                                return;
                            }
                            Mode::Truncated => out.extend_from_slice(&answer[..answer.len() / 2]),
                            Mode::Stall => std::future::pending().await,
                            Mode::BadLength => {
                                out = ((answer.len() + 7) as u16).to_be_bytes().to_vec();
                                out.extend_from_slice(&answer);
                            }
                            _ => out.extend_from_slice(&answer),
                        }
                        let _ = send.write_all(&out).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    me
}
