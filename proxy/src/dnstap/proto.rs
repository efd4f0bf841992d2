//! The dnstap schema (dnstap.proto from dnstap.info), the messages this proxy writes,
//! declared with prost's derive: no build script or protoc needed.

use bytes::Bytes;

/// The frame's content type, agreed in the Frame Streams handshake.
pub const CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dnstap {
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub identity: Option<Bytes>,
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub version: Option<Bytes>,
    #[prost(message, optional, tag = "14")]
    pub message: Option<Message>,
    #[prost(enumeration = "DnstapType", required, tag = "15")]
    pub r#type: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DnstapType {
    Message = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(enumeration = "MessageType", required, tag = "1")]
    pub r#type: i32,
    #[prost(enumeration = "SocketFamily", optional, tag = "2")]
    pub socket_family: Option<i32>,
    #[prost(enumeration = "SocketProtocol", optional, tag = "3")]
    pub socket_protocol: Option<i32>,
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub query_address: Option<Bytes>,
    #[prost(bytes = "bytes", optional, tag = "5")]
    pub response_address: Option<Bytes>,
    #[prost(uint32, optional, tag = "6")]
    pub query_port: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub response_port: Option<u32>,
    #[prost(uint64, optional, tag = "8")]
    pub query_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "9")]
    pub query_time_nsec: Option<u32>,
    #[prost(bytes = "bytes", optional, tag = "10")]
    pub query_message: Option<Bytes>,
    #[prost(uint64, optional, tag = "12")]
    pub response_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "13")]
    pub response_time_nsec: Option<u32>,
    #[prost(bytes = "bytes", optional, tag = "14")]
    pub response_message: Option<Bytes>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MessageType {
    ClientQuery = 5,
    ClientResponse = 6,
    ForwarderQuery = 7,
    ForwarderResponse = 8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SocketFamily {
    Inet = 1,
    Inet6 = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SocketProtocol {
    Udp = 1,
    Tcp = 2,
    Dot = 3,
    Doh = 4,
    Doq = 7,
}
