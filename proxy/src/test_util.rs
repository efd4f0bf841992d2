//! DNS messages for tests, built with hickory-proto: shared by this crate's unit tests and
//! the test kit (`proxy/testkit`, which turns on the `fuzzing` feature). Not in the
//! production build.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::rdata::svcb::{IpHint, SvcParamKey, SvcParamValue, SVCB};
use hickory_proto::rr::rdata::{A, AAAA, HTTPS};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// A query (RD set) for `name` and `qtype`, with `edns` as its OPT record when given.
pub fn query(id: u16, name: &str, qtype: RecordType, edns: Option<Edns>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let mut q = Query::new();
    q.set_name(Name::from_ascii(name).expect("name"))
        .set_query_type(qtype)
        .set_query_class(DNSClass::IN);
    m.add_query(q);
    if let Some(e) = edns {
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

/// An OPT record: UDP size `size`, the DO bit, and with `ecs` a client subnet option for
/// 192.0.2.0/24.
pub fn edns(size: u16, dnssec_ok: bool, ecs: bool) -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(size);
    e.set_dnssec_ok(dnssec_ok);
    if ecs {
        let subnet = ClientSubnet::new("192.0.2.0".parse().expect("ip"), 24, 0);
        e.options_mut().insert(EdnsOption::Subnet(subnet));
    }
    e
}

/// The EDNS option codes of a message.
pub fn option_codes(m: &Message) -> Vec<u16> {
    let options = m.edns.as_ref().expect("edns").options();
    options
        .as_ref()
        .iter()
        .map(|(c, _)| u16::from(*c))
        .collect()
}

/// An HTTPS record for `name` with both address hints (192.0.2.1 and 2001:db8::1), so the
/// removal of the IPv6 one can be seen.
pub fn https_with_both_hints(name: Name, ttl: u32) -> Record {
    let v4 = IpHint(vec![A::new(192, 0, 2, 1)]);
    let v6 = IpHint(vec![AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)]);
    let params = vec![
        (SvcParamKey::Ipv4Hint, SvcParamValue::Ipv4Hint(v4)),
        (SvcParamKey::Ipv6Hint, SvcParamValue::Ipv6Hint(v6)),
    ];
    let svcb = SVCB::new(1, Name::root(), params);
    Record::from_rdata(name, ttl, RData::HTTPS(HTTPS(svcb)))
}
