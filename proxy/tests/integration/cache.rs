//! The answer cache, with time moved by the test through the proxy's injected clock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::*;

fn adv(p: &Proxy, secs: u64) {
    p.server.clock.advance(Duration::from_secs(secs));
}

/// An A query for `name` over UDP.
async fn ask(p: &Proxy, name: &str) -> Message {
    p.ask(name).await
}

async fn rcode_of(p: &Proxy, name: &str) -> ResponseCode {
    ask(p, name).await.metadata.response_code
}

/// The TTL of the first answer record.
async fn ttl_of(p: &Proxy, name: &str) -> u32 {
    ask(p, name).await.answers[0].ttl
}

/// `secs` later, asks for each of `labels` under `example.test`; then fails unless the
/// upstream has been asked `n` queries in all.
async fn later(p: &Proxy, up: &Upstream, secs: u64, labels: &[&str], n: usize, why: &str) {
    adv(p, secs);
    for label in labels {
        ask(p, &format!("{label}.example.test.")).await;
    }
    assert_asked(up, n, why);
}

/// Fails unless the upstream has been asked `n` queries in all.
#[track_caller]
fn assert_asked(up: &Upstream, n: usize, why: &str) {
    assert_eq!(up.query_count(), n, "upstream queries: {why}");
}

#[tokio::test]
async fn ttls_count_down_and_expiry_refetches() {
    let (up, p) = start_with(|_| {}).await;
    let m = ask(&p, "ttl100.example.test.").await;
    assert_eq!(m.answers[0].ttl, 100);
    adv(&p, 40);
    let m = ask(&p, "ttl100.example.test.").await;
    assert_eq!(m.answers[0].ttl, 60, "TTL counts down");
    assert_asked(&up, 1, "served from cache");
    adv(&p, 61);
    let m = ask(&p, "ttl100.example.test.").await;
    assert_eq!(m.answers[0].ttl, 100);
    assert_asked(&up, 2, "expired: asked again");
}

#[tokio::test]
async fn negative_answers_cached_from_the_soa() {
    let (up, p) = start_with(|_| {}).await;
    // SOA TTL 60, MINIMUM 30: cached for 30 s (RFC 2308).
    assert_eq!(
        rcode_of(&p, "nxcache.example.test.").await,
        ResponseCode::NXDomain
    );
    adv(&p, 29);
    let m = ask(&p, "nxcache.example.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        m.authorities[0].ttl, 1,
        "SOA TTL counts down from the negative TTL"
    );
    assert_asked(&up, 1, "");
    adv(&p, 2);
    ask(&p, "nxcache.example.test.").await;
    assert_asked(&up, 2, "");
    // NODATA too.
    ask(&p, "nodata.example.test.").await;
    ask(&p, "nodata.example.test.").await;
    assert_asked(&up, 3, "");
}

#[tokio::test]
async fn ttl_clamps() {
    let (up, p) = start_with(|cfg| {
        cfg.cache.min_ttl = 60;
        cfg.cache.max_ttl = 120;
        cfg.cache.negative_max_ttl = 10;
    })
    .await;
    assert_eq!(ttl_of(&p, "ttl5.example.test.").await, 60);
    assert_eq!(ttl_of(&p, "ttl900.example.test.").await, 120);
    ask(&p, "nxclamp.example.test.").await;
    later(&p, &up, 59, &["ttl5"], 3, "short TTL kept for min_ttl").await;
    let why = "min_ttl over, negative cap (10 s) over";
    later(&p, &up, 2, &["ttl5", "nxclamp"], 5, why).await;
    later(&p, &up, 60, &["ttl900"], 6, "long TTL capped at max_ttl").await;
}

/// `cache.zones`: names under a zone get its clamps (the longest zone wins), others the
/// cache-wide ones.
#[tokio::test]
async fn per_zone_ttl_clamps() {
    let (up, p) = start_with(|cfg| {
        cfg.cache.zones = vec![
            dot_proxy::config::CacheZone {
                zone: "example.test".into(),
                min_ttl: None,
                max_ttl: Some(30),
                negative_max_ttl: Some(5),
                rotate: None,
            },
            dot_proxy::config::CacheZone {
                zone: "Long.Example.Test.".into(),
                min_ttl: Some(100),
                max_ttl: None,
                negative_max_ttl: None,
                rotate: None,
            },
        ];
    })
    .await;
    assert_eq!(ttl_of(&p, "ttl900.example.test.").await, 30);
    assert_eq!(ttl_of(&p, "ttl5.long.example.test.").await, 100);
    assert_eq!(ttl_of(&p, "ttl900.long.example.test.").await, 900);
    later(&p, &up, 0, &["nxzone"], 4, "").await;
    let why = "negative answers capped at 5 s in the zone";
    later(&p, &up, 6, &["nxzone"], 5, why).await;
    let why = "30 s cap over; the longer zone's 100 s floor holds";
    later(&p, &up, 25, &["ttl900", "ttl5.long"], 6, why).await;
}

#[tokio::test]
async fn each_client_gets_its_id_and_question_case() {
    let (up, p) = start_with(|_| {}).await;
    ask(&p, "case.example.test.").await;
    let r = udp_raw(
        p.addr,
        &query(31337, "CaSe.ExAmPlE.tEsT.", RecordType::A, None),
        Duration::from_secs(2),
    )
    .await
    .expect("answer");
    let m = Message::from_vec(&r).expect("parse");
    assert_eq!(m.metadata.id, 31337);
    assert_eq!(m.queries[0].name().to_ascii(), "CaSe.ExAmPlE.tEsT.");
    assert_eq!(a_records(&m).len(), 1);
    assert_asked(&up, 1, "same cache entry, case-insensitive key");
}

#[tokio::test]
async fn do_and_cd_bits_are_part_of_the_key() {
    let (up, p) = start_with(|_| {}).await;
    let plain = query(
        1,
        "dnssec.example.test.",
        RecordType::A,
        Some((1232, false)),
    );
    let with_do = query(2, "dnssec.example.test.", RecordType::A, Some((1232, true)));
    let mut with_cd = query(
        3,
        "dnssec.example.test.",
        RecordType::A,
        Some((1232, false)),
    );
    with_cd[3] |= 0x10;
    for q in [&plain, &with_do, &with_cd, &plain, &with_do, &with_cd] {
        let r = udp_raw(p.addr, q, Duration::from_secs(2))
            .await
            .expect("answer");
        assert_eq!(r[0..2], q[0..2]);
    }
    assert_asked(&up, 3, "one upstream query per (DO, CD) combination");
    let raw = up.raw.lock().expect("lock").clone();
    let sent_do: Vec<bool> = raw
        .iter()
        .map(|r| {
            Message::from_vec(r)
                .expect("parse")
                .edns
                .map(|e| e.flags().dnssec_ok)
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(sent_do, vec![false, true, false], "DO forwarded as asked");
    assert!(
        Message::from_vec(&raw[2])
            .expect("parse")
            .metadata
            .checking_disabled,
        "CD forwarded"
    );
}

#[tokio::test]
async fn servfail_kept_briefly_and_truncated_never() {
    let (up, p) = start_with(|cfg| cfg.cache.servfail_ttl = 3).await;
    up.behaviour.servfail.store(true, Ordering::SeqCst);
    assert_eq!(
        rcode_of(&p, "sf.example.test.").await,
        ResponseCode::ServFail
    );
    up.behaviour.servfail.store(false, Ordering::SeqCst);
    assert_eq!(
        rcode_of(&p, "sf.example.test.").await,
        ResponseCode::ServFail
    );
    let n = up.query_count();
    adv(&p, 4);
    assert_eq!(
        rcode_of(&p, "sf.example.test.").await,
        ResponseCode::NoError
    );
    assert_eq!(up.query_count(), n + 1);
}

#[tokio::test]
async fn stale_answer_served_when_the_upstream_fails_then_refreshed() {
    let (up, p) =
        start_with(|cfg| cfg.upstream_groups[0].timeout = dot_proxy::config::Dur::millis(400))
            .await;
    ask(&p, "ttl10.example.test.").await;
    up.behaviour.stall.store(true, Ordering::SeqCst);
    adv(&p, 3600);
    let m = ask(&p, "ttl10.example.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers[0].ttl, 30, "stale answers carry TTL 30");
    // Beyond stale_max_age (1 day): SERVFAIL.
    adv(&p, 86_400);
    let m = ask(&p, "ttl10.example.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let metrics = p.metrics().await;
    assert!(metric(&metrics, "dot_proxy_cache_stale_answers_total") >= 1.0);
}
#[tokio::test]
async fn prefetch_keeps_a_hot_name_from_ever_missing() {
    let (up, p) = start_with(|_| {}).await;
    ask(&p, "ttl20.example.test.").await;
    let mut upstream_before = up.query_count();
    for round in 0..4 {
        // Asked often during its TTL...
        for _ in 0..3 {
            ask(&p, "ttl20.example.test.").await;
            adv(&p, 6);
        }
        // ...and at 18 s of 20, inside the last 10 %: a hit that triggers a refresh.
        for _ in 0..3 {
            let m = ask(&p, "ttl20.example.test.").await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        }
        until(
            &format!("round {round}: prefetched before expiry"),
            Duration::from_secs(1),
            || async { up.query_count() > upstream_before },
        )
        .await;
        // The refreshed answer was stored now: the next round starts here.
        upstream_before = up.query_count();
    }
    let metrics = p.metrics().await;
    assert_eq!(
        metric(&metrics, "dot_proxy_cache_misses_total"),
        1.0,
        "only the very first query missed:\n{metrics}"
    );
    assert!(metric(&metrics, "dot_proxy_cache_prefetches_total") >= 4.0);
    let (_, hot) = http_get(p.server.admin_addr().expect("admin"), "/debug/hot").await;
    assert!(
        hot.contains("ttl20.example.test."),
        "hot names listed: {hot}"
    );
}

#[tokio::test]
async fn concurrent_identical_misses_send_one_upstream_query() {
    let (up, p) = start_behaving(|b| b.delay_ms.store(300, Ordering::SeqCst)).await;
    let addr = p.addr;
    concurrently(100, |i| async move {
        let i = i as u16;
        let r = udp_raw(
            addr,
            &query(i, "coalesce.example.test.", RecordType::A, None),
            Duration::from_secs(5),
        )
        .await
        .expect("answer");
        let m = Message::from_vec(&r).expect("parse");
        assert_eq!(m.metadata.id, i);
        assert_eq!(a_records(&m).len(), 1);
    })
    .await;
    assert_asked(&up, 1, "100 identical misses, one upstream query");
}

#[tokio::test]
async fn cache_bounded_by_entries() {
    let (_up, p) = start_with(|cfg| cfg.cache.max_entries = 50).await;
    for i in 0..300 {
        ask(&p, &format!("bound{i}.example.test.")).await;
    }
    let metrics = p.metrics().await;
    let entries = metric(&metrics, "dot_proxy_cache_entries ");
    assert!(entries <= 50.0 && entries > 0.0, "entries {entries}");
    assert!(metric(&metrics, "dot_proxy_cache_evictions_total") >= 250.0);
}

/// A node cache is no authority: an upstream's AA=1 is cleared on forwarded and cached
/// answers, over UDP and TCP (Unbound, Knot Resolver and CoreDNS answer AA=0 too).
#[tokio::test]
async fn authoritative_bit_is_cleared_on_forwarded_and_cached_answers() {
    let (up, p) = start_behaving(|b| b.authoritative.store(true, Ordering::SeqCst)).await;
    for name in ["aa.example.test.", "nxaa.example.test."] {
        let fresh = ask(&p, name).await;
        let cached_udp = ask(&p, name).await;
        let cached_tcp = tcp(p.addr, name, RecordType::A).await;
        for m in [&fresh, &cached_udp, &cached_tcp] {
            assert!(!m.metadata.authoritative, "{name}: AA cleared");
        }
        assert_ne!(fresh.metadata.response_code, ResponseCode::ServFail);
    }
    assert_asked(&up, 2, "the repeats came from the cache");
    // Uncached (cache off): the forwarded answer has AA=0 as well.
    let mut cfg = config_for(vec![up.server()]);
    cfg.cache.enabled = false;
    let p = Proxy::start(cfg).await;
    let m = tcp(p.addr, "aa2.example.test.", RecordType::A).await;
    assert!(!m.metadata.authoritative);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

/// Queries that differ in RD or AD are answered apart: a non-recursive query (`dig
/// +norec`, a monitoring probe) may get a cache-only answer, a referral or a SERVFAIL from
/// the upstream, and that must never be served to the recursive queries of everyone else
/// (nor an answer's AD bit to clients that did not ask for it, RFC 6840 5.7).
#[tokio::test]
async fn rd_and_ad_bits_are_part_of_the_cache_key() {
    let (up, p) = start_with(|_| {}).await;
    let mut norec = query(1, "norec.example.test.", RecordType::A, None);
    norec[2] &= !0x01; // RD off
    udp_raw_answer(p.addr, norec).await;
    let rec = query(2, "norec.example.test.", RecordType::A, None);
    let m =
        hickory_proto::op::Message::from_vec(&udp_raw_answer(p.addr, rec).await).expect("parse");
    assert!(m.metadata.recursion_desired);
    assert_eq!(a_records(&m).len(), 1);
    assert_asked(
        &up,
        2,
        "the recursive query was not answered from the RD=0 one",
    );
    let sent: Vec<bool> = up
        .raw
        .lock()
        .expect("lock")
        .iter()
        .map(|q| q[2] & 0x01 != 0)
        .collect();
    assert_eq!(sent, [false, true], "RD passed on as asked");
    // AD: likewise apart.
    let mut ad = query(3, "norec.example.test.", RecordType::A, None);
    ad[3] |= 0x20;
    udp_raw_answer(p.addr, ad).await;
    assert_asked(&up, 3, "");
    // And each is cached under its own key.
    let rec = query(4, "norec.example.test.", RecordType::A, None);
    udp_raw_answer(p.addr, rec).await;
    assert_asked(&up, 3, "");
}

/// `cache.rotate` (on by default): each hit of a cached answer with several addresses
/// starts the list one address further (round robin), so the clients of a node spread
/// over a name's addresses; `cache.zones[].rotate: false` keeps the upstream's order.
#[tokio::test]
async fn cached_addresses_are_handed_out_in_turn() {
    let (up, p) = start_with(|cfg| {
        cfg.cache.zones = vec![dot_proxy::config::CacheZone {
            zone: "fixed.example.test".into(),
            min_ttl: None,
            max_ttl: None,
            negative_max_ttl: None,
            rotate: Some(false),
        }];
    })
    .await;
    let addresses =
        |m: &Message| -> Vec<String> { m.answers.iter().map(|r| r.data.to_string()).collect() };
    let mut first = std::collections::HashMap::<String, u32>::new();
    let mut all = None;
    for _ in 0..10_000 {
        let m = udp(p.addr, "multi.example.test.", RecordType::A).await;
        let mut got = addresses(&m);
        *first.entry(got[0].clone()).or_default() += 1;
        got.sort();
        assert_eq!(all.get_or_insert_with(|| got.clone()), &got, "same set");
    }
    assert_eq!(up.query_count(), 1, "all but the first from the cache");
    assert_eq!(first.len(), 4, "each address comes first: {first:?}");
    for (addr, n) in &first {
        assert!(
            (2_200..=2_800).contains(n),
            "{addr} first in {n} of 10,000 answers (25% ± 3%)"
        );
    }
    // AAAA turns the same way, one step per hit.
    let mut firsts = Vec::new();
    for _ in 0..4 {
        let m = udp(p.addr, "multi.example.test.", RecordType::AAAA).await;
        firsts.push(addresses(&m)[0].clone());
    }
    let mut distinct = firsts.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "four AAAA answers, four first addresses: {firsts:?}"
    );
    // A zone with rotation off: the upstream's order every time.
    for _ in 0..10 {
        let m = udp(p.addr, "multi.fixed.example.test.", RecordType::A).await;
        assert_eq!(
            addresses(&m),
            ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
        );
    }
}

/// `cache.prefer_positive`: when a cached name's refresh comes back NXDOMAIN, the positive
/// answer is kept (stale TTL, counted) until the window after its expiry has passed, then
/// the NXDOMAIN is served. It works with serve-stale off.
#[tokio::test]
async fn prefer_positive_keeps_the_last_good_answer_for_its_window() {
    let (up, p) = start_with(|cfg| {
        cfg.cache.prefer_positive = dot_proxy::config::Dur::secs(60);
        cfg.cache.stale_max_age = dot_proxy::config::Dur::secs(0);
    })
    .await;
    let name = "ttl100.example.test.";
    assert_eq!(udp(p.addr, name, RecordType::A).await.answers.len(), 1);
    up.behaviour.nxdomain.store(true, Ordering::SeqCst);
    // Expired; the upstream now says the name is gone: the last good answer, stale TTL.
    adv(&p, 101);
    let m = udp(p.addr, name, RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers[0].ttl, 30, "served as stale");
    // Still inside the window (expiry + 60 s).
    adv(&p, 58);
    let m = udp(p.addr, name, RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(up.query_count() >= 3, "the upstream is asked each time");
    let kept = metric(&p.metrics().await, "dot_proxy_cache_positive_kept_total");
    assert!(kept >= 2.0, "counted: {kept}");
    // The window is over: the NXDOMAIN.
    adv(&p, 2);
    let m = udp(p.addr, name, RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

/// Off by default: an NXDOMAIN for a cached name replaces its expired answer at once (the
/// serve-stale window is for failures only).
#[tokio::test]
async fn without_prefer_positive_an_nxdomain_replaces_the_expired_answer() {
    let (up, p) = start_with(|_| {}).await;
    let name = "ttl100.example.test.";
    udp(p.addr, name, RecordType::A).await;
    up.behaviour.nxdomain.store(true, Ordering::SeqCst);
    adv(&p, 101);
    let m = udp(p.addr, name, RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let kept = metric(&p.metrics().await, "dot_proxy_cache_positive_kept_total");
    assert_eq!(kept, 0.0);
}
