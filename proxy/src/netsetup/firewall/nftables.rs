//! NOTRACK rules with nftables: one table of our own, `inet dot_proxy_notrack`, always
//! written whole in a single `nft -f` transaction (declare, delete, re-create), so it is
//! replaced atomically and can never hold duplicates, whoever ran before.

use std::fmt::Write;
use std::net::IpAddr;

use super::{command, FirewallError};

/// The table's family and name.
pub const TABLE: &str = "inet dot_proxy_notrack";

/// The conntrack hook runs at priority -200; the raw priority (-300) comes before it.
const RAW_PRIORITY: i32 = -300;

/// The whole transaction that (re)creates the table for `addrs`. Declaring the table first
/// makes the delete succeed when it does not exist yet.
pub fn ruleset(addrs: &[IpAddr], port: u16) -> String {
    let mut pre = String::new();
    let mut out = String::new();
    for ip in addrs {
        let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
        for proto in ["udp", "tcp"] {
            // Queries arriving from pods, and queries from host-network clients.
            let _ = writeln!(
                pre,
                "\t\t{fam} daddr {ip} {proto} dport {port} counter notrack"
            );
            let _ = writeln!(
                out,
                "\t\t{fam} daddr {ip} {proto} dport {port} counter notrack"
            );
        }
        for proto in ["udp", "tcp"] {
            // The proxy's answers.
            let _ = writeln!(
                out,
                "\t\t{fam} saddr {ip} {proto} sport {port} counter notrack"
            );
        }
    }
    format!(
        "table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype filter hook prerouting priority {RAW_PRIORITY}; policy accept;\n{pre}\t}}\n\
         \tchain output {{\n\t\ttype filter hook output priority {RAW_PRIORITY}; policy accept;\n{out}\t}}\n}}\n"
    )
}

/// The transaction that deletes the table, and succeeds when there is none.
pub fn removal() -> String {
    format!("table {TABLE}\ndelete table {TABLE}\n")
}

/// True when `nft` runs and the kernel has nf_tables.
pub async fn available() -> bool {
    command::run("nft", &["list", "tables"], None).await.is_ok()
}

pub async fn apply(addrs: &[IpAddr], port: u16) -> Result<(), FirewallError> {
    if addrs.is_empty() {
        return remove().await;
    }
    command::run("nft", &["-f", "-"], Some(&ruleset(addrs, port)))
        .await
        .map(drop)
}

pub async fn remove() -> Result<(), FirewallError> {
    command::run("nft", &["-f", "-"], Some(&removal()))
        .await
        .map(drop)
}

/// The table as `nft list` prints it, or `None` when it does not exist.
pub async fn list() -> Result<Option<String>, FirewallError> {
    let mut args = vec!["list", "table"];
    args.extend(TABLE.split(' '));
    match command::run("nft", &args, None).await {
        Ok(text) => Ok(Some(text)),
        Err(FirewallError::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the table holds exactly the rules [`ruleset`] writes for `addrs`.
pub async fn verify(addrs: &[IpAddr], port: u16) -> Result<bool, FirewallError> {
    let listed = list().await?;
    Ok(matches_listing(listed.as_deref(), addrs, port))
}

/// Compares a listing with what [`ruleset`] would write: the same number of `notrack`
/// rules, each address and the port present. Exact text differs between nft versions.
pub fn matches_listing(listed: Option<&str>, addrs: &[IpAddr], port: u16) -> bool {
    let Some(text) = listed else {
        return addrs.is_empty();
    };
    let rules: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with("notrack"))
        .collect();
    rules.len() == addrs.len() * 6
        && addrs.iter().all(|ip| {
            rules
                .iter()
                .filter(|r| r.contains(&format!(" {ip} ")))
                .count()
                == 6
        })
        && rules.iter().all(|r| r.contains(&format!("port {port} ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<IpAddr> {
        vec![
            "169.254.20.10".parse().expect("v4"),
            "fd00::10".parse().expect("v6"),
        ]
    }

    #[test]
    fn ruleset_replaces_the_table_in_one_transaction() {
        let text = ruleset(&addrs(), 53);
        assert!(text.starts_with("table inet dot_proxy_notrack\ndelete table inet dot_proxy_notrack\ntable inet dot_proxy_notrack {"), "{text}");
        assert!(text.contains("ip daddr 169.254.20.10 udp dport 53 counter notrack"));
        assert!(text.contains("ip6 saddr fd00::10 tcp sport 53 counter notrack"));
        assert_eq!(text.matches(" notrack\n").count(), 12);
        assert_eq!(text.matches("priority -300").count(), 2);
    }

    #[test]
    fn a_listing_matches_only_the_same_rules() {
        let a = addrs();
        // What nft prints back: counters and the symbolic priority.
        let listed = ruleset(&a, 53)
            .lines()
            .skip(2)
            .map(|l| {
                l.replace("counter notrack", "counter packets 3 bytes 180 notrack")
                    .replace("priority -300", "priority raw")
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(matches_listing(Some(&listed), &a, 53));
        assert!(!matches_listing(Some(&listed), &a[..1], 53));
        assert!(!matches_listing(Some(&listed), &a, 5353));
        assert!(!matches_listing(None, &a, 53));
        assert!(matches_listing(None, &[], 53));
    }
}
