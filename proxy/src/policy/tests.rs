use super::*;
use crate::config::{BlockList, RewriteRule};

fn w(s: &str) -> Vec<u8> {
    zone_to_wire(s)
}

fn cfg() -> PolicyConfig {
    PolicyConfig {
        static_answers: vec![
            StaticRule {
                name: "pinned.example.com".into(),
                ttl: 60,
                a: vec!["10.0.0.1".parse().expect("ip")],
                aaaa: vec![],
                cname: None,
                txt: vec![],
            },
            StaticRule {
                name: "*.wild.example.com".into(),
                ttl: 60,
                a: vec!["10.0.0.2".parse().expect("ip")],
                aaaa: vec![],
                cname: None,
                txt: vec![],
            },
        ],
        blocklists: vec![BlockList {
            name: "ads".into(),
            names: vec!["Ads.Example.COM".into(), "tracker.test".into()],
            file: None,
            action: BlockAction::Nxdomain,
        }],
        rewrites: vec![
            RewriteRule {
                from: "legacy.example.com".into(),
                to: "new.example.net".into(),
                suffix: false,
            },
            RewriteRule {
                from: "old.corp".into(),
                to: "new.corp".into(),
                suffix: true,
            },
        ],
    }
}

#[test]
fn order_and_label_boundaries() {
    let p = Policy::new(&cfg()).expect("policy");
    assert!(matches!(
        p.check(&w("pinned.example.com")),
        Verdict::Static(_)
    ));
    assert!(matches!(
        p.check(&w("a.b.wild.example.com")),
        Verdict::Static(_)
    ));
    assert!(
        matches!(p.check(&w("wild.example.com")), Verdict::Pass),
        "a wildcard does not match its own name"
    );
    assert!(matches!(
        p.check(&w("ads.example.com")),
        Verdict::Block(BlockAction::Nxdomain)
    ));
    assert!(
        matches!(p.check(&w("x.y.ads.example.com")), Verdict::Block(_)),
        "subdomains blocked"
    );
    assert!(
        matches!(p.check(&w("bads.example.com")), Verdict::Pass),
        "label boundary"
    );
    assert!(matches!(p.check(&w("example.com")), Verdict::Pass));
    assert!(matches!(
        p.check(&w("legacy.example.com")),
        Verdict::Rewrite { .. }
    ));
    assert!(
        matches!(p.check(&w("x.legacy.example.com")), Verdict::Pass),
        "exact rewrite only"
    );
    match p.check(&w("svc.old.corp")) {
        Verdict::Rewrite { strip, to } => {
            assert_eq!(strip, w("old.corp").len());
            assert_eq!(to, &w("new.corp")[..]);
        }
        v => panic!("{v:?}"),
    }
    assert!(matches!(p.check(&w("gold.corp")), Verdict::Pass));
}

#[test]
fn hosts_and_plain_lists() {
    let mut b = BlockSet::default();
    let skipped = b.load_list("# comment\n0.0.0.0 ads.one.test tracker.one.test\n127.0.0.1 localhost\nplain.two.test # trailing\n\nbad..name\n::1 six.test\n", BlockAction::Refused);
    b.finish();
    assert_eq!(skipped, 1);
    assert_eq!(b.len(), 4);
    assert_eq!(b.matches(&w("x.ads.one.test")), Some(BlockAction::Refused));
    assert_eq!(b.matches(&w("localhost")), None);
    assert_eq!(b.matches(&w("six.test")), Some(BlockAction::Refused));
}
