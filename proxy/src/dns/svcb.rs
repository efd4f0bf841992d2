//! HTTPS and SVCB answers without `ipv6hint` (`filter_aaaa`): a client in an IPv4-only
//! cluster would otherwise try addresses it cannot reach.

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::svcb::SvcParamKey;
use hickory_proto::rr::RData;

/// The response with every `ipv6hint` removed from its HTTPS and SVCB records; `None` when
/// there is none to remove or the message does not parse (then it is used as it came).
pub fn without_ipv6_hints(resp: &[u8]) -> Option<Vec<u8>> {
    let mut m = Message::from_vec(resp).ok()?;
    let mut removed = false;
    for r in m
        .answers
        .iter_mut()
        .chain(m.additionals.iter_mut())
        .chain(m.authorities.iter_mut())
    {
        let svcb = match &mut r.data {
            RData::HTTPS(h) => &mut h.0,
            RData::SVCB(s) => s,
            _ => continue,
        };
        let before = svcb.svc_params.len();
        svcb.svc_params.retain(|(k, _)| *k != SvcParamKey::Ipv6Hint);
        removed |= svcb.svc_params.len() != before;
    }
    if removed {
        m.to_vec().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    #[test]
    fn removes_ipv6_hints_only() {
        let name = Name::from_ascii("example.com.").expect("name");
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name.clone(), RecordType::HTTPS));
        m.add_answer(crate::test_util::https_with_both_hints(name, 300));
        let bytes = m.to_vec().expect("wire");
        let out = without_ipv6_hints(&bytes).expect("changed");
        let back = Message::from_vec(&out).expect("parses");
        let RData::HTTPS(h) = &back.answers[0].data else {
            panic!("HTTPS record expected");
        };
        let keys: Vec<_> = h.0.svc_params.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![SvcParamKey::Ipv4Hint]);
        assert_eq!(back.metadata.id, 7);
        assert!(without_ipv6_hints(&out).is_none(), "nothing left to remove");
        assert!(without_ipv6_hints(b"garbage").is_none());
    }
}
