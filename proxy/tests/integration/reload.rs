//! Live reconfiguration (the kubelet ConfigMap pattern, SIGHUP-free file watching, invalid
//! configs refused under load) and zero-downtime handoff between two processes.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::support::*;
#[allow(unused_imports)]
use clap::Parser as _;

fn write_kubelet_version(dir: &Path, version: &str, yaml: &str) {
    write_kubelet_file(dir, version, "config.yaml", yaml);
}

/// A ConfigMap volume as the kubelet updates it: files in a timestamped directory, `..data`
/// swapped atomically to it.
fn write_kubelet_file(dir: &Path, version: &str, file: &str, contents: &str) {
    let ts = dir.join(version);
    std::fs::create_dir_all(&ts).expect("mkdir");
    std::fs::write(ts.join(file), contents).expect("write");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
}

/// A proxy started from `dir/config.yaml` (a symlink into `..data`), with the reload
/// task watching it.
async fn start_watched(dir: &Path) -> Arc<dot_proxy::server::Server> {
    symlink("..data/config.yaml", dir.join("config.yaml")).expect("config symlink");
    let cli = dot_proxy::cli::Cli::parse_from([
        "dot-proxy",
        "--config",
        &dir.join("config.yaml").display().to_string(),
    ]);
    let cfg = dot_proxy::reload::load_effective(&cli).expect("valid");
    let server = dot_proxy::server::Server::start(cfg).await.expect("start");
    tokio::spawn(dot_proxy::reload::run(server.clone(), Arc::new(cli)));
    server
}

fn yaml_for(up: &Upstream, listen: &str, extra: &str) -> String {
    format!(
        "listen: [{listen}]\nadmin: {{listen: 127.0.0.1:0}}\nlog: {{level: warn}}\nupstream_groups:\n- name: default\n  timeout: 1500ms\n  servers:\n  - address: {}\n    tls_name: upstream.test\n    ca_file: {}\n{extra}",
        up.addr,
        up.pki.ca_file.display()
    )
}

#[tokio::test]
async fn kubelet_configmap_swap_triggers_a_reload() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    write_kubelet_version(
        dir.path(),
        "..2026_11_22_04_00_00.1",
        &yaml_for(&up, &format!("127.0.0.1:{port}"), ""),
    );
    let server = start_watched(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The new version adds a listen address.
    let port2 = free_port();
    write_kubelet_version(
        dir.path(),
        "..2026_11_22_04_05_00.2",
        &yaml_for(&up, &format!("127.0.0.1:{port}, 127.0.0.1:{port2}"), ""),
    );
    let addr2: std::net::SocketAddr = format!("127.0.0.1:{port2}").parse().expect("addr");
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if udp_raw(
            addr2,
            &query(1, "k.example.test.", RecordType::A, None),
            Duration::from_millis(300),
        )
        .await
        .is_some()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "the swap of ..data was seen and the new listener bound");

    // An invalid version is refused; the proxy keeps serving on the last good config.
    write_kubelet_version(
        dir.path(),
        "..2026_11_22_04_10_00.3",
        "listen: [not-an-address]\n",
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = udp(addr2, "still.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 1);
    let admin = server.admin_addr().expect("admin");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "dot_proxy_config_reloads_total{result=\"failure\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "dot_proxy_config_reloads_total{result=\"success\"}"
        ),
        2.0
    );
    assert_eq!(http_get(admin, "/readyz").await.0, 200, "still ready");

    // Removing the second address closes that listener.
    write_kubelet_version(
        dir.path(),
        "..2026_11_22_04_15_00.4",
        &yaml_for(&up, &format!("127.0.0.1:{port}"), ""),
    );
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if udp_raw(
            addr2,
            &query(2, "gone.example.test.", RecordType::A, None),
            Duration::from_millis(200),
        )
        .await
        .is_none()
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "removed listen address closed");
}

fn hot(i: u64) -> String {
    format!("hot{}.example.test.", i % 50)
}

#[tokio::test]
async fn reloads_under_load_lose_nothing_and_keep_the_cache() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("config.yaml");
    let port = free_port();
    // One client address opens hundreds of TCP connections a second here.
    let good = yaml_for(
        &up,
        &format!("127.0.0.1:{port}"),
        "tcp: {max_connections_per_client: 1024}\n",
    );
    std::fs::write(&file, &good).expect("write");
    let cli =
        dot_proxy::cli::Cli::parse_from(["dot-proxy", "--config", &file.display().to_string()]);
    let server =
        dot_proxy::server::Server::start(dot_proxy::reload::load_effective(&cli).expect("valid"))
            .await
            .expect("start");
    tokio::spawn(dot_proxy::reload::run(server.clone(), Arc::new(cli)));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let admin = server.admin_addr().expect("admin");
    // Warm the cache.
    for i in 0..50 {
        udp(addr, &hot(i), RecordType::A).await;
    }
    let (_, before) = http_get(admin, "/metrics").await;
    let misses_before = metric(&before, "dot_proxy_cache_misses_total");

    // 2,000 queries per second (1,500 UDP, 500 TCP) for 10 s, 20 reloads meanwhile:
    // valid ones (a changed setting that keeps the cache) alternate with invalid ones.
    let file2 = file.clone();
    let reloader = tokio::spawn(async move {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(450)).await;
            let text = if i % 2 == 0 {
                format!("{good}shutdown_grace: {}s\n", 1 + i)
            } else {
                format!("{good}cache: {{min_ttl: 10, max_ttl: 1}}\n")
            };
            std::fs::write(&file2, text).expect("write");
        }
    });
    let rep = load(addr, 10, 1500, 500, hot).await;
    reloader.await.expect("reloader");
    assert_eq!(rep.udp_answered, rep.udp_sent, "no UDP query lost: {rep:?}");
    assert_eq!(rep.tcp_answered, rep.tcp_sent, "no TCP query lost: {rep:?}");
    assert_eq!(rep.udp_servfail + rep.tcp_servfail, 0, "{rep:?}");
    let (_, after) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(&after, "dot_proxy_cache_misses_total"),
        misses_before,
        "cache kept across reloads: every query a hit"
    );
    assert!(
        metric(&after, "dot_proxy_config_reloads_total{result=\"success\"}") >= 8.0,
        "{after}"
    );
    assert!(metric(&after, "dot_proxy_config_reloads_total{result=\"failure\"}") >= 8.0);
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_proxy(config: &Path) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_dot-proxy"))
            .args([
                "--config",
                &config.display().to_string(),
                "--admin-listen",
                "off",
                "--workers",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dot-proxy"),
    )
}

#[tokio::test]
async fn second_process_takes_over_on_sigterm_without_losing_queries() {
    // Connections that finish their handshake in the instant between the old process's
    // last accept and its listener closing would be reset; net.ipv4.tcp_migrate_req hands
    // them to the other listener of the SO_REUSEPORT group instead (docs/upgrades.md).
    if std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1").is_err() {
        eprintln!(
            "note: cannot set net.ipv4.tcp_migrate_req (not root?); a rare reset is possible"
        );
    }
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("config.yaml");
    let port = free_port();
    std::fs::write(
        &file,
        yaml_for(
            &up,
            &format!("127.0.0.1:{port}"),
            "shutdown_grace: 5s\ntcp: {max_connections_per_client: 1024}\n",
        ),
    )
    .expect("write");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut old = spawn_proxy(&file);
    let mut up_ok = false;
    for _ in 0..50 {
        if udp_raw(
            addr,
            &query(1, "boot.example.test.", RecordType::A, None),
            Duration::from_millis(200),
        )
        .await
        .is_some()
        {
            up_ok = true;
            break;
        }
    }
    assert!(up_ok, "first process serves");
    let file2 = file.clone();
    let handoff = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let new = spawn_proxy(&file2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The surge pod is up beside the old one; now the old one is told to stop.
        let pid = old.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = tokio::task::spawn_blocking(move || old.0.wait())
            .await
            .expect("join")
            .expect("wait");
        (new, status)
    });
    let rep = load(addr, 10, 1500, 500, |i| {
        format!("h{}.example.test.", i % 500)
    })
    .await;
    let (_new, status) = handoff.await.expect("handoff");
    assert!(status.success(), "old process exited 0: {status:?}");
    assert_eq!(rep.tcp_answered, rep.tcp_sent, "no TCP query lost: {rep:?}");
    let lost = rep.udp_sent - rep.udp_answered;
    assert!(
        lost * 1000 <= rep.udp_sent,
        "at most 0.1% of UDP lost: {rep:?}"
    );
}

/// A block list mounted from its own ConfigMap: when the kubelet swaps in a new version of
/// the list (and nothing else changes), the proxy re-reads it.
#[tokio::test]
async fn a_changed_block_list_file_is_reloaded_without_a_config_change() {
    let up = Upstream::start().await;
    let cfg_dir = tempfile::tempdir().expect("tmp");
    let list_dir = tempfile::tempdir().expect("tmp");
    let write_list = |version: &str, names: &str| {
        write_kubelet_file(list_dir.path(), version, "ads.hosts", names)
    };
    write_list("..v1", "0.0.0.0 first.example.test\n");
    symlink("..data/ads.hosts", list_dir.path().join("ads.hosts")).expect("list symlink");
    let port = free_port();
    let extra = format!(
        "policy:\n  blocklists:\n  - {{name: ads, file: {}}}\n",
        list_dir.path().join("ads.hosts").display()
    );
    write_kubelet_version(
        cfg_dir.path(),
        "..c1",
        &yaml_for(&up, &format!("127.0.0.1:{port}"), &extra),
    );
    let _server = start_watched(cfg_dir.path()).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let rcode = |name: &'static str| async move {
        udp(addr, name, RecordType::A).await.metadata.response_code
    };
    use hickory_proto::op::ResponseCode;
    assert_eq!(rcode("first.example.test.").await, ResponseCode::NXDomain);
    assert_eq!(rcode("second.example.test.").await, ResponseCode::NoError);

    tokio::time::sleep(Duration::from_millis(200)).await;
    write_list("..v2", "0.0.0.0 second.example.test\n");
    let mut swapped = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if rcode("second.example.test.").await == ResponseCode::NXDomain {
            swapped = true;
            break;
        }
    }
    assert!(swapped, "the new list was read");
    assert_eq!(
        rcode("first.example.test.").await,
        ResponseCode::NoError,
        "the old list is gone"
    );
}
