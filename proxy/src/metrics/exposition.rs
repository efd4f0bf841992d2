//! The text the admin server sends: OpenMetrics from the registry, or the older Prometheus
//! text format for scrapers that do not ask for OpenMetrics.

use prometheus_client::registry::Registry;

/// The Prometheus text format (0.0.4) for scrapers that do not ask for OpenMetrics (curl,
/// `promtool check metrics`): counter families take their `_total` name, and the OpenMetrics
/// `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Encodes the registry as OpenMetrics text.
pub fn encode(reg: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, reg).is_err() {
        out.clear();
    }
    out
}
