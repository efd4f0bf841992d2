//! The `log` section: format and filter of the proxy's own logs.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, Errors};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `dot_proxy=debug,info`. Query names appear only at debug.
    #[cfg_attr(feature = "schema", schemars(length(min = limits::LOG_LEVEL_LEN.min, max = limits::LOG_LEVEL_LEN.max)))]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format (text or json)")),
        }
    }
}

impl LogConfig {
    pub(crate) fn check(&self, e: &mut Errors) {
        e.length("level", self.level.len(), limits::LOG_LEVEL_LEN);
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            e.field("level", format!("invalid filter: {err}"));
        }
    }
}
