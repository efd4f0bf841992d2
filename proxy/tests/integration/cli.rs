//! The `dot-proxy` binary as a user runs it (README "Running"): exit codes, the
//! `check-config` and `print-config` subcommands, flags read from `DOT_PROXY_*`
//! variables, the `--metrics-listen` alias and `--no-cache`.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_dot-proxy");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run dot-proxy")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Fails unless the process exited with `code` and its stderr says `says`.
#[track_caller]
fn assert_exit(out: &Output, code: i32, says: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(says), "{stderr}");
}

/// A running `dot-proxy` child, killed when dropped.
struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with `args` and `env`, and waits (at most 10 s) until `/readyz` on
/// `admin` answers 200.
async fn start(args: &[&str], env: &[(&str, String)], admin: std::net::SocketAddr) -> Running {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Running(cmd.spawn().expect("spawn dot-proxy"));
    until(
        &format!("dot-proxy ready on {admin}"),
        Duration::from_secs(10),
        || {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("dot-proxy exited early: {status}");
            }
            async move {
                let Ok(Ok(mut s)) = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(admin),
                )
                .await
                else {
                    return false;
                };
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s
                    .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
                let mut out = String::new();
                let _ = s.read_to_string(&mut out).await;
                out.starts_with("HTTP/1.1 200")
            }
        },
    )
    .await;
    child
}

fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn every_usage_error_exits_64() {
    for args in [
        &["--bogus"][..],
        &["--workers", "abc"],
        &["--log-format", "xml"],
        &["--listen", "not-an-address"],
        &["--upstream", "ftp://192.0.2.1"],
        &["check-config"],
        &["no-such-command"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?}: says why");
    }
    // Help and version are not errors.
    for args in [&["--help"][..], &["--version"], &["check-config", "--help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn a_bad_config_file_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "rate_limit:\n  enabled: true\n  qps: 0\n").expect("write");
    let out = run(&["--config", &file.display().to_string()]);
    assert_exit(&out, 64, "rate_limit.qps");
    let out = run(&[
        "--config",
        &dir.path().join("missing.yaml").display().to_string(),
    ]);
    assert_exit(&out, 64, "");
}

#[test]
fn a_listener_that_cannot_be_bound_exits_71() {
    // Held without SO_REUSEPORT, so the proxy's bind of the same address fails.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let out = run(&[
        "--listen",
        &addr,
        "--admin-listen",
        "off",
        "--upstream",
        "tls://127.0.0.1:9#upstream.test",
    ]);
    assert_exit(&out, 71, "");
}

#[test]
fn check_config_and_print_config_as_commands() {
    // The built-in defaults, printed, are a config that checks.
    let out = run(&["print-config"]);
    assert_exit(&out, 0, "");
    let yaml = text(&out.stdout);
    assert!(yaml.contains("upstream_groups"), "{yaml}");
    let dir = tempfile::tempdir().expect("tmp");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, &yaml).expect("write");
    let out = run(&["check-config", &good.display().to_string()]);
    assert_exit(&out, 0, "");
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));
    // A bad one: exit 1, the field named.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "workers: many\n").expect("write");
    let out = run(&["check-config", &bad.display().to_string()]);
    assert_exit(&out, 1, "workers");
}

/// `check-config` judges a file as the proxy would load it, with the same flags and
/// variables: a config that needs a node name passes when `--node-name` or
/// `DOT_PROXY_NODE_NAME` gives it, as the proxy would start with it (issue 33).
#[test]
fn check_config_takes_the_node_name_from_flags_and_environment() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("k8s.yaml");
    std::fs::write(&file, "kubernetes:\n  enabled: true\n").expect("write");
    let path = file.display().to_string();
    let out = run(&["check-config", &path]);
    assert_eq!(out.status.code(), Some(1), "no node name anywhere");
    assert!(
        text(&out.stderr).contains("node_name"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["--node-name", "node-a", "check-config", &path]);
    assert_exit(&out, 0, "");
    let out = Command::new(BIN)
        .args(["check-config", &path])
        .env_clear()
        .env("DOT_PROXY_NODE_NAME", "node-a")
        .output()
        .expect("run");
    assert_exit(&out, 0, "");
}

/// Asks one name twice on port `dns`; fails unless both are answered and `up` was asked
/// `n` queries in all.
async fn ask_twice(dns: u16, up: &Upstream, n: usize, why: &str) {
    for _ in 0..2 {
        let m = udp(loopback(dns), "www.example.test.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    assert_eq!(up.query_count(), n, "{why}");
}

fn ca(up: &Upstream) -> String {
    up.pki.ca_file.display().to_string()
}

/// Every flag from its `DOT_PROXY_*` variable, `--no-cache` among them: the proxy serves
/// where the variables say, forwards where they say, and caches nothing.
#[tokio::test]
async fn flags_from_environment_variables_and_no_cache() {
    let up = Upstream::start().await;
    let (dns, admin) = (free_port(), free_port());
    let env = [
        ("DOT_PROXY_LISTEN", format!("127.0.0.1:{dns}")),
        (
            "DOT_PROXY_UPSTREAM",
            format!("tls://{}#upstream.test", up.addr),
        ),
        ("DOT_PROXY_TLS_CA_FILE", ca(&up)),
        ("DOT_PROXY_ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        ("DOT_PROXY_WORKERS", "1".to_string()),
        ("DOT_PROXY_LOG_LEVEL", "warn".to_string()),
        ("DOT_PROXY_LOG_FORMAT", "json".to_string()),
        ("DOT_PROXY_NO_CACHE", "true".to_string()),
    ];
    let _p = start(&[], &env, loopback(admin)).await;
    ask_twice(
        dns,
        &up,
        2,
        "DOT_PROXY_NO_CACHE: both queries went upstream",
    )
    .await;
}

/// `--metrics-listen` is an alias of `--admin-listen`; without `--no-cache` the second
/// query is a cache hit.
#[tokio::test]
async fn metrics_listen_alias_and_the_cache_on_by_default() {
    let up = Upstream::start().await;
    let (dns, admin) = (free_port(), free_port());
    let args = [
        "--listen".to_string(),
        format!("127.0.0.1:{dns}"),
        "--upstream".to_string(),
        format!("tls://{}#upstream.test", up.addr),
        "--tls-ca-file".to_string(),
        ca(&up),
        "--metrics-listen".to_string(),
        format!("127.0.0.1:{admin}"),
        "--workers".to_string(),
        "1".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _p = start(&args, &[], loopback(admin)).await;
    ask_twice(dns, &up, 1, "the second was cached").await;
    let (code, body) = http_get(loopback(admin), "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("dot_proxy_cache_hits_total"), "{body}");
}
