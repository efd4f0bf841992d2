//! Logging through tracing, as text or JSON. Query names are logged only at debug level.
//!
//! Both the filter (`log.level`) and the format (`log.format`) can change in a running
//! process: a reload applies them live through `tracing_subscriber::reload` handles.

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

type Base = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Output = Box<dyn Layer<Base> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    output: reload::Handle<Output, Base>,
    current: Mutex<LogConfig>,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn output(format: LogFormat) -> Output {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => Box::new(layer.json().flatten_event(true)),
        LogFormat::Text => Box::new(layer),
    }
}

/// Installs the global subscriber (once per process; later calls change nothing).
pub fn init(cfg: &LogConfig) {
    let (filter_layer, filter_handle) = reload::Layer::new(filter(&cfg.level));
    let (output_layer, output_handle) = reload::Layer::new(output(cfg.format));
    let subscriber = Registry::default().with(filter_layer).with(output_layer);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = HANDLES.set(Handles {
            filter: filter_handle,
            output: output_handle,
            current: Mutex::new(cfg.clone()),
        });
    }
}

/// Applies a reloaded `log` section to the running process. Returns whether anything
/// changed (false too when `init` did not install the subscriber, as in tests).
pub fn apply(cfg: &LogConfig) -> bool {
    let Some(h) = HANDLES.get() else {
        return false;
    };
    let mut current = h.current.lock().unwrap_or_else(|p| p.into_inner());
    if *current == *cfg {
        return false;
    }
    if current.level != cfg.level && h.filter.reload(filter(&cfg.level)).is_err() {
        return false;
    }
    if current.format != cfg.format && h.output.reload(output(cfg.format)).is_err() {
        return false;
    }
    *current = cfg.clone();
    true
}
