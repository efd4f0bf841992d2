//! Queries by the client's namespace: `dot_proxy_namespace_queries_total{namespace,
//! rcode}` for the busiest namespaces of the node's pods, and one `other` series for the
//! rest, so the number of series stays bounded on any node (`kubernetes.namespace_metrics`
//! namespaces, plus `other`, times the response codes seen).
//!
//! On the query path a client's namespace is looked up in the pod table (as search-path
//! completion does) and one atomic counter of that namespace's row is bumped; no lock. A
//! row is made the first time a namespace answers a query (a copy of the small map of
//! rows, under a lock only writers take). At most [`MAX_TRACKED`] rows are kept, so the
//! table is bounded in bytes (namespace names are at most 63 bytes): further namespaces are
//! counted in `other` directly. Which namespaces get their own series is decided at each
//! scrape, by their counts since the start: the busiest `N` (ties by name). A namespace
//! that enters or leaves the top N moves its count between its own series and `other`,
//! which Prometheus's `rate` sees as a counter reset of `other`. A namespace really named
//! `other` is always counted in the `other` series.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::PodTable;
use crate::metrics::Rcode;

/// Most namespaces counted on their own (rows of [`Rcode::ALL`] counters each); beyond,
/// into `other`.
pub const MAX_TRACKED: usize = 1024;

/// The label value of the namespaces without a series of their own.
pub const OTHER: &str = "other";

#[derive(Debug, Default)]
struct Row([AtomicU64; Rcode::ALL.len()]);

impl Row {
    fn inc(&self, rcode: Rcode) {
        if let Some(c) = self.0.get(rcode as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn get(&self) -> [u64; Rcode::ALL.len()] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// The counts by namespace; one per process (kept across reloads).
#[derive(Debug)]
pub struct NamespaceQueries {
    /// How many namespaces get a series of their own (0: the family is not exported).
    top: AtomicUsize,
    rows: ArcSwap<HashMap<Arc<str>, Arc<Row>>>,
    /// Taken only to add a row.
    adding: Mutex<()>,
    other: Row,
}

impl Default for NamespaceQueries {
    fn default() -> Self {
        NamespaceQueries {
            top: AtomicUsize::new(0),
            rows: ArcSwap::default(),
            adding: Mutex::new(()),
            other: Row::default(),
        }
    }
}

impl NamespaceQueries {
    /// Registers `dot_proxy_namespace_queries_total`, exported from these counts at each
    /// scrape (nothing while the top N is 0).
    pub fn register(self: &Arc<Self>, r: &mut prometheus_client::registry::Registry) {
        r.register_collector(Box::new(NamespaceCollector(self.clone())));
    }

    /// How many namespaces are exported on their own (`kubernetes.namespace_metrics`).
    pub fn set_top(&self, n: usize) {
        self.top.store(n, Ordering::Relaxed);
    }

    /// Counts one answered query of a pod of `namespace`.
    pub fn count(&self, namespace: &str, rcode: Rcode) {
        if let Some(row) = self.rows.load().get(namespace) {
            row.inc(rcode);
            return;
        }
        match self.add(namespace) {
            Some(row) => row.inc(rcode),
            None => self.other.inc(rcode),
        }
    }

    /// The row of a namespace not seen before, or None once [`MAX_TRACKED`] are kept.
    fn add(&self, namespace: &str) -> Option<Arc<Row>> {
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let rows = self.rows.load();
        if let Some(row) = rows.get(namespace) {
            return Some(row.clone());
        }
        if rows.len() >= MAX_TRACKED {
            return None;
        }
        let row = Arc::new(Row::default());
        let mut next = HashMap::clone(&rows);
        next.insert(Arc::from(namespace), row.clone());
        self.rows.store(Arc::new(next));
        Some(row)
    }

    /// The series to export: the busiest `top` namespaces with their counts by response
    /// code, then `other` with the rest (each namespace's row, then the codes in
    /// [`Rcode::ALL`] order).
    pub fn snapshot(&self) -> Vec<(Arc<str>, [u64; Rcode::ALL.len()])> {
        let top = self.top.load(Ordering::Relaxed);
        let mut rows: Vec<(Arc<str>, [u64; Rcode::ALL.len()])> = self
            .rows
            .load()
            .iter()
            .map(|(ns, row)| (ns.clone(), row.get()))
            .collect();
        rows.sort_by(|a, b| {
            let total = |r: &[u64]| r.iter().sum::<u64>();
            total(&b.1).cmp(&total(&a.1)).then_with(|| a.0.cmp(&b.0))
        });
        let mut other = self.other.get();
        let mut out = Vec::with_capacity(top.min(rows.len()) + 1);
        for (ns, counts) in rows {
            if out.len() < top && &*ns != OTHER {
                out.push((ns, counts));
            } else {
                for (o, c) in other.iter_mut().zip(counts) {
                    *o += c;
                }
            }
        }
        out.push((Arc::from(OTHER), other));
        out
    }
}

/// The pod table and the counts: what the query path needs to attribute a query.
#[derive(Clone)]
pub struct Attribution {
    pub pods: Arc<PodTable>,
    pub queries: Arc<NamespaceQueries>,
}

impl Attribution {
    /// Counts an answered query for its client's namespace, if the client is a pod of
    /// this node (others, host-network pods included, are not counted here).
    #[inline]
    pub fn count(&self, client: IpAddr, rcode: Rcode) {
        self.pods
            .with_namespace(client, |ns| self.queries.count(ns, rcode));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    namespace: String,
    rcode: Rcode,
}

/// Exports [`NamespaceQueries`] at each scrape.
#[derive(Debug)]
struct NamespaceCollector(Arc<NamespaceQueries>);

impl Collector for NamespaceCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.0.top.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let series = self.0.snapshot();
        let mut family = enc.encode_descriptor(
            "namespace_queries",
            "Client queries answered, by the client pod's namespace (the busiest kubernetes.namespace_metrics namespaces, the rest as other) and response code",
            None,
            MetricType::Counter,
        )?;
        for (ns, counts) in &series {
            for (rcode, n) in Rcode::ALL.iter().zip(counts) {
                if *n == 0 {
                    continue;
                }
                let labels = Labels {
                    namespace: ns.to_string(),
                    rcode: *rcode,
                };
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &[(Arc<str>, [u64; 8])]) -> Vec<(String, u64)> {
        s.iter()
            .map(|(n, c)| (n.to_string(), c.iter().sum()))
            .collect()
    }

    #[test]
    fn the_busiest_namespaces_get_series_and_the_rest_is_other() {
        let q = NamespaceQueries::default();
        q.set_top(2);
        for (ns, n) in [("a", 5), ("b", 9), ("c", 1), ("other", 50), ("d", 9)] {
            for _ in 0..n {
                q.count(ns, Rcode::NOERROR);
            }
        }
        q.count("c", Rcode::NXDOMAIN);
        // b and d (9 each, by name), then other: a, c and the namespace named "other".
        assert_eq!(
            names(&q.snapshot()),
            [("b".into(), 9), ("d".into(), 9), ("other".into(), 57)]
        );
        let other = &q.snapshot()[2].1;
        assert_eq!(other[Rcode::NXDOMAIN as usize], 1);
    }

    #[test]
    fn rows_are_bounded() {
        let q = NamespaceQueries::default();
        q.set_top(20);
        for i in 0..MAX_TRACKED + 500 {
            q.count(&format!("ns-{i}"), Rcode::NOERROR);
        }
        assert_eq!(q.rows.load().len(), MAX_TRACKED);
        let s = q.snapshot();
        assert_eq!(s.len(), 21, "20 namespaces and other");
        let total: u64 = s.iter().map(|(_, c)| c.iter().sum::<u64>()).sum();
        assert_eq!(total, (MAX_TRACKED + 500) as u64, "nothing lost");
    }
}
