//! The rules that let DNS traffic to and from the node-local addresses skip connection
//! tracking (NOTRACK), as NodeLocal DNSCache installs them: no conntrack entry per query,
//! so no conntrack table pressure and none of the insertion races behind 5-second DNS
//! timeouts. NOTRACK rules never redirect or drop anything, so rules left behind by a
//! killed process are harmless.

mod command;
pub mod iptables;
pub mod nftables;

use std::net::IpAddr;
use std::time::Duration;

use crate::config::Firewall;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    #[error("{program} not found: install it in the image, or set node_local.firewall")]
    Missing { program: String },
    #[error("`{command}` failed (exit {status:?}): {stderr}")]
    Failed {
        command: String,
        status: Option<i32>,
        stderr: String,
    },
    #[error("{program} did not finish within {after:?}")]
    Timeout { program: String, after: Duration },
    #[error("{program}: {source}")]
    Io {
        program: String,
        source: std::io::Error,
    },
    #[error("node_local.firewall is {0:?} but it is not usable here (is the tool installed, and the kernel module loaded?)")]
    Unusable(Firewall),
}

impl FirewallError {
    pub fn is_permission(&self) -> bool {
        matches!(self, FirewallError::Failed { stderr, .. }
            if stderr.contains("Operation not permitted") || stderr.contains("Permission denied"))
    }
}

/// The tool that manages the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        })
    }
}

impl Backend {
    /// Picks the backend for a `node_local.firewall` setting: `auto` prefers nftables
    /// (kube-proxy's nftables mode leaves no iptables at all, kubernetes/dns#682) and falls
    /// back to iptables; `Ok(None)` means no rules (`none`, or `auto` with neither tool).
    pub async fn choose(setting: Firewall) -> Result<Option<Backend>, FirewallError> {
        match setting {
            Firewall::None => Ok(None),
            Firewall::Nftables if nftables::available().await => Ok(Some(Backend::Nftables)),
            Firewall::Iptables if iptables::available().await => Ok(Some(Backend::Iptables)),
            Firewall::Nftables | Firewall::Iptables => Err(FirewallError::Unusable(setting)),
            Firewall::Auto => {
                if nftables::available().await {
                    Ok(Some(Backend::Nftables))
                } else if iptables::available().await {
                    Ok(Some(Backend::Iptables))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Makes the rules exactly those for `addrs` (an empty list removes them).
    pub async fn apply(self, addrs: &[IpAddr], port: u16) -> Result<(), FirewallError> {
        match self {
            Backend::Nftables => nftables::apply(addrs, port).await,
            Backend::Iptables => iptables::apply(addrs, port).await,
        }
    }

    pub async fn remove(self) -> Result<(), FirewallError> {
        self.apply(&[], 0).await
    }

    /// Whether the installed rules are exactly those for `addrs`.
    pub async fn verify(self, addrs: &[IpAddr], port: u16) -> Result<bool, FirewallError> {
        match self {
            Backend::Nftables => nftables::verify(addrs, port).await,
            Backend::Iptables => iptables::verify(addrs, port).await,
        }
    }
}

/// Removes our rules from every backend whose tool is present, whatever the current
/// setting (it may have changed since they were installed). Returns what was cleaned.
pub async fn remove_everywhere() -> Result<Vec<&'static str>, FirewallError> {
    let mut cleaned = Vec::new();
    if nftables::available().await && nftables::list().await?.is_some() {
        nftables::remove().await?;
        cleaned.push("nftables table inet dot_proxy_notrack");
    }
    for (fam, what) in [
        (iptables::V4, "iptables chain DOT-PROXY-NOTRACK"),
        (iptables::V6, "ip6tables chain DOT-PROXY-NOTRACK"),
    ] {
        match iptables::save(fam).await {
            Ok(state) if state.chain_exists || !state.jumps.is_empty() => {
                iptables::apply_family(fam, &[], 0).await?;
                cleaned.push(what);
            }
            Ok(_) | Err(FirewallError::Missing { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, tool = fam.save, "cannot read the raw table; skipped")
            }
        }
    }
    Ok(cleaned)
}
