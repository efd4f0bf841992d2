//! Which `dot-proxy node-local` instances run on this node for an interface.
//!
//! Each instance binds an abstract Unix socket named after the interface and a slot number.
//! Abstract names live in the network namespace, which every host-network pod shares, and
//! the kernel frees a name the moment its process dies, even by SIGKILL or the OOM
//! killer: no file, no lease, nothing to go stale. During a surge upgrade the old and the
//! new pod's instances hold two slots; the one that exits sees the other and leaves the
//! address and the rules to it.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// More instances than this for one interface would be a bug; slots past it are not used.
const SLOTS: u8 = 8;

fn name(interface: &str, slot: u8) -> String {
    format!("dot-proxy/node-local/{interface}/{slot}")
}

fn addr(interface: &str, slot: u8) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name(interface, slot).as_bytes())
}

/// This instance's registration; dropping it (or dying) frees the slot.
pub struct Presence {
    interface: String,
    slot: Option<u8>,
    _socket: Option<UnixDatagram>,
}

impl Presence {
    /// Takes the first free slot. With every slot taken the instance runs unregistered
    /// (and logs it): others will not see it, which only matters at their exit.
    pub fn register(interface: &str) -> Presence {
        for slot in 0..SLOTS {
            let Ok(a) = addr(interface, slot) else { break };
            if let Ok(sock) = UnixDatagram::bind_addr(&a) {
                return Presence {
                    interface: interface.to_string(),
                    slot: Some(slot),
                    _socket: Some(sock),
                };
            }
        }
        tracing::warn!(
            interface,
            "every presence slot is taken; this instance cannot be seen by others"
        );
        Presence {
            interface: interface.to_string(),
            slot: None,
            _socket: None,
        }
    }

    /// An observer that holds no slot (for `--cleanup`).
    pub fn observer(interface: &str) -> Presence {
        Presence {
            interface: interface.to_string(),
            slot: None,
            _socket: None,
        }
    }

    /// How many other instances hold a slot for this interface.
    pub fn others(&self) -> usize {
        (0..SLOTS)
            .filter(|&s| Some(s) != self.slot && held(&self.interface, s))
            .count()
    }
}

fn held(interface: &str, slot: u8) -> bool {
    let (Ok(a), Ok(probe)) = (addr(interface, slot), UnixDatagram::unbound()) else {
        return false;
    };
    // Connecting a datagram socket sends nothing; it fails with ECONNREFUSED when no
    // socket holds the name.
    probe.connect_addr(&a).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_see_each_other_and_a_dropped_one_is_gone() {
        let iface = format!("t{}", std::process::id());
        let a = Presence::register(&iface);
        assert_eq!(a.others(), 0);
        let b = Presence::register(&iface);
        assert_eq!(a.others(), 1);
        assert_eq!(b.others(), 1);
        assert_eq!(Presence::observer(&iface).others(), 2);
        drop(b);
        assert_eq!(a.others(), 0);
    }
}
