//! The interface holding the node-local addresses, managed over rtnetlink.
//!
//! A dummy interface by default. A kernel built without the dummy driver (`CONFIG_DUMMY`;
//! some minimal VM kernels) gets an empty bridge instead: for an address the kernel
//! delivers locally the two behave the same (no traffic ever leaves through them).
//! Everything here is idempotent: running it again changes nothing.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkUnspec};

/// What `ip link` shows as the interface's alias, so an operator can tell who made it.
/// A bridge is only ever deleted when it carries this alias.
pub const OWNER_ALIAS: &str = "dot-proxy node-local";

// Linux errno values the code tells apart (netlink reports them negated).
const EPERM: i32 = 1;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    #[error("interface {name} exists and is a {kind} interface not made by dot-proxy; set node_local.interface to a free name")]
    NotOurs { name: String, kind: String },
    #[error("interface {0} vanished while it was being set up")]
    Vanished(String),
}

impl LinkError {
    /// True when the kernel refused for lack of CAP_NET_ADMIN.
    pub fn is_permission(&self) -> bool {
        matches!(self, LinkError::Netlink { source, .. } if errno(source) == Some(EPERM))
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// The kind of interface holding the addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Dummy,
    Bridge,
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkKind::Dummy => "dummy",
            LinkKind::Bridge => "bridge",
        })
    }
}

/// What [`Netlink::ensure`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    pub index: u32,
    pub kind: LinkKind,
    pub created: bool,
    pub brought_up: bool,
    pub added: Vec<IpAddr>,
}

/// An rtnetlink connection (its I/O runs as a task on the current tokio runtime).
pub struct Netlink {
    handle: Handle,
}

struct Found {
    index: u32,
    up: bool,
    kind: Option<InfoKind>,
    alias: Option<String>,
}

impl Netlink {
    pub fn connect() -> Result<Netlink, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn find(&self, name: &str) -> Result<Option<Found>, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(describe(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(source) => Err(LinkError::Netlink {
                op: format!("look up interface {name}"),
                source,
            }),
        }
    }

    /// Makes sure interface `name` exists, is up and holds every address (as /32 or /128).
    pub async fn ensure(&self, name: &str, addrs: &[IpAddr]) -> Result<Ensured, LinkError> {
        let mut created = false;
        let found = match self.find(name).await? {
            Some(f) => f,
            None => {
                self.create(name).await?;
                created = true;
                self.find(name)
                    .await?
                    .ok_or_else(|| LinkError::Vanished(name.to_string()))?
            }
        };
        let kind = owned_kind(name, &found, created)?;
        let brought_up = !found.up;
        if brought_up || found.alias.as_deref() != Some(OWNER_ALIAS) {
            let msg = LinkUnspec::new_with_index(found.index)
                .up()
                .alias(OWNER_ALIAS)
                .build();
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|source| LinkError::Netlink {
                    op: format!("bring interface {name} up"),
                    source,
                })?;
        }
        let present = self.addresses(found.index).await?;
        let mut added = Vec::new();
        for &ip in addrs {
            if present.contains(&ip) {
                continue;
            }
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            let mut req = self.handle.address().add(found.index, ip, prefix);
            if ip.is_ipv6() {
                // No duplicate address detection: the address is ours alone, and a
                // tentative address would refuse traffic for the first second or so.
                req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            }
            match req.execute().await {
                Ok(()) => added.push(ip),
                // Added meanwhile by another instance: fine.
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(source) => {
                    return Err(LinkError::Netlink {
                        op: format!("add address {ip} to interface {name}"),
                        source,
                    });
                }
            }
        }
        Ok(Ensured {
            index: found.index,
            kind,
            created,
            brought_up,
            added,
        })
    }

    async fn create(&self, name: &str) -> Result<(), LinkError> {
        let res = self
            .handle
            .link()
            .add(LinkDummy::new(name).up().build())
            .execute()
            .await;
        match res {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) if errno(&e) == Some(EOPNOTSUPP) => {
                tracing::warn!(
                    interface = name,
                    "this kernel has no dummy interface driver; using an empty bridge instead"
                );
                match self
                    .handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
                    Err(source) => Err(LinkError::Netlink {
                        op: format!("create interface {name}"),
                        source,
                    }),
                }
            }
            Err(source) => Err(LinkError::Netlink {
                op: format!("create interface {name}"),
                source,
            }),
        }
    }

    /// The addresses the interface holds.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpAddr>, LinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(msg)) => {
                    for attr in &msg.attributes {
                        if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = attr {
                            if !out.contains(ip) {
                                out.push(*ip);
                            }
                        }
                    }
                }
                Ok(None) => return Ok(out),
                Err(source) => {
                    return Err(LinkError::Netlink {
                        op: format!("list the addresses of interface #{index}"),
                        source,
                    })
                }
            }
        }
    }

    /// The interface's index and addresses, when it exists.
    pub async fn inspect(&self, name: &str) -> Result<Option<(u32, Vec<IpAddr>)>, LinkError> {
        match self.find(name).await? {
            Some(f) => Ok(Some((f.index, self.addresses(f.index).await?))),
            None => Ok(None),
        }
    }

    /// Deletes the interface (and so its addresses) when it exists and is ours. Returns
    /// whether it was deleted.
    pub async fn remove(&self, name: &str) -> Result<bool, LinkError> {
        let Some(found) = self.find(name).await? else {
            return Ok(false);
        };
        owned_kind(name, &found, false)?;
        match self.handle.link().del(found.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(source) => Err(LinkError::Netlink {
                op: format!("delete interface {name}"),
                source,
            }),
        }
    }
}

fn describe(msg: &LinkMessage) -> Found {
    let mut kind = None;
    let mut alias = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.clone());
                    }
                }
            }
            LinkAttribute::IfAlias(a) => alias = Some(a.clone()),
            _ => {}
        }
    }
    Found {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind,
        alias,
    }
}

/// Any dummy interface of the configured name is taken as ours; a bridge only when it
/// carries our alias or was created just now (the alias is set right after creation), so
/// a real bridge is never touched; anything else is refused.
fn owned_kind(name: &str, found: &Found, just_created: bool) -> Result<LinkKind, LinkError> {
    match &found.kind {
        Some(InfoKind::Dummy) => Ok(LinkKind::Dummy),
        Some(InfoKind::Bridge) if just_created || found.alias.as_deref() == Some(OWNER_ALIAS) => {
            Ok(LinkKind::Bridge)
        }
        other => Err(LinkError::NotOurs {
            name: name.to_string(),
            kind: other
                .as_ref()
                .map_or_else(|| "plain".to_string(), |k| k.to_string().to_lowercase()),
        }),
    }
}
