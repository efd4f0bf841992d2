//! NOTRACK rules with iptables (and ip6tables for IPv6 addresses): a chain of our own,
//! `DOT-PROXY-NOTRACK` in the raw table, jumped to from PREROUTING and OUTPUT.
//!
//! Every change is one `iptables-restore --noflush` transaction computed from an
//! `iptables-save` of the raw table: the chain is declared (so flushed) and refilled, and
//! each hook ends with exactly one jump. There is no `iptables -C` check-then-insert, which
//! piles up duplicate jumps when the check fails spuriously (kubernetes/dns#568): extra
//! jumps found in the save are deleted, by their exact text, in the same transaction.
//! When another process changes the table between save and restore, the restore fails
//! whole (a deleted rule is gone) and is retried from a new save.

use std::net::IpAddr;

use super::{command, FirewallError};

pub const CHAIN: &str = "DOT-PROXY-NOTRACK";
const JUMP: &str = "-m comment --comment \"dot-proxy node-local\" -j DOT-PROXY-NOTRACK";
const HOOKS: [&str; 2] = ["PREROUTING", "OUTPUT"];

/// The save and restore tools of one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub save: &'static str,
    pub restore: &'static str,
    v6: bool,
}

pub const V4: Family = Family {
    save: "iptables-save",
    restore: "iptables-restore",
    v6: false,
};
pub const V6: Family = Family {
    save: "ip6tables-save",
    restore: "ip6tables-restore",
    v6: true,
};

/// What a save of the raw table says about our chain and the jumps to it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RawState {
    pub chain_exists: bool,
    /// The chain's rules, as saved (`-A DOT-PROXY-NOTRACK ...`).
    pub rules: Vec<String>,
    /// Every jump to the chain, as saved (`-A PREROUTING ... -j DOT-PROXY-NOTRACK`).
    pub jumps: Vec<String>,
}

impl RawState {
    pub fn parse(save: &str) -> RawState {
        let mut st = RawState::default();
        let mut in_raw = false;
        for line in save.lines().map(str::trim) {
            if line.starts_with('*') {
                in_raw = line == "*raw";
                continue;
            }
            if !in_raw {
                continue;
            }
            if line.split_whitespace().next() == Some(&format!(":{CHAIN}")) {
                st.chain_exists = true;
            } else if line.starts_with(&format!("-A {CHAIN} ")) {
                st.rules.push(line.to_string());
            } else if line.starts_with("-A ") && line.ends_with(&format!("-j {CHAIN}")) {
                st.jumps.push(line.to_string());
            }
        }
        st
    }

    fn jumps_from(&self, hook: &str) -> impl Iterator<Item = &String> {
        let prefix = format!("-A {hook} ");
        self.jumps.iter().filter(move |j| j.starts_with(&prefix))
    }

    /// True when the state is what [`install_script`] makes for `addrs`.
    pub fn matches(&self, addrs: &[IpAddr], port: u16) -> bool {
        if addrs.is_empty() {
            return !self.chain_exists && self.jumps.is_empty();
        }
        self.chain_exists
            && HOOKS.iter().all(|h| self.jumps_from(h).count() == 1)
            && self.jumps.len() == HOOKS.len()
            && self.rules.len() == addrs.len() * 4
            && addrs.iter().all(|ip| {
                self.rules
                    .iter()
                    .filter(|r| r.contains(&format!(" {} ", cidr(ip))))
                    .count()
                    == 4
            })
            && self
                .rules
                .iter()
                .all(|r| r.contains(&format!("port {port} ")))
    }
}

fn cidr(ip: &IpAddr) -> String {
    format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
}

/// The chain's rules for `addrs` (all of one family), in the form `iptables-save` prints.
pub fn chain_rules(addrs: &[IpAddr], port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for ip in addrs {
        let c = cidr(ip);
        for proto in ["udp", "tcp"] {
            out.push(format!(
                "-A {CHAIN} -d {c} -p {proto} -m {proto} --dport {port} -j CT --notrack"
            ));
        }
        for proto in ["udp", "tcp"] {
            out.push(format!(
                "-A {CHAIN} -s {c} -p {proto} -m {proto} --sport {port} -j CT --notrack"
            ));
        }
    }
    out
}

/// The restore input that makes the chain hold exactly the rules for `addrs`, with one
/// jump from each hook. A hook that already has exactly one jump keeps it where it is.
pub fn install_script(state: &RawState, addrs: &[IpAddr], port: u16) -> String {
    let mut s = format!("*raw\n:{CHAIN} - [0:0]\n");
    for hook in HOOKS {
        let jumps: Vec<&String> = state.jumps_from(hook).collect();
        if jumps.len() == 1 {
            continue;
        }
        for j in jumps {
            s.push_str(&delete_line(j));
        }
        s.push_str(&format!("-I {hook} 1 {JUMP}\n"));
    }
    for r in chain_rules(addrs, port) {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// The restore input that deletes every jump and the chain, or `None` if there is
/// nothing to delete.
pub fn removal_script(state: &RawState) -> Option<String> {
    if !state.chain_exists && state.jumps.is_empty() {
        return None;
    }
    let mut s = String::from("*raw\n");
    for j in &state.jumps {
        s.push_str(&delete_line(j));
    }
    if state.chain_exists {
        s.push_str(&format!("-F {CHAIN}\n-X {CHAIN}\n"));
    }
    s.push_str("COMMIT\n");
    Some(s)
}

fn delete_line(saved: &str) -> String {
    format!("-D{}\n", saved.strip_prefix("-A").unwrap_or(saved))
}

pub async fn save(fam: Family) -> Result<RawState, FirewallError> {
    command::run(fam.save, &["-t", "raw"], None)
        .await
        .map(|t| RawState::parse(&t))
}

async fn restore(fam: Family, script: &str) -> Result<(), FirewallError> {
    // -w: wait for the xtables lock that kube-proxy holds while it writes.
    command::run(fam.restore, &["-w", "5", "--noflush"], Some(script))
        .await
        .map(drop)
}

/// True when `iptables-save` runs (the raw table may still be empty).
pub async fn available() -> bool {
    save(V4).await.is_ok()
}

/// Makes the rules of one family exactly those for `addrs` (none: chain and jumps gone).
pub async fn apply_family(fam: Family, addrs: &[IpAddr], port: u16) -> Result<(), FirewallError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let state = save(fam).await?;
        if state.matches(addrs, port) {
            return Ok(());
        }
        let script = if addrs.is_empty() {
            removal_script(&state)
        } else {
            Some(install_script(&state, addrs, port))
        };
        let Some(script) = script else { return Ok(()) };
        match restore(fam, &script).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 3 => {
                tracing::debug!(error = %e, "iptables-restore failed; the table changed meanwhile? retrying");
            }
            Err(e) => return Err(e),
        }
    }
}

fn of_family(addrs: &[IpAddr], fam: Family) -> Vec<IpAddr> {
    addrs
        .iter()
        .copied()
        .filter(|a| a.is_ipv6() == fam.v6)
        .collect()
}

/// Splits `addrs` by family and applies each; a family with no address is cleaned.
pub async fn apply(addrs: &[IpAddr], port: u16) -> Result<(), FirewallError> {
    for fam in [V4, V6] {
        let mine = of_family(addrs, fam);
        match apply_family(fam, &mine, port).await {
            Ok(()) => {}
            // No ip6tables on a node without IPv6 addresses to manage: nothing to clean.
            Err(FirewallError::Missing { .. }) if mine.is_empty() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub async fn verify(addrs: &[IpAddr], port: u16) -> Result<bool, FirewallError> {
    for fam in [V4, V6] {
        let mine = of_family(addrs, fam);
        match save(fam).await {
            Ok(state) if state.matches(&mine, port) => {}
            Ok(_) => return Ok(false),
            Err(FirewallError::Missing { .. }) if mine.is_empty() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DOT-PROXY-NOTRACK\nCOMMIT\n*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOT-PROXY-NOTRACK - [0:0]\n-A PREROUTING -m comment --comment \"dot-proxy node-local\" -j DOT-PROXY-NOTRACK\n-A PREROUTING -j cali-PREROUTING\n-A PREROUTING -m comment --comment \"dot-proxy node-local\" -j DOT-PROXY-NOTRACK\n-A OUTPUT -j DOT-PROXY-NOTRACK\n-A DOT-PROXY-NOTRACK -d 169.254.20.10/32 -p udp -m udp --dport 53 -j CT --notrack\nCOMMIT\n";

    fn v4() -> Vec<IpAddr> {
        vec!["169.254.20.10".parse().expect("v4")]
    }

    #[test]
    fn parse_finds_the_chain_its_rules_and_every_jump_in_raw_only() {
        let st = RawState::parse(SAVED);
        assert!(st.chain_exists);
        assert_eq!(st.rules.len(), 1);
        assert_eq!(st.jumps.len(), 3, "{:?}", st.jumps);
        assert!(!st.matches(&v4(), 53));
    }

    #[test]
    fn install_deletes_duplicate_jumps_and_keeps_a_single_one() {
        let st = RawState::parse(SAVED);
        let script = install_script(&st, &v4(), 53);
        let expected = "*raw\n:DOT-PROXY-NOTRACK - [0:0]\n\
            -D PREROUTING -m comment --comment \"dot-proxy node-local\" -j DOT-PROXY-NOTRACK\n\
            -D PREROUTING -m comment --comment \"dot-proxy node-local\" -j DOT-PROXY-NOTRACK\n\
            -I PREROUTING 1 -m comment --comment \"dot-proxy node-local\" -j DOT-PROXY-NOTRACK\n\
            -A DOT-PROXY-NOTRACK -d 169.254.20.10/32 -p udp -m udp --dport 53 -j CT --notrack\n\
            -A DOT-PROXY-NOTRACK -d 169.254.20.10/32 -p tcp -m tcp --dport 53 -j CT --notrack\n\
            -A DOT-PROXY-NOTRACK -s 169.254.20.10/32 -p udp -m udp --sport 53 -j CT --notrack\n\
            -A DOT-PROXY-NOTRACK -s 169.254.20.10/32 -p tcp -m tcp --sport 53 -j CT --notrack\n\
            COMMIT\n";
        assert_eq!(script, expected);
    }

    #[test]
    fn installed_state_matches_and_removal_undoes_it() {
        let mut saved = String::from(
            "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOT-PROXY-NOTRACK - [0:0]\n",
        );
        for hook in HOOKS {
            saved.push_str(&format!("-A {hook} {JUMP}\n"));
        }
        for r in chain_rules(&v4(), 53) {
            saved.push_str(&r);
            saved.push('\n');
        }
        saved.push_str("COMMIT\n");
        let st = RawState::parse(&saved);
        assert!(st.matches(&v4(), 53));
        assert!(!st.matches(&v4(), 54));
        assert!(!st.matches(&[], 53));
        let rm = removal_script(&st).expect("something to remove");
        assert_eq!(rm.matches("-D ").count(), 2);
        assert!(rm.contains("-X DOT-PROXY-NOTRACK\n"));
        assert_eq!(removal_script(&RawState::default()), None);
    }

    #[test]
    fn ipv6_rules_use_a_128_prefix() {
        let rules = chain_rules(&["fd00::10".parse().expect("v6")], 5353);
        assert_eq!(
            rules[0],
            "-A DOT-PROXY-NOTRACK -d fd00::10/128 -p udp -m udp --dport 5353 -j CT --notrack"
        );
    }
}
