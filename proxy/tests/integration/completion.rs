//! Search-path completion and AAAA filtering through a real proxy: a stand-in cluster DNS
//! (plain UDP, in process) serving `cluster.local` and a host search domain, the DoT
//! upstream for everything else, and the pod table filled as the pod watch fills it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dot_proxy::config::Config;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::cluster_dns::{completion_config, ClusterDns};
use crate::support::*;

fn pods(entries: &[(&str, &str)]) -> HashMap<IpAddr, Arc<str>> {
    entries
        .iter()
        .map(|(ip, ns)| (ip.parse().expect("ip"), Arc::from(*ns)))
        .collect()
}

/// The stand-in cluster DNS, the DoT upstream, and a proxy with completion `on` (and
/// `change` applied to its config) that knows 127.0.0.1 as a pod of `team-a`.
struct Rig {
    dns: Arc<ClusterDns>,
    up: Arc<Upstream>,
    p: Proxy,
}

async fn rig(on: bool, change: impl FnOnce(&mut Config)) -> Rig {
    let dns = ClusterDns::start().await;
    let up = Upstream::start().await;
    let mut cfg = completion_config(&up, dns.addr, on);
    change(&mut cfg);
    let p = Proxy::start(cfg).await;
    p.server.pods().replace(pods(&[("127.0.0.1", "team-a")]));
    Rig { dns, up, p }
}

/// An external name as a pod of `team-a` asks it first, through its own search domain.
const ASKED: &str = "www.example.test.team-a.svc.cluster.local.";

/// What the stand-in is asked, in order, when completion walks `ASKED` (A): the asked name,
/// svc.<cd>, <cd>, then the host domain.
const WALK: [&str; 4] = [
    "www.example.test.team-a.svc.cluster.local. A",
    "www.example.test.svc.cluster.local. A",
    "www.example.test.cluster.local. A",
    "www.example.test.corp.internal. A",
];

fn cname_target(m: &Message) -> Option<String> {
    m.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) => Some(c.0.to_ascii()),
        _ => None,
    })
}

#[tokio::test]
async fn completes_a_pods_search_list_at_the_node() {
    let Rig { dns, p, .. } = rig(true, |_| {}).await;

    // An external name through the pod's first search domain: one answer, a CNAME to
    // the bare name and its address.
    let m = p.ask(ASKED).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.queries[0].name().to_ascii(), ASKED);
    assert_eq!(cname_target(&m).as_deref(), Some("www.example.test."));
    assert_eq!(a_records(&m), vec![std::net::Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(
        m.answers[0].ttl <= 5,
        "CNAME capped by the walked NXDOMAINs' 5 s"
    );
    // The walk asked the stand-in what the client would have: svc.<cd>, <cd>, the host
    // domain, in order.
    let asked = dns.asked.lock().expect("lock").clone();
    assert_eq!(asked, WALK);
    // AAAA: the bare name has no AAAA: a CNAME and NODATA (with the SOA), as the client's
    // own walk would have ended there too.
    let m = udp(p.addr, ASKED, RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(cname_target(&m).as_deref(), Some("www.example.test."));
    assert_eq!(m.answers.len(), 1);
    assert!(!m.authorities.is_empty(), "SOA of the NODATA kept");

    // Another namespace's service, and a name in a host search domain.
    let m = p.ask("db.other.team-a.svc.cluster.local.").await;
    assert_eq!(
        cname_target(&m).as_deref(),
        Some("db.other.svc.cluster.local.")
    );
    assert_eq!(a_records(&m), vec![std::net::Ipv4Addr::new(10, 96, 0, 11)]);
    let m = p.ask("intranet.team-a.svc.cluster.local.").await;
    assert_eq!(cname_target(&m).as_deref(), Some("intranet.corp.internal."));

    // Names that exist are answered as they are, without a CNAME.
    for name in [
        "web.team-a.svc.cluster.local.",
        "web-0.web.team-a.svc.cluster.local.",
    ] {
        let m = p.ask(name).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(cname_target(&m), None, "{name}");
        assert_eq!(m.answers.len(), 1, "{name}");
    }
    // A name that exists nowhere: NXDOMAIN.
    p.assert_rcode(
        "nothing-here.team-a.svc.cluster.local.",
        ResponseCode::NXDomain,
    )
    .await;

    p.assert_metrics(&[
        (
            "dot_proxy_search_completions_total",
            "result=\"completed\"",
            4.0,
        ),
        (
            "dot_proxy_search_completions_total",
            "result=\"nxdomain\"",
            1.0,
        ),
        // www: 4 steps (A), 4 (AAAA); db.other: 1; intranet: 3; nothing-here: 4.
        ("dot_proxy_search_completion_steps_total", "", 16.0),
        ("dot_proxy_search_completion_queries_saved_total", "", 12.0),
    ])
    .await;

    // Asked again: every step is a cache hit, the stand-in sees nothing new.
    let before = dns.queries.load(Ordering::SeqCst);
    let m = p.ask(ASKED).await;
    assert_eq!(cname_target(&m).as_deref(), Some("www.example.test."));
    assert_eq!(dns.queries.load(Ordering::SeqCst), before);
}

/// A query that completion applies to is looked up in the cache once, and counted once:
/// the cache counters stay a true hit ratio with completion on.
#[tokio::test]
async fn an_eligible_query_counts_one_cache_lookup() {
    let Rig { p, .. } = rig(true, |_| {}).await;
    let counts = |text: &str| {
        (
            metric(text, "dot_proxy_cache_hits_total"),
            metric(text, "dot_proxy_cache_misses_total"),
        )
    };
    let before = counts(&p.metrics().await);
    // A name that exists as asked: no walk, one miss, then one hit.
    p.assert_rcode("web.team-a.svc.cluster.local.", ResponseCode::NoError)
        .await;
    let (hits, misses) = counts(&p.metrics().await);
    assert_eq!(
        (hits - before.0, misses - before.1),
        (0.0, 1.0),
        "first ask"
    );
    let m = p.ask("web.team-a.svc.cluster.local.").await;
    assert_eq!(m.answers.len(), 1);
    let (hits, misses) = counts(&p.metrics().await);
    assert_eq!(
        (hits - before.0, misses - before.1),
        (1.0, 1.0),
        "second ask"
    );
}

#[tokio::test]
async fn other_clients_and_other_domains_are_answered_as_without_completion() {
    let Rig { dns, up, p } = rig(true, |_| {}).await;
    let steps = |t: &str| metric(t, "dot_proxy_search_completion_steps_total");

    // Unknown client: no pod has 127.0.0.1.
    p.server.pods().replace(pods(&[("10.1.0.5", "team-a")]));
    p.assert_rcode(ASKED, ResponseCode::NXDomain).await;
    assert_eq!(steps(&p.metrics().await), 0.0);

    // Known client, but a name under another namespace's domain, a type not completed, a
    // DNSSEC query: as asked.
    p.server.pods().replace(pods(&[("127.0.0.1", "team-a")]));
    p.assert_rcode(
        "www.example.test.other.svc.cluster.local.",
        ResponseCode::NXDomain,
    )
    .await;
    assert_rcode(p.addr, ASKED, RecordType::TXT, ResponseCode::NXDomain).await;
    let q = query(7, ASKED, RecordType::A, Some((1232, true)));
    let m = Message::from_vec(&udp_raw_answer(p.addr, q).await).expect("answer");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(steps(&p.metrics().await), 0.0);

    // Off: the pod's own domain is answered as asked.
    let off = Proxy::start(completion_config(&up, dns.addr, false)).await;
    off.server.pods().replace(pods(&[("127.0.0.1", "team-a")]));
    off.assert_rcode(ASKED, ResponseCode::NXDomain).await;
}

#[tokio::test]
async fn a_failing_step_gives_the_client_its_own_walk_back() {
    // The upstream answers SERVFAIL: the walk reaches the host domain (the stand-in), then
    // the bare name fails: the client gets the asked name's NXDOMAIN and walks itself.
    let Rig { up, p, .. } = rig(true, |_| {}).await;
    up.behaviour.servfail.store(true, Ordering::SeqCst);
    let m = p.ask(ASKED).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(!m.authorities.is_empty(), "the NXDOMAIN's own SOA");
    p.assert_metrics(&[(
        "dot_proxy_search_completions_total",
        "result=\"abandoned\"",
        1.0,
    )])
    .await;
}

#[tokio::test]
async fn filter_aaaa_answers_nodata_in_its_zones() {
    let Rig { dns, up, p } = rig(false, |cfg| {
        cfg.filter_aaaa.zones = vec!["example.test".into()];
    })
    .await;
    let before = up.query_count();
    let m = udp(p.addr, "www.example.test.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(up.query_count(), before, "answered at the node");
    // A is untouched, and AAAA outside the zones goes upstream.
    let m = p.ask("www.example.test.").await;
    assert_eq!(a_records(&m).len(), 1);
    assert_rcode(
        p.addr,
        "web.team-a.svc.cluster.local.",
        RecordType::AAAA,
        ResponseCode::NoError,
    )
    .await;
    assert!(dns
        .asked
        .lock()
        .expect("lock")
        .iter()
        .any(|q| q == "web.team-a.svc.cluster.local. AAAA"));
    p.assert_metrics(&[(
        "dot_proxy_policy_actions_total",
        "rule=\"filter_aaaa\"",
        1.0,
    )])
    .await;
}

/// HTTPS answers in a filter_aaaa zone lose their ipv6hint (and keep the IPv4 one), from the
/// upstream and from the cache alike; outside the zones they are untouched.
#[tokio::test]
async fn filter_aaaa_strips_ipv6_hints_from_https_answers() {
    use hickory_proto::rr::rdata::svcb::SvcParamKey;
    fn hint_keys(m: &Message) -> Vec<SvcParamKey> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::HTTPS(h) => Some(h.0.svc_params.iter().map(|(k, _)| *k)),
                _ => None,
            })
            .flatten()
            .collect()
    }
    let up = Upstream::start().await;
    let mut cfg = config_for(vec![up.server()]);
    cfg.filter_aaaa.zones = vec!["filtered.example.test".into()];
    let p = Proxy::start(cfg).await;
    for round in ["from the upstream", "from the cache"] {
        let m = udp(p.addr, "www.filtered.example.test.", RecordType::HTTPS).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{round}");
        assert_eq!(hint_keys(&m), vec![SvcParamKey::Ipv4Hint], "{round}");
        let m = udp(p.addr, "www.example.test.", RecordType::HTTPS).await;
        assert_eq!(
            hint_keys(&m),
            vec![SvcParamKey::Ipv4Hint, SvcParamKey::Ipv6Hint],
            "outside the zones, {round}"
        );
    }
    assert_eq!(up.query_count(), 2, "the second round came from the cache");
}

#[tokio::test]
async fn completion_follows_reloads_and_the_watch_restarts_with_the_process() {
    let Rig { dns, up, p } = rig(false, |_| {}).await;
    let name = ASKED;
    p.assert_rcode(name, ResponseCode::NXDomain).await;
    // Reloaded configs keep the bound addresses.
    let config = |on: bool| {
        let mut c = completion_config(&up, dns.addr, on);
        p.keep_addresses(&mut c);
        c
    };

    p.server
        .apply(config(true))
        .expect("reload turns completion on");
    let m = p.ask(name).await;
    assert_eq!(cname_target(&m).as_deref(), Some("www.example.test."));

    // The pod watch is set up at start: a change of the kubernetes section is reported as
    // waiting for a restart; completion keeps working with the table it has.
    let mut cfg = config(true);
    cfg.kubernetes.node_name = Some("node-b".into());
    p.server.apply(cfg).expect("reload");
    p.assert_metrics(&[("dot_proxy_config_restart_pending_settings", "", 1.0)])
        .await;
    let m = p.ask(name).await;
    assert_eq!(cname_target(&m).as_deref(), Some("www.example.test."));

    p.server
        .apply(config(false))
        .expect("reload turns completion off");
    p.assert_rcode(name, ResponseCode::NXDomain).await;
}

/// A hot name that completion applies to, cached as NXDOMAIN, is prefetched before it
/// expires like any hot name. (The cache lookup that grants a prefetch marks the entry as
/// refreshing; this path once dropped the grant, so the mark stayed and the name was never
/// refreshed again, fresh or stale.)
#[tokio::test]
async fn a_hot_name_that_completion_walks_is_prefetched() {
    let Rig { dns, p, .. } = rig(true, |_| {}).await;
    let asked_count = |dns: &ClusterDns| {
        let asked = dns.asked.lock().expect("lock").clone();
        asked
            .iter()
            .filter(|q| q.as_str() == format!("{ASKED} A"))
            .count()
    };
    p.assert_rcode(ASKED, ResponseCode::NoError).await;
    assert_eq!(asked_count(&dns), 1);
    // Asked often (prefetch.min_hits is 5), and again in the last second of the asked
    // name's 5 s negative TTL: that hit is granted a prefetch.
    for _ in 0..6 {
        p.ask(ASKED).await;
    }
    p.server
        .clock
        .advance(std::time::Duration::from_millis(4200));
    for _ in 0..3 {
        p.assert_rcode(ASKED, ResponseCode::NoError).await;
    }
    until(
        "the asked name refreshed before it expired",
        std::time::Duration::from_secs(1),
        || async { asked_count(&dns) >= 2 },
    )
    .await;
}

/// Issue 27: each step of a completion walk takes a token from the client's bucket, so one
/// query cannot become five upstream queries for the price of one. A walk that runs out
/// of tokens ends with the asked name's own NXDOMAIN (the client walks the rest itself,
/// and is limited there as anywhere).
#[tokio::test]
async fn each_completion_step_takes_a_token() {
    let Rig { dns, p, .. } = rig(true, |cfg| {
        cfg.rate_limit.enabled = true;
        cfg.rate_limit.qps = 0.1;
        // The query itself and two steps: the walk stops before its third step.
        cfg.rate_limit.burst = 3;
    })
    .await;
    let m = p.ask(ASKED).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(cname_target(&m), None);
    let asked = dns.asked.lock().expect("lock").clone();
    assert_eq!(asked, WALK[..3], "two steps paid for, the third not taken");
    let text = p
        .assert_metrics(&[(
            "dot_proxy_search_completions_total",
            "result=\"abandoned\"",
            1.0,
        )])
        .await;
    assert!(
        metric(&text, "dot_proxy_rate_limited_total") >= 1.0,
        "{text}"
    );
}
