//! Command line: `crd`, `run`, `render`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};
use dot_proxy_config::Dur;
use kube::ResourceExt;

use crate::cluster::{pods_from_text, NamespaceLabels, NodeLabels, PodInfo};
use crate::controller::{config_map, Role};
use crate::render::{render, Invalid};
use crate::resource::DotProxyConfig;

#[derive(Debug, Parser)]
#[command(
    name = "dot-proxy-operator",
    version,
    about = "Renders DotProxyConfig resources into the ConfigMaps dot-proxy reads"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the DotProxyConfig CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Run(RunArgs),
    /// Render a DotProxyConfig file (and optionally pods) into ConfigMaps, printed as YAML.
    Render(RenderArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Watch DotProxyConfigs and write ConfigMaps only in this namespace (default: all).
    /// Pods and nodes are always watched cluster-wide.
    #[arg(long, env = "DOT_PROXY_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,

    /// The Helm release this operator belongs to: it acts only on the DotProxyConfigs
    /// labeled `dns.dot-proxy.io/release=<release>` (and unlabeled ones it claims first),
    /// and competes for the Lease `dot-proxy-operator-<release>`. Without it: every
    /// DotProxyConfig of the namespace, and the Lease `dot-proxy-operator`.
    #[arg(long, env = "DOT_PROXY_OPERATOR_RELEASE")]
    pub release: Option<String>,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "DOT_PROXY_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,

    /// Compete for the leader Lease (see --release) and act only while holding it.
    #[arg(long, env = "DOT_PROXY_OPERATOR_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,

    /// Namespace of the Lease: the operator's own (downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Identity in the Lease (default: the pod name, then the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Quiet time that ends a burst of pod changes before it is rendered (e.g. 2s, 500ms).
    #[arg(long, env = "DOT_PROXY_OPERATOR_DEBOUNCE", default_value = "2s")]
    pub debounce: Dur,

    /// Log filter (tracing syntax).
    #[arg(long, env = "DOT_PROXY_OPERATOR_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// A DotProxyConfig manifest (YAML or JSON).
    #[arg(long)]
    pub resource: PathBuf,
    /// Pods, as `kubectl get pods -A -o json` prints them.
    #[arg(long)]
    pub pods: Option<PathBuf>,
    /// Nodes, as `kubectl get nodes -o json` prints them (for `target.nodeSelector`).
    #[arg(long)]
    pub nodes: Option<PathBuf>,
    /// Namespaces, as `kubectl get namespaces -o json` prints them (for the grants'
    /// `namespaceSelector`s; without it, only grants by name apply).
    #[arg(long)]
    pub namespaces: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderCommandError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}: {1}")]
    Invalid(String, Invalid),
    #[error("cannot print the ConfigMaps: {0}")]
    Print(String),
}

/// Output of `render`: the ConfigMaps as a multi-document YAML stream, and the warnings the
/// controller would put on pods as Events.
#[derive(Debug)]
pub struct RenderOutput {
    pub yaml: String,
    pub warnings: Vec<String>,
}

/// `dot-proxy-operator render`: what the controller would write, without a cluster.
pub fn render_files(args: &RenderArgs) -> Result<RenderOutput, RenderCommandError> {
    let text = read(&args.resource)?;
    let mut dpc: DotProxyConfig = parse(&args.resource, &text)?;
    if dpc.metadata.namespace.is_none() {
        dpc.metadata.namespace = Some("default".into());
    }
    let pods: Vec<PodInfo> = match &args.pods {
        Some(p) => pods_from_text(&read(p)?).map_err(|message| RenderCommandError::Parse {
            path: p.clone(),
            message,
        })?,
        None => Vec::new(),
    };
    let nodes = match &args.nodes {
        Some(p) => nodes_from_text(&read(p)?).map_err(|message| RenderCommandError::Parse {
            path: p.clone(),
            message,
        })?,
        None => {
            // Without node labels, assume every pod's node matches the selector.
            let mut n = NodeLabels::new();
            for node in pods.iter().filter_map(|p| p.node_name.clone()) {
                n.insert(node, dpc.spec.target.node_selector.clone());
            }
            n
        }
    };
    let namespaces = match &args.namespaces {
        Some(p) => labels_from_text(&read(p)?).map_err(|message| RenderCommandError::Parse {
            path: p.clone(),
            message,
        })?,
        None => NamespaceLabels::new(),
    };
    let rendered = render(&dpc.name_any(), &dpc.spec, &pods, &nodes, &namespaces)
        .map_err(|e| RenderCommandError::Invalid(args.resource.display().to_string(), e))?;
    let mut yaml = String::new();
    let objects = std::iter::once(config_map(&dpc, &rendered.config, Role::Config)).chain(
        rendered
            .shards
            .iter()
            .map(|s| config_map(&dpc, s, Role::Overrides)),
    );
    for cm in objects {
        yaml.push_str("---\n");
        yaml.push_str(
            &serde_saphyr::to_string(&cm).map_err(|e| RenderCommandError::Print(e.to_string()))?,
        );
    }
    let warnings = dpc
        .spec
        .unknown_fields
        .iter()
        .map(|f| format!("{f}: unknown field, ignored (not in this operator's CRD)"))
        .chain(
            rendered
                .problems
                .iter()
                .map(|p| format!("{}/{}: {}", p.namespace, p.name, p.message)),
        )
        .chain(rendered.truncated.iter().map(|pod| {
            format!("{pod}: overrides left out: its shard is full even at the largest shard count (spec.target.maxOverrideShards)")
        }))
        .collect();
    Ok(RenderOutput { yaml, warnings })
}

fn read(path: &PathBuf) -> Result<String, RenderCommandError> {
    std::fs::read_to_string(path).map_err(|source| RenderCommandError::Read {
        path: path.clone(),
        source,
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    text: &str,
) -> Result<T, RenderCommandError> {
    let result = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    };
    result.map_err(|message| RenderCommandError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// Node labels from a `kubectl get nodes -o json` list.
pub fn nodes_from_text(text: &str) -> Result<NodeLabels, String> {
    labels_from_text(text)
}

/// Name -> labels of each object in a `kubectl get ... -o json` (or YAML) list.
pub fn labels_from_text(text: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    #[derive(serde::Deserialize)]
    struct List {
        #[serde(default)]
        items: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        metadata: kube::api::ObjectMeta,
    }
    let list: List = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())?
    };
    Ok(list
        .items
        .into_iter()
        .filter_map(|i| Some((i.metadata.name?, i.metadata.labels.unwrap_or_default())))
        .collect())
}
