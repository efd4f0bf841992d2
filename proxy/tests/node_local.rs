//! `dot-proxy node-local` end to end, inside a network namespace each test creates
//! (`ip netns add dotproxy-test-<pid>-<n>`), so nothing on the machine is touched. Needs
//! root and `ip netns`; without them each test prints why and passes without running.
//!
//! In the namespace: a plain DNS upstream on 127.0.0.1 (a thread of this test that entered
//! the namespace), the proxy (`dot-proxy`) serving 169.254.20.10:53 and [fd00::10]:53 and
//! forwarding to it, and `dot-proxy node-local`. Queries come from threads that entered
//! the namespace. Every wait is bounded.

#[path = "common/netns.rs"]
mod netns;
use dot_proxy_testkit::skip;
use hickory_proto::rr::RecordType;

use netns::{enter, wait_until, Netns, Proc, BIN};

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const V4: &str = "169.254.20.10";
const V6: &str = "fd00::10";
const IFACE: &str = "dpt0";
const ANSWER: [u8; 4] = [192, 0, 2, 53];
const TABLE: [&str; 2] = ["inet", "dot_proxy_notrack"];

// ---------------------------------------------------------------- namespace plumbing

impl Netns {
    fn config(&self, firewall: &str, upstream: SocketAddr) -> PathBuf {
        let path = self.dir.path().join(format!("config-{firewall}.yaml"));
        let yaml = format!(
            r#"listen: ["{V4}:53", "[{V6}]:53"]
workers: 1
admin: {{listen: null}}
upstream_groups:
  - name: local
    servers:
      - {{address: "{upstream}", protocol: plain}}
zones: [{{zone: ".", group: local}}]
allow_plain_default: true
cache: {{enabled: false}}
node_local:
  enabled: true
  interface: {IFACE}
  addresses: ["{V4}", "{V6}"]
  port: 53
  firewall: {firewall}
"#
        );
        std::fs::write(&path, yaml).expect("write config");
        path
    }

    fn addresses(&self) -> String {
        let out = self.exec(&["ip", "addr", "show", "dev", IFACE]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The nftables table, or `None` when it does not exist.
    fn nft_table(&self) -> Option<String> {
        let out = self.exec(&["nft", "list", "table", TABLE[0], TABLE[1]]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

// ---------------------------------------------------------------- DNS

/// An A query (the test kit's, with RD and no EDNS).
fn query(id: u16, name: &str) -> Vec<u8> {
    dot_proxy_testkit::query(id, name, RecordType::A, None)
}

/// The upstream's answer: A 192.0.2.53 for any A question, no data otherwise.
fn upstream_answer(q: &[u8]) -> Option<Vec<u8>> {
    let mut at = 12;
    while *q.get(at)? != 0 {
        at += 1 + *q.get(at)? as usize;
    }
    let end = at + 5;
    let qtype = u16::from_be_bytes([*q.get(at + 1)?, *q.get(at + 2)?]);
    let mut r = q.get(..end)?.to_vec();
    r[2] = 0x81;
    r[3] = 0x80;
    r[6..12].copy_from_slice(&[0, u8::from(qtype == 1), 0, 0, 0, 0]);
    if qtype == 1 {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&ANSWER);
    }
    Some(r)
}

/// A plain DNS server on 127.0.0.1 in the namespace, stopped on drop.
struct Upstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(ns: &Netns) -> Upstream {
        let path = ns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            tx.send(sock.local_addr().expect("addr"))
                .expect("send addr");
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if let Some(r) = upstream_answer(&buf[..n]) {
                        let _ = sock.send_to(&r, from);
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("upstream address");
        Upstream {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a query went.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Answered with the upstream's address.
    Answer,
    /// Some other response.
    Other(Vec<u8>),
    /// ICMP port unreachable (UDP) or RST (TCP): nothing listens.
    Refused,
    Timeout,
    Error(String),
}

fn classify(id: u16, resp: &[u8]) -> Reply {
    let ok = resp.len() > 12
        && resp[..2] == id.to_be_bytes()
        && resp[2] & 0x80 != 0
        && resp[3] & 0x0f == 0;
    if ok && resp.ends_with(&ANSWER) {
        Reply::Answer
    } else {
        Reply::Other(resp.to_vec())
    }
}

/// An A query for `example.test` over UDP from inside the namespace, with the time it took.
fn udp(ns: &Netns, ip: &str, timeout: Duration) -> (Reply, Duration) {
    let target = SocketAddr::new(ip.parse().expect("ip"), 53);
    ns.within(move || {
        let start = Instant::now();
        let local: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("local");
        let sock = UdpSocket::bind(local).expect("bind client");
        sock.set_read_timeout(Some(timeout)).expect("timeout");
        let r = sock
            .connect(target)
            .and_then(|_| sock.send(&query(0x1234, "example.test")));
        if let Err(e) = r {
            return (Reply::Error(e.to_string()), start.elapsed());
        }
        let mut buf = [0u8; 4096];
        let reply = match sock.recv(&mut buf) {
            Ok(n) => classify(0x1234, &buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Reply::Refused,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Reply::Timeout
            }
            Err(e) => Reply::Error(e.to_string()),
        };
        (reply, start.elapsed())
    })
}

/// The same query over TCP.
fn tcp(ns: &Netns, ip: &str, timeout: Duration) -> (Reply, Duration) {
    let target = SocketAddr::new(ip.parse().expect("ip"), 53);
    ns.within(move || {
        let start = Instant::now();
        let mut s = match TcpStream::connect_timeout(&target, timeout) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                return (Reply::Refused, start.elapsed())
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => return (Reply::Timeout, start.elapsed()),
            Err(e) => return (Reply::Error(e.to_string()), start.elapsed()),
        };
        s.set_read_timeout(Some(timeout)).expect("timeout");
        let q = query(0x4321, "example.test");
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        if let Err(e) = s.write_all(&framed) {
            return (Reply::Error(e.to_string()), start.elapsed());
        }
        let mut len = [0u8; 2];
        let reply = match s.read_exact(&mut len) {
            Ok(()) => {
                let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                match s.read_exact(&mut buf) {
                    Ok(()) => classify(0x4321, &buf),
                    Err(e) => Reply::Error(e.to_string()),
                }
            }
            Err(e) => Reply::Error(e.to_string()),
        };
        (reply, start.elapsed())
    })
}

/// A UDP query to `ip` is refused at once (ICMP port unreachable, not silence): what a
/// resolver needs to move to its next nameserver without waiting for a timeout.
fn assert_refused_at_once(ns: &Netns, ip: &str, why: &str) {
    assert_refused_at_once_over(udp, ns, ip, why);
}

/// The same over `transport` (`udp` or `tcp`: an RST for TCP).
fn assert_refused_at_once_over(
    transport: fn(&Netns, &str, Duration) -> (Reply, Duration),
    ns: &Netns,
    ip: &str,
    why: &str,
) {
    let (r, took) = transport(ns, ip, Duration::from_secs(3));
    assert_eq!(r, Reply::Refused, "{why}");
    assert!(
        took < Duration::from_millis(500),
        "{why}: refusal took {took:?}"
    );
}

fn answered(ns: &Netns, ip: &str) -> bool {
    udp(ns, ip, Duration::from_millis(500)).0 == Reply::Answer
}

/// Packets counted by the table's rules (the rules match: traffic skips conntrack).
fn notrack_packets(table: &str) -> u64 {
    table
        .lines()
        .filter_map(|l| {
            l.split("packets ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn node_local_args<'a>(config: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--config",
        config,
        "node-local",
        "--probe-interval",
        "200ms",
        "--probe-timeout",
        "200ms",
        "--unhealthy-after",
        "3",
        "--verify-interval",
        "1s",
    ];
    v.extend_from_slice(extra);
    v
}

const T: Duration = Duration::from_secs(10);

/// The namespace for `test` with an upstream in it and the config for `firewall`, or
/// `None` (the test skipped, saying `missing`) when one of `tools` is not installed.
fn firewall_rig(
    test: &str,
    tools: &[&str],
    missing: &str,
    firewall: &str,
) -> Option<(Netns, Upstream, String)> {
    let ns = Netns::create(test)?;
    if !tools.iter().all(|tool| ns.has(tool)) {
        skip::skip(test, missing);
        return None;
    }
    let upstream = Upstream::start(&ns);
    let cfg = ns.config(firewall, upstream.addr);
    let cfg = cfg.to_str().expect("utf-8 path").to_owned();
    Some((ns, upstream, cfg))
}

/// Starts a proxy with `cfg` and waits until it answers on the IPv4 address.
fn start_proxy(ns: &Netns, name: &str, cfg: &str) -> Proc {
    let proxy = ns.spawn(name, &["--config", cfg]);
    assert!(
        wait_until(T, || answered(ns, V4)),
        "{name} never answered on {V4}\n{}",
        proxy.log()
    );
    proxy
}

/// Waits until the NOTRACK table is there (`installed`) or gone; `by` is the node-local
/// instance expected to do it, whose log a failure shows.
fn wait_for_rules(ns: &Netns, installed: bool, why: &str, by: &Proc) {
    assert!(
        wait_until(T, || ns.nft_table().is_some() == installed),
        "{why}\n{}",
        by.log()
    );
}

/// `dot-proxy node-local --cleanup` with `extra` arguments.
fn cleanup(ns: &Netns, cfg: &str, extra: &[&str]) -> Output {
    let mut args = vec![BIN, "--config", cfg, "node-local", "--cleanup"];
    args.extend_from_slice(extra);
    ns.exec(&args)
}

// ---------------------------------------------------------------- tests

/// The whole life of the node-local address with nftables: set up, rules only once the
/// proxy answers, the proxy killed (queries refused at once, rules removed), back again,
/// node-local itself killed (rules left behind are harmless and taken over), a second
/// instance during an upgrade, SIGTERM, and uninstall.
#[test]
fn nftables_lifecycle_crash_upgrade_and_uninstall() {
    let Some((ns, _upstream, cfg)) = firewall_rig(
        "nftables_lifecycle_crash_upgrade_and_uninstall",
        &["nft"],
        "`nft` is not installed (apt-get install nftables)",
        "nftables",
    ) else {
        return;
    };
    let cfg = cfg.as_str();
    let mut a = ns.spawn("node-local-a", &node_local_args(cfg, &[]));

    // The interface and both addresses appear.
    assert!(
        wait_until(T, || {
            let s = ns.addresses();
            s.contains(&format!("{V4}/32")) && s.contains(&format!("{V6}/128"))
        }),
        "interface never got its addresses: {}\n{}",
        ns.addresses(),
        a.log()
    );
    assert!(
        ns.addresses().contains(",UP"),
        "interface is not up: {}",
        ns.addresses()
    );

    // No proxy yet: a query is refused at once (ICMP port unreachable, not silence)...
    assert_refused_at_once(&ns, V4, "a local address with no listener must refuse");
    // ... and no rules go in while nothing answers.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        ns.nft_table(),
        None,
        "rules installed before the proxy answered\n{}",
        a.log()
    );

    // The proxy starts: queries to both addresses are answered, over UDP and TCP.
    let mut proxy = start_proxy(&ns, "proxy-1", cfg);
    assert_eq!(
        udp(&ns, V6, Duration::from_secs(2)).0,
        Reply::Answer,
        "on {V6}"
    );
    assert_eq!(
        tcp(&ns, V4, Duration::from_secs(2)).0,
        Reply::Answer,
        "over TCP"
    );

    // Then the NOTRACK rules appear, for both addresses, and the queries hit them.
    wait_for_rules(&ns, true, "rules never installed", &a);
    let table = ns.nft_table().unwrap_or_default();
    assert!(
        table.contains(&format!("ip daddr {V4} udp dport 53")),
        "{table}"
    );
    assert!(
        table.contains(&format!("ip6 saddr {V6} tcp sport 53")),
        "{table}"
    );
    assert_eq!(
        table
            .lines()
            .filter(|l| l.trim_end().ends_with(" notrack"))
            .count(),
        12,
        "{table}"
    );
    assert!(answered(&ns, V4));
    assert!(
        notrack_packets(&ns.nft_table().unwrap_or_default()) > 0,
        "no packet matched the rules"
    );

    // The proxy is OOM-killed: queries are refused at once over UDP and TCP, so a
    // resolver moves to its next nameserver without waiting for a timeout...
    proxy.kill9();
    assert_refused_at_once(&ns, V4, "UDP after the proxy died");
    assert_refused_at_once_over(tcp, &ns, V4, "TCP after the proxy died");
    assert_eq!(
        udp(&ns, V6, Duration::from_secs(3)).0,
        Reply::Refused,
        "UDP to {V6}"
    );
    // ... and node-local removes the rules once the proxy stops answering; the address stays.
    wait_for_rules(&ns, false, "rules not removed after the proxy died", &a);
    assert!(ns.addresses().contains(V4), "the address must stay");

    // The proxy comes back: rules come back.
    let mut proxy = start_proxy(&ns, "proxy-2", cfg);
    wait_for_rules(&ns, true, "rules not reinstalled", &a);

    // Someone deletes the rules or the address: both are restored at the next check.
    ns.ok(&["nft", "delete", "table", TABLE[0], TABLE[1]]);
    ns.ok(&["ip", "addr", "del", &format!("{V4}/32"), "dev", IFACE]);
    assert!(
        wait_until(T, || ns.nft_table().is_some()
            && ns.addresses().contains(V4)),
        "rules or address not restored\n{}",
        a.log()
    );
    assert!(
        wait_until(T, || answered(&ns, V4)),
        "not answering after the repair"
    );

    // node-local itself is OOM-killed: its rules stay behind. They are harmless: with the
    // proxy gone too, queries are still refused at once, with the rules in place.
    a.kill9();
    proxy.kill9();
    assert_refused_at_once(&ns, V4, "leftover NOTRACK rules must not blackhole");
    assert!(
        ns.nft_table().is_some(),
        "the leftover rules should still be there for this check"
    );

    // A new node-local takes over: the proxy does not answer, so it removes the leftovers.
    let mut b = ns.spawn("node-local-b", &node_local_args(cfg, &[]));
    wait_for_rules(&ns, false, "leftover rules not removed", &b);
    let mut proxy = start_proxy(&ns, "proxy-3", cfg);
    wait_for_rules(&ns, true, "rules not installed by b", &b);

    // Surge upgrade: a second instance starts; the first one stops and, seeing the other,
    // leaves the rules and the address alone.
    let mut c = ns.spawn("node-local-c", &node_local_args(cfg, &[]));
    assert!(
        wait_until(T, || c.log().contains("NOTRACK rules installed")),
        "c never took over\n{}",
        c.log()
    );
    assert_eq!(b.term(T), Some(0), "b did not exit cleanly\n{}", b.log());
    assert!(
        b.log().contains("another node-local instance runs"),
        "{}",
        b.log()
    );
    assert!(ns.nft_table().is_some(), "b removed the rules from under c");
    assert!(ns.addresses().contains(V4));
    assert!(answered(&ns, V4));

    // The last instance stops: rules removed, address kept, so with the proxy gone too,
    // queries are refused at once rather than routed nowhere.
    assert_eq!(c.term(T), Some(0), "c did not exit cleanly\n{}", c.log());
    assert_eq!(
        ns.nft_table(),
        None,
        "SIGTERM did not remove the rules\n{}",
        c.log()
    );
    assert!(ns.addresses().contains(V4));
    assert_eq!(
        proxy.term(T),
        Some(0),
        "proxy did not exit cleanly\n{}",
        proxy.log()
    );
    assert_eq!(udp(&ns, V4, Duration::from_secs(3)).0, Reply::Refused);

    // Uninstall: --cleanup --remove-interface deletes the interface.
    let out = cleanup(&ns, cfg, &["--remove-interface"]);
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        ns.addresses().is_empty(),
        "interface still there: {}",
        ns.addresses()
    );
    // Shown with --nocapture: what each instance logged.
    for p in [&a, &b, &c] {
        eprintln!("==== {}\n{}", p.log.display(), p.log());
    }
}

/// iptables: `--once` installs one chain and exactly one jump per hook, repairs
/// duplicate jumps instead of adding more (kubernetes/dns#568), handles IPv6 through
/// ip6tables, removes the rules when the proxy is gone, and `--cleanup` leaves nothing.
#[test]
fn iptables_once_never_piles_up_duplicates() {
    let Some((ns, _upstream, cfg)) = firewall_rig(
        "iptables_once_never_piles_up_duplicates",
        &["iptables-restore", "ip6tables-restore"],
        "iptables is not installed (apt-get install iptables)",
        "iptables",
    ) else {
        return;
    };
    let cfg = cfg.as_str();
    let mut proxy = ns.spawn("proxy", &["--config", cfg]);
    let once = |wait: &str| {
        let out = ns.exec(&[
            BIN,
            "--config",
            cfg,
            "node-local",
            "--once",
            "--wait",
            wait,
            "--probe-interval",
            "100ms",
        ]);
        assert!(
            out.status.success(),
            "--once failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let raw = |tool: &str| ns.ok(&[tool, "-t", "raw"]);
    let jumps = |save: &str, hook: &str| {
        save.lines()
            .filter(|l| {
                l.starts_with(&format!("-A {hook} ")) && l.ends_with("-j DOT-PROXY-NOTRACK")
            })
            .count()
    };
    // (jumps from PREROUTING, jumps from OUTPUT, rules in the chain)
    let counts = |save: &str| {
        let chain_rules = save
            .lines()
            .filter(|l| l.starts_with("-A DOT-PROXY-NOTRACK "))
            .count();
        (
            jumps(save, "PREROUTING"),
            jumps(save, "OUTPUT"),
            chain_rules,
        )
    };

    let log = once("10s");
    assert!(
        answered(&ns, V4),
        "proxy not answering\n{}\n{log}",
        proxy.log()
    );
    for _ in 0..2 {
        let v4 = raw("iptables-save");
        assert_eq!(counts(&v4), (1, 1, 4), "{v4}\n{log}");
        assert!(
            v4.contains(&format!(
                "-A DOT-PROXY-NOTRACK -d {V4}/32 -p udp -m udp --dport 53 -j CT --notrack"
            )),
            "{v4}"
        );
        let v6 = raw("ip6tables-save");
        assert_eq!(counts(&v6), (1, 1, 4), "{v6}");
        assert!(
            v6.contains(&format!("-s {V6}/128 -p tcp -m tcp --sport 53")),
            "{v6}"
        );
        once("10s"); // again: nothing changes
    }

    // Duplicate jumps, as a flaky check-then-insert leaves them, are repaired to one.
    for _ in 0..2 {
        ns.ok(&[
            "iptables",
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-m",
            "comment",
            "--comment",
            "dot-proxy node-local",
            "-j",
            "DOT-PROXY-NOTRACK",
        ]);
    }
    ns.ok(&[
        "iptables",
        "-t",
        "raw",
        "-A",
        "OUTPUT",
        "-j",
        "DOT-PROXY-NOTRACK",
    ]);
    assert_eq!(jumps(&raw("iptables-save"), "PREROUTING"), 3);
    once("10s");
    let v4 = raw("iptables-save");
    assert_eq!(counts(&v4), (1, 1, 4), "{v4}");
    assert!(answered(&ns, V4));

    // The proxy gone: --once finds nobody answering and removes the rules.
    proxy.kill9();
    once("0s");
    let v4 = raw("iptables-save");
    assert!(!v4.contains("DOT-PROXY-NOTRACK"), "{v4}");
    assert!(!raw("ip6tables-save").contains("DOT-PROXY-NOTRACK"));

    // Rules from some earlier run, then --cleanup (the interface stays without
    // --remove-interface).
    let _proxy = start_proxy(&ns, "proxy-2", cfg);
    once("10s");
    assert!(raw("iptables-save").contains("DOT-PROXY-NOTRACK"));
    let out = cleanup(&ns, cfg, &[]);
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!raw("iptables-save").contains("DOT-PROXY-NOTRACK"));
    assert!(!raw("ip6tables-save").contains("DOT-PROXY-NOTRACK"));
    assert!(ns.addresses().contains(V4));
}

/// `--cleanup` refuses while an instance runs for the interface: pulling the address from
/// under a running proxy would leave its pods waiting for timeouts.
#[test]
fn cleanup_refuses_while_an_instance_runs() {
    let Some(ns) = Netns::create("cleanup_refuses_while_an_instance_runs") else {
        return;
    };
    let cfg = ns.config("none", SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1));
    let cfg = cfg.to_str().expect("utf-8 path");
    let mut a = ns.spawn("node-local", &node_local_args(cfg, &[]));
    assert!(
        wait_until(T, || ns.addresses().contains(V4)),
        "no interface\n{}",
        a.log()
    );
    let out = cleanup(&ns, cfg, &["--remove-interface"]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ns.addresses().contains(V4));
    assert_eq!(a.term(T), Some(0), "{}", a.log());
    let out = cleanup(&ns, cfg, &["--remove-interface"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ns.addresses().is_empty());
}

/// Sends `n` A queries for `pod.test.` one after another from `from` (an address in the
/// namespace) to `to`; returns (NOERROR, REFUSED) counts.
fn ask_from(ns: &Netns, from: &'static str, to: SocketAddr, n: u16) -> (usize, usize) {
    ns.within(move || {
        let sock = UdpSocket::bind(SocketAddr::new(from.parse().expect("ip"), 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let (mut ok, mut refused) = (0, 0);
        let mut buf = [0u8; 512];
        for id in 0..n {
            sock.send_to(&query(id, "pod.test"), to).expect("send");
            while let Ok((len, _)) = sock.recv_from(&mut buf) {
                if len >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    match buf[3] & 0xF {
                        0 => ok += 1,
                        5 => refused += 1,
                        _ => {}
                    }
                    break;
                }
            }
        }
        (ok, refused)
    })
}

/// Issue 16: Kubernetes gives each node one /64 of pod addresses. Several addresses on one
/// /64 in a namespace the test creates: with the operator's `ipv6_prefix: 128` a flooding
/// pod is limited and its neighbours are not; with the standalone /64 the neighbours share
/// its bucket, but a pod's own /128 override is a bucket of its own either way.
#[test]
fn ipv6_pods_on_one_slash64_get_buckets_of_their_own() {
    let Some(ns) = Netns::create("ipv6_pods_on_one_slash64_get_buckets_of_their_own") else {
        return;
    };
    for a in [
        "fd00:16::53/64",
        "fd00:16::1/64",
        "fd00:16::2/64",
        "fd00:16::3/64",
        "fd00:17::9/64",
    ] {
        ns.ok(&["ip", "-6", "addr", "add", a, "dev", "lo", "nodad"]);
    }
    let to: SocketAddr = "[fd00:16::53]:53".parse().expect("addr");
    for prefix in [128u8, 64] {
        let path = ns.dir.path().join(format!("rl-{prefix}.yaml"));
        std::fs::write(
            &path,
            format!(
                r#"listen: ["[fd00:16::53]:53"]
workers: 1
admin: {{listen: null}}
upstream_groups:
  - name: default
    servers: [{{address: "127.0.0.1:1", tls_name: unused.test}}]
cache: {{enabled: false}}
policy:
  static_answers: [{{name: pod.test, a: [10.0.0.1]}}]
rate_limit:
  enabled: true
  qps: 0.5
  burst: 5
  ipv6_prefix: {prefix}
  overrides: [{{cidr: "fd00:16::3/128", qps: 100, burst: 100}}]
"#
            ),
        )
        .expect("write config");
        let cfg = path.to_str().expect("utf-8");
        let mut p = ns.spawn(&format!("rl-{prefix}"), &["--config", cfg]);
        // Probed from another /64, so no bucket of the test's is touched.
        assert!(
            wait_until(T, || ask_from(&ns, "fd00:17::9", to, 1).0 == 1),
            "proxy answers\n{}",
            p.log()
        );
        let (ok, refused) = ask_from(&ns, "fd00:16::1", to, 20);
        assert!(ok <= 6 && refused >= 14, "/{prefix}: flood {ok}/{refused}");
        let (ok, refused) = ask_from(&ns, "fd00:16::2", to, 3);
        if prefix == 128 {
            assert_eq!(
                (ok, refused),
                (3, 0),
                "/128: a neighbour has its own bucket"
            );
        } else {
            assert_eq!((ok, refused), (0, 3), "/64: the neighbours share one");
        }
        let (ok, refused) = ask_from(&ns, "fd00:16::3", to, 30);
        assert_eq!(
            (ok, refused),
            (30, 0),
            "/{prefix}: the /128 override is a bucket of its own\n{}",
            p.log()
        );
        assert_eq!(p.term(T), Some(0), "{}", p.log());
    }
}

/// Issue 16: the node-local container's probes. `--check ready` passes once setup has
/// settled; a watch loop that stops turning (frozen here with SIGSTOP, as a hang on the
/// xtables lock would) fails `--check live` once `--max-age` has passed, and passes again
/// when it turns again.
#[test]
fn node_local_heartbeat_fails_the_liveness_check_when_the_loop_is_stuck() {
    let Some(ns) =
        Netns::create("node_local_heartbeat_fails_the_liveness_check_when_the_loop_is_stuck")
    else {
        return;
    };
    let cfg = ns.config("none", SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1));
    let cfg = cfg.to_str().expect("utf-8 path");
    let status = ns.dir.path().join("status");
    let status = status.to_str().expect("utf-8 path");
    let mut nl = ns.spawn(
        "node-local-heartbeat",
        &node_local_args(cfg, &["--status-file", status]),
    );
    let check = |mode: &str| {
        Command::new(BIN)
            .args([
                "node-local",
                "--check",
                mode,
                "--status-file",
                status,
                "--max-age",
                "1500ms",
            ])
            .output()
            .expect("run --check")
    };
    assert!(
        wait_until(T, || check("ready").status.success()),
        "ready once set up\n{}",
        nl.log()
    );
    assert!(check("live").status.success());
    let pid = nl.pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill")
        .success());
    // The liveness check notices the stopped loop (it allows a couple of seconds).
    let mut out = check("live");
    wait_until(T, || {
        out = check("live");
        out.status.code() == Some(1)
    });
    assert_eq!(out.status.code(), Some(1), "stuck loop detected");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stuck"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!check("ready").status.success());
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert!(
        wait_until(T, || check("live").status.success()),
        "live again\n{}",
        nl.log()
    );
    assert_eq!(nl.term(T), Some(0), "{}", nl.log());
}

/// Issue 32, part 3: `node-local` turns on `net.ipv4.tcp_migrate_req` in its network
/// namespace (a new one starts with it off) and says so in its log.
#[test]
fn node_local_turns_on_tcp_migrate_req_in_its_network_namespace() {
    const TEST: &str = "node_local_turns_on_tcp_migrate_req_in_its_network_namespace";
    let Some(ns) = Netns::create(TEST) else {
        return;
    };
    let sysctl = || {
        ns.ok(&["cat", "/proc/sys/net/ipv4/tcp_migrate_req"])
            .trim()
            .to_string()
    };
    assert_eq!(sysctl(), "0", "a new network namespace starts with it off");
    let cfg = ns.config("none", "127.0.0.1:5353".parse().expect("addr"));
    let cfg = cfg.to_str().expect("utf-8 path");
    let mut nl = ns.spawn("node-local", &node_local_args(cfg, &[]));
    assert!(wait_until(T, || sysctl() == "1"), "never set\n{}", nl.log());
    assert!(
        wait_until(T, || nl.log().contains("net.ipv4.tcp_migrate_req set to 1")),
        "not logged\n{}",
        nl.log()
    );
    assert_eq!(nl.term(T), Some(0), "{}", nl.log());
}
