//! The reconciler against a mocked API server (tower-test): every request it sends is checked
//! for method, URI and body, in the style of kube-rs's `ApiServerVerifier`. The mock keeps the
//! ConfigMaps and status it was given, so scenarios follow each other like on a real cluster.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dot_proxy_config::Config;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::*;
use crate::cluster::{NodeLabels, PodInfo, Snapshot};
use crate::render::{sha256_hex, shard_of};
use crate::resource::DotProxyConfigStatus;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

const NS: &str = "dot-proxy";
const CM_PATH: &str = "/api/v1/namespaces/dot-proxy/configmaps";
const LIST: &str = "GET /api/v1/namespaces/dot-proxy/configmaps?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Ddot-proxy-operator%2Cdns.dot-proxy.io%2Fconfig%3Ddefault";
const APPLY: &str = "?&force=true&fieldManager=dot-proxy-operator";
const STATUS: &str = "PATCH /apis/dns.dot-proxy.io/v1alpha1/namespaces/dot-proxy/dotproxyconfigs/default/status?&force=true&fieldManager=dot-proxy-operator";
const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/apps/events?";

/// One request the reconciler sent.
#[derive(Debug)]
struct Sent {
    /// `METHOD uri`, e.g. `PATCH /api/v1/namespaces/ns/configmaps/x?&force=true...`.
    line: String,
    content_type: Option<String>,
    body: Value,
}

/// A fake API server: ConfigMaps, the resource's status and Events, kept between requests.
struct FakeApi {
    handle: Handle,
    config_maps: BTreeMap<String, Value>,
    status: Option<Value>,
    /// The status last written for each resource, by name (`status` is "default"'s).
    statuses: BTreeMap<String, Value>,
    /// Each resource's resourceVersion (1 until its status is first written).
    versions: BTreeMap<String, u64>,
    fail_patches: bool,
    /// GETs of one ConfigMap answer 403 (a Role that does not name it).
    forbid_gets: bool,
}

impl FakeApi {
    /// Serves requests until `fut` completes; returns its output and what was sent.
    async fn serve_while<F: Future>(&mut self, fut: F) -> (F::Output, Vec<Sent>) {
        let mut fut = std::pin::pin!(fut);
        let mut sent = Vec::new();
        let run = async {
            loop {
                let next = tokio::select! {
                    out = &mut fut => Err(out),
                    req = self.handle.next_request() => Ok(req),
                };
                match next {
                    Err(out) => return out,
                    Ok(Some((req, respond))) => sent.push(self.answer(req, respond).await),
                    Ok(None) => panic!("the client went away mid-reconcile"),
                }
            }
        };
        let out = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("reconcile finished in time");
        (out, sent)
    }

    async fn answer(&mut self, req: Request<Body>, respond: Responder) -> Sent {
        let method = req.method().clone();
        let line = format!("{method} {}", req.uri());
        let path = req.uri().path().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // `k=v,k=v` of a label selector, as the reconciler sends it (the fake lists only
        // what matches, like the API server).
        let req_labels: Option<Vec<(String, String)>> = req.uri().query().and_then(|q| {
            let sel = q
                .split('&')
                .find_map(|p| p.strip_prefix("labelSelector="))?;
            let sel = sel
                .replace("%2F", "/")
                .replace("%3D", "=")
                .replace("%2C", ",");
            Some(
                sel.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        });
        let bytes = req.into_body().collect_bytes().await.expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };

        let cm_name = path
            .strip_prefix(CM_PATH)
            .and_then(|r| r.strip_prefix('/'))
            .map(str::to_string);
        let (code, reply) = match (&method, cm_name) {
            (&Method::GET, None) if path == CM_PATH => {
                let selector = req_labels.unwrap_or_default();
                let items: Vec<Value> = self
                    .config_maps
                    .values()
                    .filter(|cm| {
                        selector
                            .iter()
                            .all(|(k, v)| cm["metadata"]["labels"][k] == *v.as_str())
                    })
                    .cloned()
                    .collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "7"}, "items": items}),
                )
            }
            (&Method::GET, Some(_)) if self.forbid_gets => (
                StatusCode::FORBIDDEN,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                       "message": "configmaps \"x\" is forbidden: User cannot get resource"}),
            ),
            (&Method::GET, Some(name)) => match self.config_maps.get(&name) {
                Some(cm) => (StatusCode::OK, cm.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                ),
            },
            (&Method::PATCH, Some(_)) if self.fail_patches => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500}),
            ),
            (&Method::PATCH, Some(name)) => {
                self.config_maps.insert(name, body.clone());
                (StatusCode::OK, body.clone())
            }
            (&Method::DELETE, Some(name)) => {
                self.config_maps.remove(&name);
                (
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            }
            (&Method::PATCH, None)
                if path.ends_with("/status") && path.contains("/dotproxyconfigs/") =>
            {
                let name = path.rsplit('/').nth(1).unwrap_or_default().to_string();
                let version = self.versions.entry(name.clone()).or_insert(1);
                // An apply that names a resourceVersion is refused when it is not the
                // current one (optimistic concurrency, as the API server does).
                if let Some(rv) = body["metadata"]["resourceVersion"].as_str() {
                    if rv != version.to_string() {
                        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                                              "message": "the object has been modified"});
                        respond.send_response(
                            Response::builder()
                                .status(StatusCode::CONFLICT)
                                .body(Body::from(serde_json::to_vec(&conflict).expect("json")))
                                .expect("response"),
                        );
                        return Sent {
                            line,
                            content_type,
                            body,
                        };
                    }
                }
                *version += 1;
                self.statuses.insert(name.clone(), body["status"].clone());
                if name == "default" {
                    self.status = body.get("status").cloned();
                }
                let mut obj = serde_json::to_value(dpc(1)).expect("json");
                obj["metadata"]["name"] = json!(name);
                obj["status"] = body["status"].clone();
                (StatusCode::OK, obj)
            }
            (&Method::POST, None) if path.ends_with("/events") => {
                (StatusCode::CREATED, body.clone())
            }
            _ => (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            ),
        };
        let response = Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&reply).expect("json")))
            .expect("response");
        respond.send_response(response);
        Sent {
            line,
            content_type,
            body,
        }
    }

    /// The resource as the watch would deliver it next: with the status last written.
    fn resource(
        &self,
        generation: i64,
        spec: impl FnOnce(&mut DotProxyConfig),
    ) -> Arc<DotProxyConfig> {
        let mut d = dpc(generation);
        spec(&mut d);
        d.status = self
            .status
            .clone()
            .map(|s| serde_json::from_value::<DotProxyConfigStatus>(s).expect("status"));
        Arc::new(d)
    }
}

fn dpc(generation: i64) -> DotProxyConfig {
    let mut d: DotProxyConfig =
        serde_saphyr::from_str(include_str!("../../../examples/dotproxyconfig.yaml"))
            .expect("example");
    d.metadata.uid = Some("uid-1".into());
    d.metadata.generation = Some(generation);
    d.spec.target.override_shards = 2;
    d
}

fn fixed_now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("time"))
}

fn pod(name: &str, node: &str, ip: &str, ann: &[(&str, &str)]) -> PodInfo {
    PodInfo::scheduled("apps", name, node, &[ip], ann)
}

fn snapshot(pods: Vec<PodInfo>) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        synced: true,
        pods,
        nodes: NodeLabels::new(),
        namespaces: Default::default(),
    })
}

struct Setup {
    api: FakeApi,
    ctx: Arc<Context>,
    view: watch::Sender<Arc<Snapshot>>,
}

fn setup(initial: Arc<Snapshot>) -> Setup {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (view, rx) = watch::channel(initial);
    let ctx = Arc::new(Context::with_clock(
        client,
        rx,
        Arc::new(Metrics::default()),
        fixed_now,
    ));
    Setup {
        api: FakeApi {
            handle,
            config_maps: BTreeMap::new(),
            status: None,
            statuses: BTreeMap::new(),
            versions: BTreeMap::new(),
            fail_patches: false,
            forbid_gets: false,
        },
        ctx,
        view,
    }
}

fn lines(sent: &[Sent]) -> Vec<&str> {
    sent.iter().map(|s| s.line.as_str()).collect()
}

fn cm_get(name: &str) -> String {
    format!("GET {CM_PATH}/{name}")
}

/// The GETs of names not yet labeled as the resource's (the ownership check before a
/// first write) are asserted, then left out, so the writes keep their places.
fn after_gets(sent: Vec<Sent>, names: &[&str]) -> Vec<Sent> {
    let gets: Vec<&str> = sent
        .iter()
        .filter(|s| s.line.starts_with(&format!("GET {CM_PATH}/")))
        .map(|s| s.line.as_str())
        .collect();
    let want: Vec<String> = names.iter().map(|n| cm_get(n)).collect();
    assert_eq!(gets, want, "the ownership check GETs each new name once");
    sent.into_iter()
        .filter(|s| !s.line.starts_with(&format!("GET {CM_PATH}/")))
        .collect()
}

const ALL3: [&str; 3] = [
    "dot-proxy-config",
    "dot-proxy-config-overrides-0",
    "dot-proxy-config-overrides-1",
];

/// What a reconcile that applies everything sends: the LIST, the main ConfigMap and
/// `shards` override shards applied, then `then`.
fn requests(shards: usize, then: &[&str]) -> Vec<String> {
    let mut want = vec![LIST.to_string(), cm_patch("dot-proxy-config")];
    want.extend((0..shards).map(|i| cm_patch(&format!("dot-proxy-config-overrides-{i}"))));
    want.extend(then.iter().map(|s| s.to_string()));
    want
}

/// What a reconcile that changes only `node`'s shard sends: the LIST, that shard, the status.
fn shard_update(node: &str) -> [String; 3] {
    [LIST.to_string(), shard_patch(node), STATUS.to_string()]
}

fn cm_patch(name: &str) -> String {
    format!("PATCH {CM_PATH}/{name}{APPLY}")
}

fn shard_patch(node: &str) -> String {
    cm_patch(&format!("dot-proxy-config-overrides-{}", shard_of(node, 2)))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .expect("condition present")
}

const QPS: &str = "dns.dot-proxy.io/qps";

/// The overrides file a shard patch (of two shards) carries for `node`.
fn patched_shard(patch: &Sent, node: &str) -> dot_proxy_config::OverridesFile {
    let text = patch.body["data"][format!("shard-{}.yaml", shard_of(node, 2))]
        .as_str()
        .expect("shard");
    crate::render::parse_shard(text).expect("parses")
}

#[tokio::test]
async fn create_noop_update_pod_churn_invalid_and_back() {
    let web1 = pod("web-1", "node-a", "10.244.1.10", &[(QPS, "50")]);
    let broken = pod("broken", "node-a", "10.244.1.11", &[(QPS, "fast")]);
    let Setup { mut api, ctx, view } = setup(snapshot(vec![web1.clone(), broken.clone()]));

    // 1. Create: one LIST, the main ConfigMap and both shards applied, an Event on the pod
    //    with the bad annotation, then the status.
    let d = api.resource(1, |_| {});
    let (action, sent) = api.serve_while(reconcile(d, ctx.clone())).await;
    let sent = after_gets(sent, &ALL3);
    assert_eq!(
        action.expect("reconciled"),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(lines(&sent), requests(2, &[EVENT, STATUS]));
    for s in &sent[1..4] {
        assert_eq!(
            s.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "server-side apply"
        );
    }

    let main = &sent[1].body;
    assert_eq!(
        (main["apiVersion"].as_str(), main["kind"].as_str()),
        (Some("v1"), Some("ConfigMap"))
    );
    assert_eq!(main["metadata"]["namespace"], NS);
    assert_eq!(
        main["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "dot-proxy-operator"
    );
    assert_eq!(
        main["metadata"]["labels"]["dns.dot-proxy.io/config"],
        "default"
    );
    assert_eq!(
        main["metadata"]["labels"]["dns.dot-proxy.io/role"],
        "config"
    );
    let owner = &main["metadata"]["ownerReferences"][0];
    assert_eq!(owner["apiVersion"], "dns.dot-proxy.io/v1alpha1");
    assert_eq!(owner["kind"], "DotProxyConfig");
    assert_eq!(owner["name"], "default");
    assert_eq!(owner["uid"], "uid-1");
    assert_eq!(owner["controller"], true);
    let data = main["data"].as_object().expect("data");
    assert_eq!(data.len(), 1);
    let config_yaml = data["config.yaml"].as_str().expect("config.yaml");
    let hash = sha256_hex(config_yaml.as_bytes());
    assert_eq!(
        main["metadata"]["annotations"]["dns.dot-proxy.io/config-hash"],
        hash.as_str()
    );
    let cfg = Config::from_yaml(config_yaml).expect("the proxy parses what was written");
    cfg.validate().expect("and validates it");
    assert_eq!(
        cfg.overrides.dir.as_deref(),
        Some(std::path::Path::new("/etc/dot-proxy/overrides"))
    );

    let a_shard = shard_of("node-a", 2) as usize;
    for (i, s) in sent[2..4].iter().enumerate() {
        let key = format!("shard-{i}.yaml");
        let text = s.body["data"][&key].as_str().expect("shard key");
        assert_eq!(
            s.body["metadata"]["annotations"]["dns.dot-proxy.io/config-hash"],
            sha256_hex(text.as_bytes()).as_str()
        );
        assert_eq!(
            s.body["metadata"]["labels"]["dns.dot-proxy.io/role"],
            "overrides"
        );
        let file = crate::render::parse_shard(text).expect("shard parses");
        if i == a_shard {
            let cidrs: Vec<_> = file["node-a"]
                .rate_limits
                .iter()
                .map(|o| (o.cidr.to_string(), o.qps))
                .collect();
            assert_eq!(
                cidrs,
                [("10.244.1.10/32".to_string(), Some(50.0))],
                "the broken pod has no entry"
            );
        } else {
            assert!(file.is_empty());
        }
    }

    let ev = &sent[4].body;
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "InvalidAnnotation");
    assert_eq!(ev["reportingController"], "dot-proxy-operator");
    assert_eq!(ev["regarding"]["kind"], "Pod");
    assert_eq!(ev["regarding"]["name"], "broken");
    assert_eq!(ev["regarding"]["uid"], "uid-broken");
    let note = ev["note"].as_str().expect("note");
    assert!(
        note.contains("dns.dot-proxy.io/qps=\"fast\" ignored")
            && note.contains("DotProxyConfig dot-proxy/default"),
        "{note}"
    );

    let st = &sent[5].body;
    assert_eq!(st["apiVersion"], "dns.dot-proxy.io/v1alpha1");
    assert_eq!(st["kind"], "DotProxyConfig");
    let status = &st["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["configMap"], "dot-proxy-config");
    assert_eq!(status["configHash"], hash.as_str());
    assert_eq!(
        status["overrideConfigMaps"],
        json!([
            "dot-proxy-config-overrides-0",
            "dot-proxy-config-overrides-1"
        ])
    );
    assert_eq!(status["podOverrides"], 1);
    assert_eq!(status["podsWithInvalidAnnotations"], 1);
    let ready = condition(status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("True"), &json!("Rendered"))
    );
    assert_eq!(ready["lastTransitionTime"], "2023-11-14T22:13:20Z");
    assert_eq!(condition(status, "Invalid")["status"], "False");

    // 2. Nothing changed: one LIST, no write, and no second Event for the same pod.
    let d = api.resource(1, |_| {});
    let (_, sent) = api.serve_while(reconcile(d, ctx.clone())).await;
    assert_eq!(lines(&sent), [LIST]);

    // 3. A spec change: only the main ConfigMap (the shards are the same), then the status.
    let d = api.resource(2, |d| d.spec.cache.max_ttl = 600);
    let (_, sent) = api.serve_while(reconcile(d, ctx.clone())).await;
    assert_eq!(lines(&sent), requests(0, &[STATUS]));
    let new_hash = sent[2].body["status"]["configHash"]
        .as_str()
        .expect("hash")
        .to_string();
    assert_ne!(new_hash, hash);
    assert!(sent[1].body["data"]["config.yaml"]
        .as_str()
        .expect("data")
        .contains("max_ttl: 600"));
    assert_eq!(sent[2].body["status"]["observedGeneration"], 2);
    let spec2 = |d: &mut DotProxyConfig| d.spec.cache.max_ttl = 600;

    // 4. A pod added on another node: only that node's shard, then the status.
    let web2 = pod(
        "web-2",
        "node-b",
        "10.244.2.20",
        &[("dns.dot-proxy.io/upstream-group", "cloudflare")],
    );
    view.send_replace(snapshot(vec![web1.clone(), broken.clone(), web2.clone()]));
    let (_, sent) = api
        .serve_while(reconcile(api.resource(2, spec2), ctx.clone()))
        .await;
    assert_eq!(lines(&sent), shard_update("node-b"));
    let file = patched_shard(&sent[1], "node-b");
    let groups: Vec<_> = file["node-b"]
        .client_groups
        .iter()
        .map(|c| (c.cidr.to_string(), c.group.as_str()))
        .collect();
    assert_eq!(groups, [("10.244.2.20/32".to_string(), "cloudflare")]);
    assert_eq!(sent[2].body["status"]["podOverrides"], 2);

    // 5. A pod deleted: its node's shard loses the entry.
    view.send_replace(snapshot(vec![broken.clone(), web2.clone()]));
    let (_, sent) = api
        .serve_while(reconcile(api.resource(2, spec2), ctx.clone()))
        .await;
    assert_eq!(lines(&sent), shard_update("node-a"));
    assert!(!patched_shard(&sent[1], "node-a").contains_key("node-a"));
    assert_eq!(sent[2].body["status"]["podOverrides"], 1);

    // 6. An invalid spec (plain DNS for "." without the opt-in): only the status; the
    //    ConfigMaps keep the last good content.
    let before = api.config_maps.clone();
    let invalid = |d: &mut DotProxyConfig| {
        d.spec.cache.max_ttl = 600;
        d.spec.zones[0].group = "cluster".into();
    };
    let (action, sent) = api
        .serve_while(reconcile(api.resource(3, invalid), ctx.clone()))
        .await;
    assert_eq!(
        action.expect("an invalid resource is not an error"),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(lines(&sent), [STATUS]);
    assert_eq!(api.config_maps, before);
    let status = &sent[0].body["status"];
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(
        status["configHash"],
        new_hash.as_str(),
        "still the last good config"
    );
    let inv = condition(status, "Invalid");
    assert_eq!(
        (&inv["status"], &inv["reason"]),
        (&json!("True"), &json!("InvalidSpec"))
    );
    let msg = inv["message"].as_str().expect("message");
    assert!(
        msg.contains("spec.zones[0].group") && msg.contains("spec.allowPlainDefault: true"),
        "{msg}"
    );
    let ready = condition(status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("InvalidSpec"))
    );

    // 7. Still invalid, same message: nothing at all is sent.
    let (_, sent) = api
        .serve_while(reconcile(api.resource(3, invalid), ctx.clone()))
        .await;
    assert!(sent.is_empty(), "{:?}", lines(&sent));

    // 8. Fixed again (same content as the last good one): no ConfigMap write, Ready again.
    let (_, sent) = api
        .serve_while(reconcile(api.resource(4, spec2), ctx.clone()))
        .await;
    assert_eq!(lines(&sent), [LIST, STATUS]);
    assert_eq!(
        condition(&sent[1].body["status"], "Ready")["status"],
        "True"
    );
    assert_eq!(api.config_maps, before);
}

#[tokio::test]
async fn nothing_is_written_before_the_pod_view_syncs() {
    let Setup { mut api, ctx, .. } = setup(Arc::new(Snapshot::default()));
    let (action, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    assert_eq!(
        action.expect("waits"),
        Action::requeue(Duration::from_secs(5))
    );
    assert!(sent.is_empty(), "{:?}", lines(&sent));
}

#[tokio::test]
async fn fewer_shards_delete_the_extra_ones_and_hand_edits_are_undone() {
    let web = pod("web", "node-a", "10.244.1.10", &[(QPS, "5")]);
    let Setup { mut api, ctx, .. } = setup(snapshot(vec![web]));
    let (_, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    let sent = after_gets(sent, &ALL3);
    assert_eq!(sent.len(), 5, "{:?}", lines(&sent));

    // Someone edits the main ConfigMap by hand: it is applied again.
    api.config_maps
        .get_mut("dot-proxy-config")
        .expect("written")["data"]["config.yaml"] = json!("listen: []\n");
    let (_, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    assert_eq!(
        lines(&sent),
        [LIST.to_string(), cm_patch("dot-proxy-config")]
    );

    // One shard instead of two: shard 1 is deleted, everything lands in shard 0.
    let one = |d: &mut DotProxyConfig| d.spec.target.override_shards = 1;
    let (_, sent) = api
        .serve_while(reconcile(api.resource(2, one), ctx.clone()))
        .await;
    // config.yaml carries the shard count (overrides.shards: each proxy reads only its
    // own shard), so it is rewritten first.
    let mut want = vec![LIST.to_string(), cm_patch("dot-proxy-config")];
    if shard_of("node-a", 2) == 1 {
        want.push(cm_patch("dot-proxy-config-overrides-0"));
    }
    want.push(format!("DELETE {CM_PATH}/dot-proxy-config-overrides-1?"));
    want.push(STATUS.to_string());
    assert_eq!(lines(&sent), want);
    assert_eq!(
        api.config_maps.keys().collect::<Vec<_>>(),
        ["dot-proxy-config", "dot-proxy-config-overrides-0"]
    );
    assert_eq!(
        api.status.as_ref().expect("status")["overrideConfigMaps"],
        json!(["dot-proxy-config-overrides-0"])
    );
}

#[tokio::test]
async fn a_failed_write_is_an_error_for_retry() {
    let Setup { mut api, ctx, .. } = setup(snapshot(vec![]));
    api.fail_patches = true;
    let d = api.resource(1, |_| {});
    let (result, sent) = api.serve_while(reconcile(d.clone(), ctx.clone())).await;
    let sent = after_gets(sent, &ALL3);
    // The failure is said in the status too: Ready must not keep saying the config is
    // written when it is not.
    assert_eq!(lines(&sent), requests(0, &[STATUS]));
    let status = api.status.clone().expect("status written");
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .expect("Ready condition");
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "WriteFailed", "{ready}");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("dot-proxy-config") && m.contains("etcdserver")),
        "{ready}"
    );
    let err = result.expect_err("the 500 is returned");
    assert!(err.to_string().contains("etcdserver"), "{err}");
    assert_eq!(
        error_policy(d, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(15))
    );
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("dot_proxy_operator_reconcile_errors_total 1"),
        "{metrics}"
    );
}

/// Issue 27, part 3: enough annotated pods to overflow every shard must not freeze the
/// operator: the main ConfigMap is still written.
#[tokio::test]
async fn a_shard_overflow_still_writes_the_main_config_map() {
    let pods: Vec<PodInfo> = (0..12_000u32)
        .map(|i| {
            let ip = format!("10.200.{}.{}", i / 250, i % 250);
            pod(
                &format!("p{i:05}"),
                &format!("node-{}", i % 100),
                &ip,
                &[
                    (QPS, "10"),
                    ("dns.dot-proxy.io/burst", "20"),
                    ("dns.dot-proxy.io/upstream-group", "cloudflare"),
                ],
            )
        })
        .collect();
    let Setup { mut api, ctx, .. } = setup(snapshot(pods));
    let one = |d: &mut DotProxyConfig| {
        d.spec.target.override_shards = 1;
        d.spec.target.max_override_shards = None;
    };
    let (action, sent) = api
        .serve_while(reconcile(api.resource(1, one), ctx.clone()))
        .await;
    let sent = after_gets(sent, &ALL3[..2]);
    action.expect("reconciled");
    assert_eq!(lines(&sent), requests(1, &[STATUS]));
    let status = api.status.clone().expect("status");
    let cut = status["overridesTruncated"].as_u64().expect("count");
    assert!(cut > 0, "{status}");
    assert_eq!(status["podOverrides"].as_u64(), Some(12_000 - cut));
    let ready = condition(&status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("True"), &json!("Rendered"))
    );
    let t = condition(&status, "OverridesTruncated");
    assert_eq!(
        (&t["status"], &t["reason"]),
        (&json!("True"), &json!("ShardFull"))
    );
    let msg = t["message"].as_str().expect("message");
    assert!(
        msg.starts_with(&format!("the overrides of {cut} pod(s)")),
        "{msg}"
    );
    assert!(msg.contains("maxOverrideShards"), "{msg}");
    assert_eq!(condition(&status, "Invalid")["status"], "False");

    // Room to grow: the shard count doubles, config.yaml names it, nothing is left out.
    let grow = |d: &mut DotProxyConfig| {
        d.spec.target.override_shards = 1;
        d.spec.target.max_override_shards = Some(4);
    };
    let (_, sent) = api
        .serve_while(reconcile(api.resource(2, grow), ctx.clone()))
        .await;
    let sent = after_gets(sent, &ALL3[2..]);
    assert_eq!(lines(&sent), requests(2, &[STATUS]));
    let cfg = Config::from_yaml(
        sent[1].body["data"]["config.yaml"]
            .as_str()
            .expect("config"),
    )
    .expect("parses");
    assert_eq!(cfg.overrides.shards, Some(2));
    let status = api.status.clone().expect("status");
    assert_eq!(status["overridesTruncated"], 0);
    assert_eq!(status["podOverrides"], 12_000);
    assert_eq!(condition(&status, "OverridesTruncated")["status"], "False");
}

/// Issue 27, part 2: a namespace not granted exemption stays limited: the shard has no
/// exemption for the pod, and the pod gets a Warning Event.
#[tokio::test]
async fn an_ungranted_exemption_stays_limited_and_is_reported() {
    let sneaky = pod(
        "sneaky",
        "node-a",
        "10.244.1.10",
        &[("dns.dot-proxy.io/rate-limit-exempt", "true")],
    );
    let Setup { mut api, ctx, view } = setup(snapshot(vec![sneaky.clone()]));
    let (action, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    action.expect("reconciled");
    for (name, cm) in &api.config_maps {
        if let Some(text) = cm["data"][format!("shard-{}.yaml", shard_of("node-a", 2))].as_str() {
            let file = crate::render::parse_shard(text).expect("parses");
            assert!(
                file.get("node-a")
                    .is_none_or(|o| o.rate_limits.iter().all(|r| !r.exempt)),
                "{name}: {text}"
            );
        }
    }
    let events: Vec<&Sent> = sent.iter().filter(|s| s.line == EVENT).collect();
    assert_eq!(events.len(), 1, "{:?}", lines(&sent));
    let ev = &events[0].body;
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["name"], "sneaky");
    assert_eq!(ev["reason"], "AnnotationNotGranted");
    let note = ev["note"].as_str().expect("note");
    assert!(
        note.contains("dns.dot-proxy.io/rate-limit-exempt") && note.contains("not granted"),
        "{note}"
    );
    // The status counts the pod; its refused annotation is not an invalid one.
    let status = api.status.clone().expect("status");
    assert_eq!(status["podsWithRefusedAnnotations"], 1, "{status}");
    assert_eq!(status["podsWithInvalidAnnotations"], 0, "{status}");
    assert_eq!(status["podOverrides"], 0, "nothing it asked for is applied");

    // Granted by a namespace label (the namespace watch's view): exempt, no new Event.
    let granted = |d: &mut DotProxyConfig| {
        d.spec
            .annotation_grants
            .rate_limit_exempt
            .namespace_selector = Some(
            serde_json::from_value(json!({"matchLabels": {"dns.dot-proxy.io/exempt": "yes"}}))
                .expect("selector"),
        );
    };
    view.send_replace(Arc::new(Snapshot {
        namespaces: [(
            "apps".to_string(),
            [("dns.dot-proxy.io/exempt".to_string(), "yes".to_string())].into(),
        )]
        .into(),
        ..(*snapshot(vec![sneaky])).clone()
    }));
    let (_, sent) = api
        .serve_while(reconcile(api.resource(2, granted), ctx.clone()))
        .await;
    assert!(sent.iter().all(|s| s.line != EVENT), "{:?}", lines(&sent));
    let shard = format!("dot-proxy-config-overrides-{}", shard_of("node-a", 2));
    let text = api.config_maps[&shard]["data"][format!("shard-{}.yaml", shard_of("node-a", 2))]
        .as_str()
        .expect("shard")
        .to_string();
    let file = crate::render::parse_shard(&text).expect("parses");
    assert!(file["node-a"].rate_limits[0].exempt, "{text}");
    let status = api.status.clone().expect("status");
    assert_eq!(status["podsWithRefusedAnnotations"], 0, "{status}");
    assert_eq!(status["podOverrides"], 1, "{status}");
}

/// Issue 33: with the API server out of reach (no watch ever syncs), the controller still
/// stops once shutdown completes, within its grace (it never stopped before, so SIGTERM
/// left the operator running). Under paused time: the shutdown, grace and the watches'
/// backoff are timers; the unreachable API server answers at once (connection refused).
#[tokio::test(start_paused = true)]
async fn stops_on_shutdown_with_the_api_server_out_of_reach() {
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let config = kube::Config::new(
        format!("http://{unreachable}")
            .parse()
            .expect("cluster url"),
    );
    let client = Client::try_from(config).expect("client");
    let opts = RunOptions {
        namespace: Some(NS.into()),
        release: None,
        debounce: Duration::from_millis(10),
        stop_grace: Duration::from_millis(500),
    };
    let run = super::run(
        client,
        opts,
        Arc::new(crate::metrics::Metrics::default()),
        Arc::new(crate::admin::Health::default()),
        tokio::time::sleep(Duration::from_millis(200)),
    );
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the controller stopped after shutdown");
}

mod ownership;
mod releases;
mod unknown_fields;
