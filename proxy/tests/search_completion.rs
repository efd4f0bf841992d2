//! Search-path completion with real stub resolvers: glibc's `getent ahosts` and
//! `getaddrinfo` from a program built with musl-gcc, each run in a mount namespace the test
//! creates (`unshare --mount`), with a pod-like `/etc/resolv.conf` bound over the real one,
//! inside a network namespace the test creates. There, on loopback: the proxy (`dot-proxy`,
//! listening on 10.77.0.5:53 and 10.77.0.6:53), a stand-in cluster DNS serving
//! `cluster.local` and the node's search domain `corp.internal`, the DoT upstream for
//! everything else, and a fake API server listing the node's pods: 10.77.0.5 is a pod of
//! namespace `team-a`, 10.77.0.6 a host-network pod (so no namespace). The resolvers' source
//! address is the proxy address they are given.
//!
//! For each resolver and name, with completion off and on (a fresh proxy each time, so
//! every lookup is a first lookup): the addresses returned must be the same, and the
//! queries arriving at the proxy, at the stand-in and at the upstream are counted. The
//! figures are printed (docs/search-completion.md quotes them). Needs root, `ip netns`,
//! `unshare`, `getent`, `musl-gcc`: skipped without them, failed in CI.

#[path = "common/netns.rs"]
mod netns;
use dot_proxy_testkit::{self as support, cluster_dns, skip};

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_dns::{completion_config, ClusterDns};
use netns::{wait_until, Netns, Proc};
use support::Upstream;

const POD: &str = "10.77.0.5";
const HOST_NETWORK_POD: &str = "10.77.0.6";
const ADMIN: &str = "127.0.0.1:9253";
const SEARCH: &str = "team-a.svc.cluster.local svc.cluster.local cluster.local corp.internal";

/// (what the pod looks up, what it should resolve to; empty: nothing)
const NAMES: [(&str, &[&str]); 6] = [
    ("www.example.test", &["192.0.2.1"]),
    ("web", &["10.96.0.10"]),
    ("db.other", &["10.96.0.11"]),
    ("web-0.web", &["10.244.0.7"]),
    ("intranet", &["10.50.0.1"]),
    ("nothing-here", &[]),
];

const GAI_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    struct addrinfo hints, *res, *p;
    char buf[64];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argv[1], NULL, &hints, &res);
    if (rc != 0) { fprintf(stderr, "%s\n", gai_strerror(rc)); return 2; }
    for (p = res; p; p = p->ai_next) {
        void *a = p->ai_family == AF_INET
            ? (void *)&((struct sockaddr_in *)p->ai_addr)->sin_addr
            : (void *)&((struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
        printf("%s\n", inet_ntop(p->ai_family, a, buf, sizeof buf));
    }
    return 0;
}
"#;

/// The servers on the namespace's loopback, run by a thread that entered it.
struct Servers {
    dns: Arc<ClusterDns>,
    up: Arc<Upstream>,
    api: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn start_servers(ns: &Netns) -> Servers {
    let path = ns.path();
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        netns::enter(&path);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let dns = ClusterDns::start().await;
            let up = Upstream::start().await;
            // A public resolver is a few milliseconds away.
            up.behaviour.delay_ms.store(5, Ordering::SeqCst);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind api");
            let api = listener.local_addr().expect("addr");
            use dot_proxy_testkit::kube::{api_server, pod, pod_list};
            let pods = pod_list(vec![
                pod("client", "team-a", "node-a", POD, false),
                pod("cni", "kube-system", "node-a", HOST_NETWORK_POD, true),
            ]);
            tokio::spawn(api_server(listener, "node-a".into(), pods));
            tx.send((dns, up, api)).expect("send");
            let _ = stop_rx.await;
        });
    });
    let (dns, up, api) = rx.recv_timeout(Duration::from_secs(10)).expect("servers");
    Servers {
        dns,
        up,
        api,
        _stop: stop_tx,
    }
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metrics(ns: &Netns) -> String {
    ns.within(|| http_get(ADMIN, "/metrics").unwrap_or_default())
}

/// The sum of a counter over its labels.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn start_proxy(ns: &Netns, s: &Servers, on: bool) -> Proc {
    let kubeconfig = ns.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\nusers: [{{name: u, user: {{token: test}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\ncurrent-context: c\n",
            s.api
        ),
    )
    .expect("kubeconfig");
    let mut cfg = completion_config(&s.up, s.dns.addr, on);
    cfg.listen = vec![
        format!("{POD}:53").parse().expect("addr"),
        format!("{HOST_NETWORK_POD}:53").parse().expect("addr"),
    ];
    cfg.admin.listen = Some(ADMIN.parse().expect("addr"));
    cfg.workers = 1;
    cfg.kubernetes.kubeconfig = Some(kubeconfig);
    let path = ns.dir.path().join("config.yaml");
    std::fs::write(&path, cfg.to_yaml().expect("yaml")).expect("config");
    let p = ns.spawn("proxy", &["--config", path.to_str().expect("path")]);
    let synced = wait_until(Duration::from_secs(15), || {
        total(&metrics(ns), "dot_proxy_kubernetes_pod_watch_synced") == 1.0
    });
    assert!(synced, "proxy up and pod watch synced:\n{}", p.log());
    p
}

fn resolv_conf(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join(format!("resolv-{server}.conf"));
    std::fs::write(
        &path,
        format!("nameserver {server}\nsearch {SEARCH}\noptions ndots:5 timeout:2 attempts:1\n"),
    )
    .expect("resolv.conf");
    path
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Resolver {
    Glibc,
    Musl,
}

/// Runs one lookup as a pod would: its own /etc/resolv.conf in a mount namespace.
fn lookup(
    ns: &Netns,
    resolver: Resolver,
    gai: &Path,
    resolv: &Path,
    name: &str,
) -> BTreeSet<String> {
    let cmd = match resolver {
        Resolver::Glibc => format!("exec getent ahosts {name}"),
        Resolver::Musl => format!("exec {} {name}", gai.display()),
    };
    let script = format!(
        "mount --bind {} /etc/resolv.conf && {cmd}",
        resolv.display()
    );
    let out = ns.exec(&["unshare", "--mount", "sh", "-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "{resolver:?} {name}: {:?} {stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    proxy: f64,
    cluster_dns: usize,
    upstream: usize,
    ms: f64,
}

fn tools_missing() -> Option<String> {
    for tool in ["unshare", "getent", "musl-gcc", "mount"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!(
                "needs {tool} (apt: util-linux, libc-bin, musl-tools)"
            ));
        }
    }
    None
}

/// The test's network namespace with the two client addresses on its loopback, or None
/// (skipped) without the tools or root.
fn pod_netns(test: &str) -> Option<Netns> {
    if let Some(why) = tools_missing() {
        skip::skip(test, &why);
        return None;
    }
    let ns = Netns::create(test)?;
    for ip in [POD, HOST_NETWORK_POD] {
        ns.ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    Some(ns)
}

#[test]
fn glibc_and_musl_resolve_the_same_with_fewer_queries() {
    const TEST: &str = "glibc_and_musl_resolve_the_same_with_fewer_queries";
    let Some(ns) = pod_netns(TEST) else {
        return;
    };
    // A global IPv6 address, as a dual-stack pod has: glibc's getaddrinfo (AI_ADDRCONFIG)
    // then asks AAAA as well as A.
    ns.ok(&["ip", "addr", "add", "fd00:77::5/128", "dev", "lo", "nodad"]);
    let gai = ns.dir.path().join("gai-musl");
    let src = ns.dir.path().join("gai.c");
    std::fs::write(&src, GAI_C).expect("source");
    dot_proxy_testkit::run_ok(
        Command::new("musl-gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&gai)
            .arg(&src),
    );
    let servers = start_servers(&ns);
    let pod_resolv = resolv_conf(ns.dir.path(), POD);
    let stranger_resolv = resolv_conf(ns.dir.path(), HOST_NETWORK_POD);

    let mut report = Vec::new();
    for resolver in [Resolver::Glibc, Resolver::Musl] {
        for (client, resolv) in [("pod", &pod_resolv), ("unknown", &stranger_resolv)] {
            let mut by_mode = Vec::new();
            for on in [false, true] {
                let proxy = start_proxy(&ns, &servers, on);
                let mut rows = Vec::new();
                for (name, want) in NAMES {
                    let before = (
                        total(&metrics(&ns), "dot_proxy_queries_total"),
                        servers.dns.queries.load(Ordering::SeqCst),
                        servers.up.query_count(),
                    );
                    let t = Instant::now();
                    let got = lookup(&ns, resolver, &gai, resolv, name);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
                    assert_eq!(
                        got,
                        want,
                        "{resolver:?} {client} {name} completion {on}\n{}",
                        proxy.log()
                    );
                    let c = Counts {
                        proxy: total(&metrics(&ns), "dot_proxy_queries_total") - before.0,
                        cluster_dns: servers.dns.queries.load(Ordering::SeqCst) - before.1,
                        upstream: servers.up.query_count() - before.2,
                        ms,
                    };
                    rows.push((name, c));
                }
                let completed = total(&metrics(&ns), "dot_proxy_search_completions_total");
                by_mode.push((rows, completed));
                drop(proxy);
            }
            let (off, _) = &by_mode[0];
            let (on, completed) = &by_mode[1];
            for ((name, o), (_, n)) in off.iter().zip(on.iter()) {
                let row = format!(
                    "| {resolver:?} | {client} | {name} | {} / {} | {} / {} | {} / {} | {:.1} / {:.1} |",
                    o.proxy, n.proxy, o.cluster_dns, n.cluster_dns, o.upstream, n.upstream, o.ms, n.ms
                );
                eprintln!("{row}");
                report.push(row);
                if client == "unknown" {
                    assert_eq!(
                        o.proxy, n.proxy,
                        "{resolver:?} unknown client {name}: as without completion"
                    );
                    assert_eq!(
                        o.cluster_dns, n.cluster_dns,
                        "{resolver:?} unknown client {name}"
                    );
                    assert_eq!(o.upstream, n.upstream, "{resolver:?} unknown client {name}");
                } else {
                    assert!(n.proxy <= o.proxy, "{resolver:?} {name}: {n:?} vs {o:?}");
                    assert!(
                        n.cluster_dns <= o.cluster_dns,
                        "{resolver:?} {name}: {n:?} vs {o:?}"
                    );
                    assert!(
                        n.upstream <= o.upstream,
                        "{resolver:?} {name}: {n:?} vs {o:?}"
                    );
                }
            }
            if client == "unknown" {
                assert_eq!(
                    *completed, 0.0,
                    "{resolver:?}: nothing completed for an unknown client"
                );
            } else {
                // An external name: one query per address family instead of one per
                // search-list name and family.
                let ext = |rows: &Vec<(&str, Counts)>| rows[0].1.proxy;
                assert_eq!(ext(on), 2.0, "{resolver:?}: A and AAAA once each");
                assert!(ext(off) >= 10.0, "{resolver:?}: five names, two types each");
                assert!(*completed >= 4.0, "{resolver:?}: completions counted");
            }
        }
    }
    eprintln!("| resolver | client | name | queries at the proxy (off / on) | at the cluster DNS | at the upstream | lookup ms |");
    eprintln!("|---|---|---|---|---|---|---|");
    for r in report {
        eprintln!("{r}");
    }
}

/// Address rotation as a pod sees it: glibc's `getent ahostsv4` of a name with four
/// addresses, run four times, gets a different address first each time (the first lookup
/// fills the cache; each hit after it turns the list by one).
#[test]
fn glibc_sees_cached_addresses_in_turn() {
    const TEST: &str = "glibc_sees_cached_addresses_in_turn";
    let Some(ns) = pod_netns(TEST) else {
        return;
    };
    let servers = start_servers(&ns);
    let resolv = resolv_conf(ns.dir.path(), POD);
    let proxy = start_proxy(&ns, &servers, false);
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec getent ahostsv4 multi.example.test.",
        resolv.display()
    );
    let firsts: Vec<String> = (0..4)
        .map(|_| {
            let out = ns.exec(&["unshare", "--mount", "sh", "-c", &script]);
            assert!(
                out.status.success(),
                "getent: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let distinct: BTreeSet<&String> = firsts.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "each lookup starts with another address: {firsts:?}\n{}",
        proxy.log()
    );
    assert_eq!(servers.up.query_count(), 1, "one upstream query, then hits");
}
