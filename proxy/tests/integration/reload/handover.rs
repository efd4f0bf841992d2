//! Issue 32, part 3: the SIGTERM handover under load, many times over, with
//! `net.ipv4.tcp_migrate_req=1` set (and required: without it a connection that completes
//! its handshake as the old listener closes is reset; 2 of 5,000 TCP queries were once lost
//! that way).

use super::*;
use dot_proxy::netsetup::sysctl::{ensure_tcp_migrate_req, PROC};

/// Sets `net.ipv4.tcp_migrate_req=1` in this network namespace with the code `node-local`
/// uses. `false` when it cannot (the caller skips: locally without root or on a kernel
/// before 5.14); `skip` fails the test under CI, which runs as root.
pub(super) fn tcp_migrate_req_on(test: &str) -> bool {
    let m = ensure_tcp_migrate_req(Path::new(PROC));
    if !m.is_on() {
        crate::skip::skip(test, &format!("{} (run as root, as CI does)", m.describe()));
    }
    m.is_on()
}

/// A config file for `up` on a free loopback port, as the handover tests run it (a 5 s
/// drain, `per_client` TCP connections per client): its directory, path and address.
pub(super) fn handover_config(
    up: &Upstream,
    per_client: usize,
) -> (tempfile::TempDir, std::path::PathBuf, std::net::SocketAddr) {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("config.yaml");
    let port = free_port();
    std::fs::write(
        &file,
        yaml_for(
            up,
            &format!("127.0.0.1:{port}"),
            &format!("shutdown_grace: 5s\ntcp: {{max_connections_per_client: {per_client}}}\n"),
        ),
    )
    .expect("write");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    (dir, file, addr)
}

/// GET /readyz on `admin` answers 200 (the process serves) within `limit`.
async fn ready_within(admin: std::net::SocketAddr, limit: Duration) -> bool {
    crate::support::within(limit, || async {
        matches!(probe(admin).await, Some((200, _)))
    })
    .await
}

/// 20 handovers in a chain, each under its own 2 s of load (1,000 TCP queries/s, a new
/// connection each, and 500 UDP/s): a new process is started beside the serving one, and
/// once it is ready the old one gets SIGTERM half a second into the load. No TCP query may
/// be lost in any of them. Bounded: the whole loop has 150 s.
///
/// Not run by default (`cargo test -- --ignored twenty_sigterm`): it still loses a TCP
/// query in about one run of five (docs/upgrades.md, "Known gap"). The single handover
/// test in `reload.rs` runs in CI.
#[tokio::test]
#[ignore = "issue 32: about 1 in 5 runs still loses one of 40,000 TCP queries at the SIGTERM"]
async fn twenty_sigterm_handovers_under_load_lose_no_tcp_query() {
    const RUNS: usize = 20;
    if !tcp_migrate_req_on("twenty_sigterm_handovers_under_load_lose_no_tcp_query") {
        return;
    }
    let up = Upstream::start().await;
    let (_dir, file, addr) = handover_config(&up, 4096);
    // Each process its own admin port, to tell when the new one is ready.
    let admin =
        || -> std::net::SocketAddr { format!("127.0.0.1:{}", free_port()).parse().expect("addr") };
    let run_all = async {
        let a0 = admin();
        let mut old = spawn_proxy(&file, &a0.to_string());
        assert!(wait_serving(addr).await, "first process serves");
        let mut reports = Vec::new();
        for run in 0..RUNS {
            let a = admin();
            let new = spawn_proxy(&file, &a.to_string());
            assert!(
                ready_within(a, Duration::from_secs(10)).await,
                "run {run}: the new process is ready"
            );
            let load = tokio::spawn(load(addr, 2, 500, 1000, |i| {
                format!("h{}.example.test.", i % 500)
            }));
            tokio::time::sleep(Duration::from_millis(500)).await;
            let status = old.terminate().await;
            assert!(
                status.success(),
                "run {run}: old process exited 0: {status:?}"
            );
            let rep = load.await.expect("load");
            eprintln!("handover {run}: {rep:?}");
            reports.push(rep);
            old = new;
        }
        reports
    };
    let reports = tokio::time::timeout(Duration::from_secs(150), run_all)
        .await
        .expect("20 handovers within 150 s");
    let lost: Vec<(usize, usize)> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| r.tcp_answered != r.tcp_sent)
        .map(|(i, r)| (i, r.tcp_sent - r.tcp_answered))
        .collect();
    let tcp: usize = reports.iter().map(|r| r.tcp_sent).sum();
    assert!(tcp >= RUNS * 2000, "{tcp} TCP queries sent");
    assert!(
        lost.is_empty(),
        "TCP queries lost (run, count): {lost:?} of {tcp}"
    );
    let (udp_sent, udp_answered) = reports
        .iter()
        .fold((0, 0), |(s, a), r| (s + r.udp_sent, a + r.udp_answered));
    assert!(
        (udp_sent - udp_answered) * 1000 <= udp_sent,
        "at most 0.1% of UDP lost: {udp_answered} of {udp_sent}"
    );
    assert_eq!(
        reports
            .iter()
            .map(|r| r.tcp_servfail + r.udp_servfail)
            .sum::<usize>(),
        0
    );
}
