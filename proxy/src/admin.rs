//! The HTTP admin server (hyper): `/metrics` (OpenMetrics text), `/healthz` (the process
//! serves), `/readyz` (config loaded and a usable server in the group serving `.`), and `/debug/hot` (the names
//! kept hot by prefetch: query names, so answered only to loopback clients).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin server needs from the running proxy.
pub trait AdminState: Send + Sync + 'static {
    fn metrics_text(&self) -> String;
    fn ready(&self) -> Result<(), String>;
    fn hot_names(&self) -> String;
}

pub async fn serve(listener: TcpListener, state: Arc<dyn AdminState>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            // Stop first: once told to stop, accept nothing more.
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, state.as_ref(), peer.ip().is_loopback())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

fn route(req: &Request<Incoming>, state: &dyn AdminState, local: bool) -> Response<Full<Bytes>> {
    let text = |code: StatusCode, body: String, ctype: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    match req.uri().path() {
        "/metrics" => {
            // Prometheus asks for OpenMetrics; anything else (curl, promtool) gets the
            // classic text format.
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept.contains("application/openmetrics-text") {
                text(
                    StatusCode::OK,
                    state.metrics_text(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                text(
                    StatusCode::OK,
                    crate::metrics::to_prometheus_text(&state.metrics_text()),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }
        }
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => match state.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into(), "text/plain"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        // Query names: only for a client on the same host (kubectl exec, or the node).
        "/debug/hot" if local => text(StatusCode::OK, state.hot_names(), "application/json"),
        "/debug/hot" => text(
            StatusCode::FORBIDDEN,
            "only from loopback\n".into(),
            "text/plain",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}
