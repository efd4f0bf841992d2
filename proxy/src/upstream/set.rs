//! The groups of a config, in its order: each built from its section ([`Group::from_config`]),
//! or taken over from the running config's set, with its open connections, while its
//! section, the CA files it trusts and the privacy settings it pads and strips by are
//! unchanged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::stats::UpstreamMetrics;
use crate::config::{Config, PrivacyConfig, UpstreamGroup};

use super::build::BuildError;
use super::Group;

/// What a group was built from.
#[derive(Clone, PartialEq)]
struct Source {
    cfg: UpstreamGroup,
    ca: Option<PathBuf>,
    /// Which versions of its CA files (the global one and the servers' own) it was built
    /// with: a bundle rotated in place builds the group again at the next reload.
    ca_files: Vec<u8>,
    privacy: PrivacyConfig,
}

/// The groups a pipeline forwards to, by position (a route names a group by its index).
#[derive(Clone, Default)]
pub struct GroupSet {
    groups: Vec<Arc<Group>>,
    sources: Vec<Source>,
}

impl GroupSet {
    pub fn from_config(
        cfg: &Config,
        previous: Option<&GroupSet>,
        metrics: &UpstreamMetrics,
    ) -> Result<GroupSet, BuildError> {
        let mut set = GroupSet::default();
        for g in &cfg.upstream_groups {
            let ca_paths: Vec<PathBuf> = cfg
                .tls
                .ca_file
                .iter()
                .chain(g.servers.iter().filter_map(|s| s.ca_file.as_ref()))
                .cloned()
                .collect();
            let source = Source {
                cfg: g.clone(),
                ca: cfg.tls.ca_file.clone(),
                ca_files: crate::policy::files_identity(&ca_paths),
                privacy: cfg.privacy.clone(),
            };
            let running = previous.and_then(|p| {
                let i = p.sources.iter().position(|s| *s == source)?;
                Some(p.groups[i].clone())
            });
            let group = match running {
                Some(g) => g,
                None => Group::from_config(g, cfg.tls.ca_file.as_deref(), &cfg.privacy, metrics)?,
            };
            set.groups.push(group);
            set.sources.push(source);
        }
        Ok(set)
    }

    /// Groups built elsewhere standing for `cfg`'s, in its order (test fakes); never
    /// taken over by a later config.
    pub fn given(cfg: &Config, groups: Vec<Arc<Group>>) -> GroupSet {
        let sources = cfg
            .upstream_groups
            .iter()
            .map(|g| Source {
                cfg: g.clone(),
                ca: None,
                ca_files: b"given".to_vec(),
                privacy: cfg.privacy.clone(),
            })
            .collect();
        GroupSet { groups, sources }
    }

    pub fn groups(&self) -> &[Arc<Group>] {
        &self.groups
    }

    pub fn get(&self, i: usize) -> Option<&Arc<Group>> {
        self.groups.get(i)
    }

    /// Group `i`, or the last one for an index past the end (never with a valid route).
    pub fn at(&self, i: usize) -> &Arc<Group> {
        &self.groups[i.min(self.groups.len().saturating_sub(1))]
    }

    pub fn names(&self) -> Vec<&str> {
        self.sources.iter().map(|s| s.cfg.name.as_str()).collect()
    }

    /// Waits until group `i` is warm (a live connection, or every first attempt over), at
    /// most `floor` or long enough for its slowest server's first connect to end either
    /// way, whichever is longer.
    pub async fn warmed(&self, i: usize, floor: Duration) {
        let (Some(g), Some(s)) = (self.groups.get(i), self.sources.get(i)) else {
            return;
        };
        let connect = s
            .cfg
            .servers
            .iter()
            .map(|s| s.connect_timeout.get())
            .max()
            .unwrap_or_default();
        g.warmed(floor.max(connect + Duration::from_millis(500)))
            .await;
    }
}
