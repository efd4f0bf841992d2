//! A fake Kubernetes API server: answers the list of a node's pods, and holds watches open
//! (chunked, with no event), enough for the proxy's pod watch.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One pod of a `PodList`: `name` in `namespace` on `node`, at `ip`.
pub fn pod(
    name: &str,
    namespace: &str,
    node: &str,
    ip: &str,
    host_network: bool,
) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "3"},
        "spec": {"nodeName": node, "hostNetwork": host_network},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// A `PodList` of `pods`.
pub fn pod_list(pods: Vec<serde_json::Value>) -> String {
    serde_json::json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "7"}, "items": pods})
    .to_string()
}

/// Serves `list` (a `PodList`) on `listener` to requests selecting `node`'s pods; a watch
/// is answered and then held open until the client goes.
pub async fn api_server(listener: TcpListener, node: String, list: String) {
    while let Ok((mut s, _)) = listener.accept().await {
        let (node, list) = (node.clone(), list.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            loop {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                assert!(
                    target.contains(&format!("fieldSelector=spec.nodeName%3D{node}")),
                    "{target}"
                );
                if target.contains("watch=true") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await;
                    // Held open, silent, until the client closes it.
                    let _ = s.read(&mut chunk).await;
                    return;
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{list}",
                    list.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
