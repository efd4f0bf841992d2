//! dnstap: real collectors (fstrm_capture over a Unix socket and TCP), decoded by
//! dnstap-read; collectors that are absent, stop reading, or send garbage and close.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A scratch directory for a test that needs the collector tools, or None after a skip (a
/// failure in CI) when they are missing.
/// [`scratch`], with a collector on the Unix socket `tap.sock` in it, writing to `out.fstrm`.
/// Turns the tap on in `cfg`, writing to the collector on `sock`.
fn tap_to(cfg: &mut dot_proxy::config::Config, sock: &Path) {
    cfg.dnstap.enabled = true;
    cfg.dnstap.socket = Some(sock.to_path_buf());
}

fn unix_tap(test: &str) -> Option<(tempfile::TempDir, PathBuf, Capture)> {
    let dir = scratch(test)?;
    let sock = dir.path().join("tap.sock");
    let cap = Capture::unix(&sock, &dir.path().join("out.fstrm"));
    Some((dir, sock, cap))
}

fn scratch(test: &str) -> Option<tempfile::TempDir> {
    for t in ["fstrm_capture", "dnstap-read"] {
        if !have(t) {
            crate::skip::skip(
                test,
                &format!("{t} is not installed (fstrm-bin, bind9-dnsutils)"),
            );
            return None;
        }
    }
    Some(tempfile::tempdir().expect("tmp"))
}

/// fstrm_capture writing to `out`, listening on a Unix socket or TCP.
struct Capture {
    child: Child,
    out: PathBuf,
}

impl Capture {
    fn start(listen: &[&str], out: &Path) -> Capture {
        let child = Command::new("fstrm_capture")
            .args(["-t", "protobuf:dnstap.Dnstap"])
            .args(listen)
            .args(["-w", out.to_str().expect("path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fstrm_capture starts");
        Capture {
            child,
            out: out.to_path_buf(),
        }
    }

    /// A capture on a Unix socket at `sock`, listening once this returns.
    fn unix(sock: &Path, out: &Path) -> Capture {
        let cap = Capture::start(&["-u", sock.to_str().expect("path")], out);
        wait_path(sock);
        cap
    }

    /// Stops the capture (it closes its file cleanly on SIGINT) and decodes what it
    /// wrote with dnstap-read (one YAML document per message), and with the proxy's own
    /// schema (for what Debian's dnstap-read cannot show: it prints DOT as UDP).
    fn finish(
        mut self,
    ) -> (
        Vec<serde_yaml_like::Doc>,
        Vec<dot_proxy::dnstap::proto::Message>,
    ) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        within_blocking(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        let out = run_ok(Command::new("dnstap-read").arg("-y").arg(&self.out));
        let raw = std::fs::read(&self.out).expect("capture file");
        (
            serde_yaml_like::docs(&String::from_utf8_lossy(&out.stdout)),
            frames(&raw),
        )
    }
}

/// The dnstap messages of a Frame Streams file: a control frame (START), data frames,
/// a control frame (STOP).
fn frames(raw: &[u8]) -> Vec<dot_proxy::dnstap::proto::Message> {
    use prost::Message as _;
    let u32_at = |at: usize| {
        raw.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(len) = u32_at(at) {
        if len == 0 {
            // A control frame: skip it.
            at += 8 + u32_at(at + 4).unwrap_or(0);
            continue;
        }
        let d = dot_proxy::dnstap::proto::Dnstap::decode(&raw[at + 4..at + 4 + len])
            .expect("a dnstap message");
        out.extend(d.message);
        at += 4 + len;
    }
    out
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Just enough of dnstap-read's YAML: each document's `key: value` lines, flattened.
mod serde_yaml_like {
    pub type Doc = Vec<(String, String)>;

    pub fn docs(text: &str) -> Vec<Doc> {
        text.split("\n---")
            .map(|d| {
                d.lines()
                    .map(|l| match l.trim().split_once(": ") {
                        Some((k, v)) => {
                            (k.trim().to_string(), v.trim().trim_matches('"').to_string())
                        }
                        // The decoded DNS message's own lines (the question, records).
                        None => (l.trim().to_string(), String::new()),
                    })
                    .collect::<Doc>()
            })
            .filter(|d: &Doc| !d.is_empty())
            .collect()
    }

    pub fn get<'a>(d: &'a Doc, key: &str) -> Option<&'a str> {
        d.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The message's type (the document's own `type` is MESSAGE).
    pub fn kind(d: &Doc) -> &str {
        d.iter()
            .find(|(k, v)| k == "type" && v != "MESSAGE")
            .map_or("", |(_, v)| v.as_str())
    }
}
use serde_yaml_like::{get, kind};

async fn wait_for<F: Fn(&str) -> bool>(p: &Proxy, what: &str, ok: F) -> String {
    eventually(what, Duration::from_secs(10), || async {
        let m = p.metrics().await;
        ok(&m).then_some(m)
    })
    .await
}

fn wait_path(p: &Path) {
    until_blocking(
        &format!("{} appears", p.display()),
        Duration::from_secs(5),
        || p.exists(),
    );
}

/// A proxy started with `cfg` and a tap on a capture in `dir` asks `name` once (a miss):
/// the forwarder messages it logged.
async fn forwarded_once(
    dir: &Path,
    tag: &str,
    mut cfg: dot_proxy::config::Config,
    name: &str,
) -> Vec<dot_proxy::dnstap::proto::Message> {
    let sock = dir.join(format!("{tag}.sock"));
    let cap = Capture::unix(&sock, &dir.join(format!("{tag}.fstrm")));
    tap_to(&mut cfg, &sock);
    let p = Proxy::start(cfg).await;
    wait_connected(&p).await;
    let m = p.ask(name).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{tag}");
    wait_for(&p, "four messages written", |m| {
        metric(m, "dot_proxy_dnstap_messages_total") >= 4.0
    })
    .await;
    let (_docs, raw) = cap.finish();
    forwarder_messages(&raw).into_iter().cloned().collect()
}

/// A query and its answer, both logged with `protocol` and the server's `port`.
fn assert_forwarded(
    logged: &[dot_proxy::dnstap::proto::Message],
    protocol: dot_proxy::dnstap::proto::SocketProtocol,
    port: u16,
) {
    assert_eq!(logged.len(), 2, "{protocol:?}: {logged:?}");
    for m in logged {
        assert_eq!(m.socket_protocol, Some(protocol as i32), "{m:?}");
        assert_eq!(m.response_port, Some(u32::from(port)), "{m:?}");
    }
}

/// Waits until the proxy's tap is connected to its collector.
async fn wait_connected(p: &Proxy) {
    wait_for(p, "connect", |m| {
        metric(m, "dot_proxy_dnstap_connected ") == 1.0
    })
    .await;
}

/// The FORWARDER_QUERY and FORWARDER_RESPONSE messages of a capture, read with the schema.
fn forwarder_messages(
    raw: &[dot_proxy::dnstap::proto::Message],
) -> Vec<&dot_proxy::dnstap::proto::Message> {
    use dot_proxy::dnstap::proto::MessageType;
    raw.iter()
        .filter(|m| {
            m.r#type == MessageType::ForwarderQuery as i32
                || m.r#type == MessageType::ForwarderResponse as i32
        })
        .collect()
}

#[tokio::test]
async fn unix_socket_collector_gets_client_and_forwarder_messages() {
    let Some((_dir, sock, cap)) =
        unix_tap("unix_socket_collector_gets_client_and_forwarder_messages")
    else {
        return;
    };
    let (up, p) = start_with(|cfg| {
        tap_to(cfg, &sock);
        cfg.dnstap.identity = "node-a".into();
    })
    .await;
    wait_connected(&p).await;
    // A miss (client pair and forwarder pair), then a hit (client pair only).
    for _ in 0..2 {
        p.assert_rcode("tap.example.test.", ResponseCode::NoError)
            .await;
    }
    let m = wait_for(&p, "six messages written", |m| {
        metric(m, "dot_proxy_dnstap_messages_total") >= 6.0
    })
    .await;
    assert_eq!(metric(&m, "dot_proxy_dnstap_dropped_total"), 0.0);
    assert_eq!(up.query_count(), 1);
    let (docs, raw) = cap.finish();
    let kinds: Vec<&str> = docs.iter().map(kind).collect();
    let count = |k: &str| kinds.iter().filter(|t| **t == k).count();
    assert_eq!(
        (
            count("CLIENT_QUERY"),
            count("CLIENT_RESPONSE"),
            count("FORWARDER_QUERY"),
            count("FORWARDER_RESPONSE")
        ),
        (2, 2, 1, 1),
        "{docs:#?}"
    );
    for d in &docs {
        assert_eq!(get(d, "identity"), Some("node-a"), "{d:?}");
        match kind(d) {
            "CLIENT_QUERY" | "CLIENT_RESPONSE" => {
                // 127.0.0.1 cut to the default /24.
                assert_eq!(get(d, "query_address"), Some("127.0.0.0"), "{d:?}");
                assert_eq!(get(d, "socket_protocol"), Some("UDP"), "{d:?}");
                assert_eq!(get(d, "response_address"), Some("127.0.0.1"), "{d:?}");
                assert_eq!(
                    get(d, "response_port"),
                    Some(p.addr.port().to_string().as_str())
                );
            }
            "FORWARDER_QUERY" | "FORWARDER_RESPONSE" => {
                assert_eq!(
                    get(d, "response_port"),
                    Some(up.addr.port().to_string().as_str())
                );
                assert_eq!(get(d, "query_address"), None, "{d:?}");
            }
            _ => {}
        }
    }
    let text = format!("{docs:?}");
    assert!(
        text.contains("tap.example.test"),
        "the DNS messages are decoded: {text}"
    );
    // The transport of DoT upstream exchanges is DOT (3); Debian 12's dnstap-read prints it
    // as UDP, so it is read with the schema itself.
    use dot_proxy::dnstap::proto::SocketProtocol;
    let forwarded = forwarder_messages(&raw);
    assert_eq!(forwarded.len(), 2);
    assert!(forwarded
        .iter()
        .all(|m| m.socket_protocol == Some(SocketProtocol::Dot as i32)));
    assert_eq!(raw.len(), docs.len(), "both decoders read every message");
}

/// Exchanges with DoH and DoQ servers are tapped with their own transports (DOH, DOQ),
/// the server's address and port, and the query and answer.
#[tokio::test]
async fn doh_and_doq_exchanges_are_tapped_with_their_transport() {
    use crate::support::enc::{enc_server, Mode};
    use dot_proxy::config::Protocol;
    use dot_proxy::dnstap::proto::SocketProtocol;
    let Some(dir) = scratch("doh_and_doq_exchanges_are_tapped_with_their_transport") else {
        return;
    };
    for (protocol, want) in [
        (Protocol::Https, SocketProtocol::Doh),
        (Protocol::Quic, SocketProtocol::Doq),
    ] {
        let server = enc_server(protocol, Mode::Good).await;
        let upstream = server.server(protocol);
        let port = upstream.address.port();
        let cfg = config_for(vec![upstream]);
        let logged =
            forwarded_once(dir.path(), &format!("{want:?}"), cfg, "tap.example.test.").await;
        assert_forwarded(&logged, want, port);
    }
}

/// Exchanges with a plain-DNS server (a cluster zone's) are tapped as UDP, with the
/// server's port.
#[tokio::test]
async fn plain_dns_exchanges_are_tapped_as_udp() {
    use dot_proxy::dnstap::proto::SocketProtocol;
    let Some(dir) = scratch("plain_dns_exchanges_are_tapped_as_udp") else {
        return;
    };
    let dns = crate::cluster_dns::ClusterDns::start().await;
    let up = Upstream::start().await;
    let mut cfg = crate::cluster_dns::completion_config(&up, dns.addr, false);
    cfg.kubernetes.enabled = false;
    let logged = forwarded_once(dir.path(), "plain", cfg, "web.team-a.svc.cluster.local.").await;
    assert_forwarded(&logged, SocketProtocol::Udp, dns.addr.port());
}

/// A reload turns the tap on, keeps it (and its collector connection) while the section is
/// unchanged, and turns it off: only the queries made while it was on are logged.
#[tokio::test]
async fn reloads_turn_the_tap_on_keep_it_and_turn_it_off() {
    let Some((_dir, sock, cap)) = unix_tap("reloads_turn_the_tap_on_keep_it_and_turn_it_off")
    else {
        return;
    };
    let (_up, p) = start_with(|_| {}).await;
    // Reloads keep the address the proxy is serving on (port 0 would ask for a new one).
    let off = p.config_for_reload();
    let mut on = off.clone();
    tap_to(&mut on, &sock);
    let ask = |name: &'static str| {
        let addr = p.addr;
        async move {
            let m = udp(addr, name, RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        }
    };
    ask("before.example.test.").await;
    p.server.apply(on.clone()).expect("reload: tap on");
    wait_connected(&p).await;
    ask("during.example.test.").await;
    wait_for(&p, "the first miss written", |m| {
        metric(m, "dot_proxy_dnstap_messages_total") >= 4.0
    })
    .await;
    p.server
        .apply(on.clone())
        .expect("reload: section unchanged");
    ask("kept.example.test.").await;
    wait_for(&p, "the second miss written", |m| {
        metric(m, "dot_proxy_dnstap_messages_total") >= 8.0
    })
    .await;
    p.server.apply(off).expect("reload: tap off");
    ask("after.example.test.").await;
    let (docs, raw) = cap.finish();
    let text = format!("{docs:?}");
    assert!(text.contains("during.example.test"), "{text}");
    assert!(text.contains("kept.example.test"), "{text}");
    assert!(!text.contains("before.example.test"), "{text}");
    assert!(!text.contains("after.example.test"), "{text}");
    assert_eq!(raw.len(), 8, "two misses, four messages each: {text}");
}

#[tokio::test]
async fn tcp_collector_with_full_addresses_and_only_some_kinds() {
    let Some(dir) = scratch("tcp_collector_with_full_addresses_and_only_some_kinds") else {
        return;
    };
    let port =
        dot_proxy::listener::unshared_port("127.0.0.1:0".parse().expect("addr")).expect("port");
    let cap = Capture::start(
        &["-a", "127.0.0.1", "-p", &port.to_string()],
        &dir.path().join("out.fstrm"),
    );
    let (_up, p) = start_with(|cfg| {
        cfg.dnstap.enabled = true;
        cfg.dnstap.address = Some(([127, 0, 0, 1], port).into());
        cfg.dnstap.client_ipv4_prefix = 32;
        cfg.dnstap.forwarder_query = false;
        cfg.dnstap.client_query = false;
    })
    .await;
    wait_connected(&p).await;
    let m = tcp(p.addr, "tcp-tap.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    wait_for(&p, "two messages written", |m| {
        metric(m, "dot_proxy_dnstap_messages_total") >= 2.0
    })
    .await;
    let (docs, _) = cap.finish();
    let kinds: Vec<&str> = docs.iter().map(kind).collect();
    assert_eq!(
        kinds,
        vec!["FORWARDER_RESPONSE", "CLIENT_RESPONSE"],
        "{docs:#?}"
    );
    let client = docs
        .iter()
        .find(|d| kind(d) == "CLIENT_RESPONSE")
        .expect("client");
    assert_eq!(
        get(client, "query_address"),
        Some("127.0.0.1"),
        "full address"
    );
    assert_eq!(get(client, "socket_protocol"), Some("TCP"));
}

/// A collector that is not there at start: queries are answered, messages beyond the queue
/// are dropped and counted; when it appears, logging starts.
#[tokio::test]
async fn a_collector_that_appears_later_gets_messages_and_drops_are_counted() {
    let Some(dir) = scratch("a_collector_that_appears_later_gets_messages_and_drops_are_counted")
    else {
        return;
    };
    let sock = dir.path().join("late.sock");
    let (_up, p) = start_with(|cfg| {
        tap_to(cfg, &sock);
        cfg.dnstap.queue_size = 10;
    })
    .await;
    // Answered without a collector.
    for i in 0..40 {
        let name = format!("early{i}.example.test.");
        p.assert_rcode(&name, ResponseCode::NoError).await;
    }
    let m = p.metrics().await;
    assert!(
        metric(&m, "dot_proxy_dnstap_dropped_total") >= 100.0,
        "40 queries, 4 messages each, 10 queued:\n{m}"
    );
    let cap = Capture::start(
        &["-u", sock.to_str().expect("path")],
        &dir.path().join("out.fstrm"),
    );
    wait_for(&p, "connect after the collector appears", |m| {
        metric(m, "dot_proxy_dnstap_connected ") == 1.0
    })
    .await;
    // The 10 queued exchanges (20 messages) go first. Only then is there room in the
    // queue for the late query's two exchanges: "connected" is set at the handshake, before
    // the writer has drained the queue, and asking at once raced with it (the late query's
    // second exchange was dropped as the queue was still full).
    wait_for(&p, "queued messages written", |m| {
        metric(m, "dot_proxy_dnstap_messages_total") >= 20.0
    })
    .await;
    p.ask("late.example.test.").await;
    wait_for(&p, "late messages written", |m| {
        metric(m, "dot_proxy_dnstap_messages_total") >= 24.0
    })
    .await;
    let (docs, _) = cap.finish();
    assert!(
        format!("{docs:?}").contains("late.example.test"),
        "{docs:#?}"
    );
}

/// Collectors that misbehave: one does the handshake and never reads again, one sends
/// garbage and closes. Queries are all answered; messages are dropped and counted; the
/// proxy reconnects.
#[tokio::test]
async fn misbehaving_collectors_never_hold_back_queries() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("bad.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let n = acc.fetch_add(1, Ordering::SeqCst);
            // READY from the proxy, then ACCEPT.
            let ready =
                dot_proxy::dnstap::fstrm::read_control(&mut s, dot_proxy::dnstap::fstrm::READY)
                    .await;
            assert!(ready.is_ok(), "READY first");
            let accept = dot_proxy::dnstap::fstrm::control(
                dot_proxy::dnstap::fstrm::ACCEPT,
                Some(dot_proxy::dnstap::proto::CONTENT_TYPE),
            );
            let _ = s.write_all(&accept).await;
            if n == 0 {
                // The first never reads again.
                held.push(s);
            } else {
                // The others read a little, send garbage and close.
                let mut b = [0u8; 64];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0xff])
                    .await;
                drop(s);
            }
        }
    });
    let (_up, p) = start_with(|cfg| {
        tap_to(cfg, &sock);
        cfg.dnstap.queue_size = 100;
        cfg.cache.enabled = false;
    })
    .await;
    // Large answers fill the socket buffer of the collector that stopped reading.
    let addr = p.addr;
    concurrently(8, |c| async move {
        for i in 0..150 {
            let m = udp(addr, &format!("flood{c}-{i}.example.test."), RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        }
    })
    .await;
    let m = wait_for(&p, "drops and a reconnect", |m| {
        metric(m, "dot_proxy_dnstap_dropped_total") > 0.0
            && metric(m, "dot_proxy_dnstap_connects_total") >= 2.0
    })
    .await;
    assert!(accepted.load(Ordering::SeqCst) >= 2, "reconnected:\n{m}");
    // Still answering after all that.
    p.assert_rcode("after.example.test.", ResponseCode::NoError)
        .await;
}

/// A reload that is refused (here: a new listen address that cannot be bound) changes
/// nothing of the tap: the upstream side of each miss is still logged to the collector of
/// the running config, not switched off by the config that was refused.
#[tokio::test]
async fn a_refused_reload_leaves_the_tap_as_it_was() {
    let Some((_dir, sock, cap)) = unix_tap("a_refused_reload_leaves_the_tap_as_it_was") else {
        return;
    };
    let (_up, p) = start_with(|cfg| tap_to(cfg, &sock)).await;
    let on = p.config_for_reload();
    wait_connected(&p).await;
    // The refused config: tap off, and an address held by a socket without SO_REUSEPORT.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut refused = on.clone();
    refused.dnstap.enabled = false;
    refused.listen.push(taken.local_addr().expect("addr"));
    assert!(p.server.apply(refused).is_err(), "refused");
    let m = p.ask("after-refusal.example.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    wait_for(&p, "the miss written, both sides", |m| {
        metric(m, "dot_proxy_dnstap_messages_total") >= 4.0
    })
    .await;
    let (docs, raw) = cap.finish();
    let text = format!("{docs:?}");
    assert!(text.contains("after-refusal.example.test"), "{text}");
    assert_eq!(
        raw.len(),
        4,
        "client and forwarder query and response: {text}"
    );
}
