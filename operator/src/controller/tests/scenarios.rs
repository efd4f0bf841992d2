//! More reconcile scenarios against the mocked API server (the harness is in `mod.rs`).

use super::*;

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
    // The failure is said in the status too: Ready must not keep saying the config is
    // written when it is not.
    assert_eq!(
        lines(&sent),
        [
            LIST.to_string(),
            cm_patch("dot-proxy-config"),
            STATUS.to_string()
        ]
    );
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
    action.expect("reconciled");
    assert_eq!(
        lines(&sent),
        [
            LIST.to_string(),
            cm_patch("dot-proxy-config"),
            cm_patch("dot-proxy-config-overrides-0"),
            STATUS.to_string()
        ]
    );
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
    assert_eq!(
        lines(&sent),
        [
            LIST.to_string(),
            cm_patch("dot-proxy-config"),
            cm_patch("dot-proxy-config-overrides-0"),
            cm_patch("dot-proxy-config-overrides-1"),
            STATUS.to_string()
        ]
    );
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

/// Issue 32: a rolled-back operator meets an object written under a newer CRD. The fields it
/// does not know (at the top and inside sections) are left out, everything else is applied,
/// and the status names them.
#[tokio::test]
async fn fields_of_a_newer_crd_are_ignored_and_reported() {
    let Setup { mut api, ctx, .. } = setup(snapshot(Vec::new()));
    // The object as the watch delivers it: JSON from the API server, decoded by this build.
    let mut doc = serde_json::to_value(dpc(1)).expect("json");
    doc["spec"]["hedging"] = json!({"after": "50ms"});
    doc["spec"]["cache"]["shards"] = json!(16);
    doc["spec"]["upstreamGroups"][0]["servers"][0]["ech"] = json!(true);
    let newer: DotProxyConfig = serde_json::from_value(doc).expect("decodes");
    let (action, sent) = api
        .serve_while(reconcile(Arc::new(newer), ctx.clone()))
        .await;
    action.expect("reconciled");
    assert_eq!(
        lines(&sent),
        [
            LIST.to_string(),
            cm_patch("dot-proxy-config"),
            cm_patch("dot-proxy-config-overrides-0"),
            cm_patch("dot-proxy-config-overrides-1"),
            STATUS.to_string(),
        ]
    );
    let status = api.status.clone().expect("status");
    assert_eq!(
        condition(&status, "Ready")["status"],
        "True",
        "the known fields are applied"
    );
    assert_eq!(
        status["unknownFields"],
        json!([
            "spec.cache.shards",
            "spec.hedging",
            "spec.upstreamGroups[0].servers[0].ech"
        ])
    );
    // Without them, the list is gone from the status.
    let (action, _) = api
        .serve_while(reconcile(api.resource(2, |_| {}), ctx.clone()))
        .await;
    action.expect("reconciled");
    let status = api.status.clone().expect("status");
    assert!(status.get("unknownFields").is_none(), "{status}");
}
