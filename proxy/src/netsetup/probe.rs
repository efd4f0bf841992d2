//! Asks the DNS server on a node-local address whether it answers.
//!
//! The probe is a DNS message with opcode STATUS (2) and no question. Any server answers
//! it at once (dot-proxy, CoreDNS and Unbound reply NOTIMP) without asking an upstream, so
//! the probe says whether the process serves the address, not whether the internet works.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A DNS response with our ID.
    Answered,
    /// ICMP port unreachable: nothing listens on the address.
    Refused,
    /// No answer in time.
    Timeout,
    /// The probe could not be sent (no route, address not local yet, ...).
    Failed,
}

impl Outcome {
    pub fn answered(self) -> bool {
        self == Outcome::Answered
    }
}

/// The probe message: ID, then flags with opcode STATUS, then four zero counts.
pub fn message(id: u16) -> [u8; 12] {
    let [hi, lo] = id.to_be_bytes();
    [hi, lo, 0x10, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// Whether `resp` is a response (QR set) to the message with `id`.
pub fn is_answer(resp: &[u8], id: u16) -> bool {
    resp.len() >= 12 && u16::from_be_bytes([resp[0], resp[1]]) == id && resp[2] & 0x80 != 0
}

/// Sends one probe to `target` and waits up to `timeout` for the answer.
pub async fn probe(target: SocketAddr, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, exchange(target)).await {
        Ok(Ok(())) => Outcome::Answered,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %target, "probe not sent");
            Outcome::Failed
        }
        Err(_) => Outcome::Timeout,
    }
}

async fn exchange(target: SocketAddr) -> std::io::Result<()> {
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    // Connected: the kernel then reports ICMP port unreachable as ECONNREFUSED.
    sock.connect(target).await?;
    let id: u16 = rand::random();
    sock.send(&message(id)).await?;
    let mut buf = [0u8; 512];
    loop {
        let n = sock.recv(&mut buf).await?;
        if is_answer(&buf[..n], id) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_a_status_query_without_question() {
        let m = message(0xabcd);
        assert_eq!(&m[..2], &[0xab, 0xcd]);
        assert_eq!((m[2] >> 3) & 0x0f, 2, "opcode STATUS");
        assert_eq!(m[2] & 0x80, 0, "a query");
        assert!(m[4..].iter().all(|&b| b == 0));
    }

    #[test]
    fn only_a_response_with_our_id_counts() {
        let mut r = message(7).to_vec();
        assert!(
            !is_answer(&r, 7),
            "our own query echoed back is not an answer"
        );
        r[2] |= 0x80;
        assert!(is_answer(&r, 7));
        assert!(!is_answer(&r, 8));
        assert!(!is_answer(&r[..11], 7));
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_at_once() {
        // Bind then drop to find a port nothing listens on.
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.local_addr().expect("addr").port()
        };
        let out = probe(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(out, Outcome::Refused);
    }

    #[tokio::test]
    async fn a_server_answer_counts() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            if let Ok((n, from)) = server.recv_from(&mut buf).await {
                buf[2] |= 0x80;
                let _ = server.send_to(&buf[..n], from).await;
            }
        });
        assert_eq!(probe(addr, Duration::from_secs(2)).await, Outcome::Answered);
    }
}
