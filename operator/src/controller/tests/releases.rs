//! Issue 32, part 1: two releases in one namespace, each operator acting on its own
//! resources only.

use super::*;
use crate::RELEASE_LABEL;

/// A second operator on the same fake API server: its own client, served by swapping
/// handles.
fn operator(release: &str) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (_view, rx) = watch::channel(snapshot(vec![]));
    let ctx = Context::with_clock(
        Client::new(service, "default"),
        rx,
        Arc::new(Metrics::default()),
        fixed_now,
    )
    .for_release(Some(release.into()));
    (Arc::new(ctx), handle)
}

/// The resource `name` as the watch delivers it now: its release label (if any), its own
/// ConfigMap name, the status and resourceVersion the fake holds.
fn resource(api: &FakeApi, name: &str, label: Option<&str>) -> Arc<DotProxyConfig> {
    let mut d = dpc(1);
    d.metadata.name = Some(name.into());
    d.metadata.uid = Some(format!("uid-{name}"));
    d.metadata.resource_version = Some(api.versions.get(name).copied().unwrap_or(1).to_string());
    if let Some(l) = label {
        d.labels_mut().insert(RELEASE_LABEL.into(), l.into());
    }
    d.spec.target.config_map_name = format!("{name}-config");
    d.status = api
        .statuses
        .get(name)
        .map(|s| serde_json::from_value(s.clone()).expect("status"));
    Arc::new(d)
}

/// Reconciles `d` as the operator whose handle is `handle`.
async fn reconcile_as(
    api: &mut FakeApi,
    handle: &mut Handle,
    ctx: &Arc<Context>,
    d: Arc<DotProxyConfig>,
) -> (Result<Action, Error>, Vec<Sent>) {
    std::mem::swap(&mut api.handle, handle);
    let out = api.serve_while(reconcile(d, ctx.clone())).await;
    std::mem::swap(&mut api.handle, handle);
    out
}

/// Reconciles the resource `name` as the watch delivers it now.
async fn reconcile_named(
    api: &mut FakeApi,
    handle: &mut Handle,
    ctx: &Arc<Context>,
    name: &str,
    label: Option<&str>,
) -> (Result<Action, Error>, Vec<Sent>) {
    let d = resource(api, name, label);
    reconcile_as(api, handle, ctx, d).await
}

fn owner(api: &FakeApi, cm: &str) -> String {
    api.config_maps[cm]["metadata"]["ownerReferences"][0]["uid"]
        .as_str()
        .expect("owner")
        .to_string()
}

/// Fails before per-release scopes: each operator reconciled (and wrote the ConfigMaps of)
/// every resource of the namespace.
#[tokio::test]
async fn two_releases_in_one_namespace_each_reconcile_only_their_own() {
    let Setup { mut api, .. } = setup(snapshot(vec![]));
    let (a, mut ha) = operator("pool-a");
    let (b, mut hb) = operator("pool-b");

    // Operator a: its labeled resource, not b's; the unlabeled one it claims first.
    let (r, sent) = reconcile_named(&mut api, &mut ha, &a, "b", Some("pool-b")).await;
    assert_eq!(r.expect("skipped"), Action::await_change());
    assert!(
        sent.is_empty(),
        "another release's resource: {:?}",
        lines(&sent)
    );
    let (r, sent) = reconcile_named(&mut api, &mut ha, &a, "a", Some("pool-a")).await;
    r.expect("reconciled");
    assert!(
        sent.iter().any(|s| s.line == cm_patch("a-config")),
        "{:?}",
        lines(&sent)
    );
    let (r, sent) = reconcile_named(&mut api, &mut ha, &a, "hand", None).await;
    r.expect("claimed and reconciled");
    let claim = "PATCH /apis/dns.dot-proxy.io/v1alpha1/namespaces/dot-proxy/dotproxyconfigs/hand/status?&force=true&fieldManager=dot-proxy-operator";
    assert_eq!(sent[0].line, claim, "the claim comes first");
    assert_eq!(
        sent[0].body["metadata"]["resourceVersion"], "1",
        "claimed only if unchanged"
    );
    assert_eq!(sent[0].body["status"]["release"], "pool-a");
    assert!(sent.iter().any(|s| s.line == cm_patch("hand-config")));

    // Operator b: only its own; the unlabeled one is a's now.
    for name in ["a", "hand"] {
        let label = (name == "a").then_some("pool-a");
        let (r, sent) = reconcile_named(&mut api, &mut hb, &b, name, label).await;
        assert_eq!(r.expect("skipped"), Action::await_change());
        assert!(sent.is_empty(), "{name}: {:?}", lines(&sent));
    }
    let (r, sent) = reconcile_named(&mut api, &mut hb, &b, "b", Some("pool-b")).await;
    r.expect("reconciled");
    assert!(sent.iter().any(|s| s.line == cm_patch("b-config")));

    assert_eq!(owner(&api, "a-config"), "uid-a");
    assert_eq!(owner(&api, "b-config"), "uid-b");
    assert_eq!(owner(&api, "hand-config"), "uid-hand");
    for (name, release) in [("a", "pool-a"), ("b", "pool-b"), ("hand", "pool-a")] {
        assert_eq!(api.statuses[name]["release"], release, "{name}");
        assert_eq!(
            condition(&api.statuses[name], "Ready")["status"],
            "True",
            "{name}"
        );
    }
    // Each counts only its own reconciles.
    for (ctx, n) in [(&a, 2), (&b, 1)] {
        let m = ctx.metrics.encode();
        assert!(
            m.contains(&format!(
                "dot_proxy_operator_reconciles_total{{result=\"applied\"}} {n}"
            )),
            "{m}"
        );
    }

    // Both see a new unlabeled resource at once: b claims it first; a's claim (of the
    // version it read) is refused by the API server, and a writes nothing.
    let stale = resource(&api, "late", None);
    let (r, _) = reconcile_as(&mut api, &mut hb, &b, stale.clone()).await;
    r.expect("b claims it");
    let before = api.config_maps.clone();
    let (r, sent) = reconcile_as(&mut api, &mut ha, &a, stale).await;
    assert_eq!(
        r.expect("a conflict is not an error"),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        lines(&sent),
        ["PATCH /apis/dns.dot-proxy.io/v1alpha1/namespaces/dot-proxy/dotproxyconfigs/late/status?&force=true&fieldManager=dot-proxy-operator"]
    );
    assert_eq!(api.config_maps, before);
    let (r, sent) = reconcile_named(&mut api, &mut ha, &a, "late", None).await;
    assert_eq!(r.expect("skipped"), Action::await_change());
    assert!(sent.is_empty(), "{:?}", lines(&sent));
    assert_eq!(api.statuses["late"]["release"], "pool-b");
}
