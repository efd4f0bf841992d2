//! The admin endpoint over HTTP, and samples read from its OpenMetrics text.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Minimal HTTP/1.0 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Sums the samples of lines starting with `prefix` that also contain `label` (e.g.
/// `kind="tls"`).
pub fn metric_with(text: &str, prefix: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Reads one sample from OpenMetrics text: the first line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The `/metrics` text of a server's admin endpoint.
pub async fn scrape(server: &dot_proxy::server::Server) -> String {
    http_get(server.admin_addr().expect("admin endpoint on"), "/metrics")
        .await
        .1
}

/// Waits (at most 10 s) until the samples of `prefix` with `label` sum to at least
/// `at_least`; returns that scrape.
pub async fn wait_metric(
    server: &dot_proxy::server::Server,
    prefix: &str,
    label: &str,
    at_least: f64,
) -> String {
    wait_metric_where(
        server,
        prefix,
        label,
        std::time::Duration::from_secs(10),
        |v| v >= at_least,
    )
    .await
}

/// Waits at most `within` until the samples of `prefix` with `label` sum to a value `ok`
/// accepts; returns that scrape, or panics with the last one.
pub async fn wait_metric_where(
    server: &dot_proxy::server::Server,
    prefix: &str,
    label: &str,
    within: std::time::Duration,
    ok: impl Fn(f64) -> bool + Sync,
) -> String {
    let last = std::sync::Mutex::new(String::new());
    let (seen, ok) = (&last, &ok);
    let found = crate::wait::within(within, move || async move {
        let text = scrape(server).await;
        let good = ok(metric_with(&text, prefix, label));
        *seen.lock().expect("lock") = text;
        good
    })
    .await;
    let last = last.into_inner().expect("lock");
    assert!(
        found,
        "{prefix}{{{label}}} = {} not as wanted within {within:?}:\n{last}",
        metric_with(&last, prefix, label)
    );
    last
}

/// Waits at most `within` until the samples of `prefix` sum to zero (connections closed,
/// slots released); returns that scrape.
pub async fn wait_metric_zero(
    server: &dot_proxy::server::Server,
    prefix: &str,
    within: std::time::Duration,
) -> String {
    wait_metric_where(server, prefix, "", within, |v| v == 0.0).await
}

/// Waits until `n` reloads in all ended with `result` (`success` or `failure`), as
/// `dot_proxy_config_reloads_total` counts them.
pub async fn wait_reloads(server: &dot_proxy::server::Server, result: &str, n: u32) -> String {
    wait_metric(
        server,
        "dot_proxy_config_reloads_total",
        &format!("result=\"{result}\""),
        f64::from(n),
    )
    .await
}

/// The reloads so far that ended with `result`.
pub async fn reloads(server: &dot_proxy::server::Server, result: &str) -> u32 {
    let text = scrape(server).await;
    metric_with(
        &text,
        "dot_proxy_config_reloads_total",
        &format!("result=\"{result}\""),
    ) as u32
}
