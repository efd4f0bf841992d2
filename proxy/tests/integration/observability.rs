//! Metrics and health endpoints, `promtool check metrics`, and a real Prometheus server that
//! scrapes a proxy with a slow upstream until the p90 latency alert fires.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::support::*;

#[tokio::test]
async fn counters_and_histograms_move_and_health_endpoints_answer() {
    let (_up, p) = start_with(|_| {}).await;
    let admin = p.server.admin_addr().expect("admin");
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    assert_eq!(http_get(admin, "/nope").await.0, 404);
    let before = p.metrics().await;
    p.ask("m1.example.test.").await;
    p.ask("m1.example.test.").await;
    tcp(p.addr, "nxm.example.test.", RecordType::A).await;
    udp(p.addr, "m2.example.test.", RecordType::AAAA).await;
    let after = p.metrics().await;
    let d = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(
        d("dot_proxy_queries_total{transport=\"udp\",qtype=\"A\",rcode=\"NOERROR\"}"),
        2.0
    );
    assert_eq!(
        d("dot_proxy_queries_total{transport=\"tcp\",qtype=\"A\",rcode=\"NXDOMAIN\"}"),
        1.0
    );
    assert_eq!(
        d("dot_proxy_queries_total{transport=\"udp\",qtype=\"AAAA\",rcode=\"NOERROR\"}"),
        1.0
    );
    assert_eq!(
        d("dot_proxy_query_duration_seconds_count{transport=\"udp\"}"),
        3.0
    );
    assert_eq!(d("dot_proxy_cache_hits_total"), 1.0);
    assert_eq!(d("dot_proxy_cache_misses_total"), 3.0);
    assert_eq!(d("dot_proxy_upstream_queries_total{"), 3.0);
    assert_eq!(d("dot_proxy_upstream_duration_seconds_count{"), 3.0);
    assert!(
        metric(&after, "dot_proxy_upstream_certificate_expiry_seconds{") > 1.7e9,
        "cert expiry recorded"
    );
    assert_eq!(metric(&after, "dot_proxy_upstream_healthy{"), 1.0);
    assert!(metric(&after, "dot_proxy_process_resident_memory_bytes") > 0.0);
    assert!(metric(&after, "dot_proxy_process_open_fds") > 0.0);
    assert!(after.contains("dot_proxy_build_info{version="));
    assert_eq!(
        metric(&after, "dot_proxy_config_reloads_total{result=\"success\"}"),
        1.0
    );
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.starts_with("dot_proxy_"),
            "every metric under one prefix: {line}"
        );
        assert!(
            !line.contains("example.test"),
            "no query name in labels: {line}"
        );
        if !line.contains("upstream=") {
            assert!(
                !line.contains("127.0.0.1"),
                "no client address in labels: {line}"
            );
        }
    }
}

#[tokio::test]
async fn promtool_check_metrics_reports_nothing() {
    let Ok(_) = Command::new("promtool").arg("--version").output() else {
        crate::skip::skip(
            "promtool_check_metrics_reports_nothing",
            "promtool not installed (apt-get install prometheus)",
        );
        return;
    };
    let (_up, p) = start_with(|_| {}).await;
    p.ask("pt.example.test.").await;
    let text = p.metrics().await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes())
        .expect("write");
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test]
async fn prometheus_fires_the_latency_alert_for_a_slow_upstream() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::skip::skip(
            "prometheus_fires_the_latency_alert_for_a_slow_upstream",
            "prometheus not installed (apt-get install prometheus)",
        );
        return;
    }
    let up = Upstream::start().await;
    up.behaviour.delay_ms.store(150, Ordering::SeqCst);
    let mut cfg = config_for(vec![up.server()]);
    cfg.cache.enabled = false;
    let p = Proxy::start(cfg).await;
    let admin = p.server.admin_addr().expect("admin");

    // The repository's rules, with `for: 5m` shortened so the test ends in seconds.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/dot-proxy-rules.yaml"))
        .expect("rules file");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("rules.yaml"),
        rules.replace("for: 5m", "for: 3s"),
    )
    .expect("write rules");
    let port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yaml]\nscrape_configs:\n- job_name: dot-proxy\n  static_configs:\n  - targets: ['{admin}']\n"
        ),
    )
    .expect("write config");
    let mut prom = Command::new("prometheus")
        .current_dir(dir.path())
        .args([
            "--config.file=prometheus.yml",
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--storage.tsdb.path=data",
            "--log.level=warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");

    // Bounded load: 10 queries every 200 ms, for at most 60 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let prom_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut firing = false;
    let mut i = 0u32;
    while Instant::now() < deadline && !firing {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            i += 1;
            let addr = p.addr;
            tasks.push(tokio::spawn(async move {
                udp_raw(
                    addr,
                    &query(1, &format!("slow{i}.example.test."), RecordType::A, None),
                    Duration::from_secs(2),
                )
                .await
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(prom_addr),
        )
        .await
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"GET /api/v1/alerts HTTP/1.0\r\n\r\n").await;
            let mut body = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut body)).await;
            firing = body.contains("\"alertname\":\"DotProxyHighLatency\"")
                && body.contains("\"state\":\"firing\"");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(firing, "DotProxyHighLatency went to firing");
}
