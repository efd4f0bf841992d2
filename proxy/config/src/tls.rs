//! The `tls` section (defaults for every TLS upstream) and what TLS settings are made
//! of: SPKI pins and server names.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::Errors;

/// A pin: the SHA-256 of a SubjectPublicKeyInfo, written in base64 (RFC 7858 section 4.2).
/// Parsed when the config is read; kept with the text it was written as, so a config
/// reads back the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpkiPin {
    text: String,
    sha256: [u8; 32],
}

impl SpkiPin {
    /// The digest the server's key must match.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
}

impl std::str::FromStr for SpkiPin {
    type Err = String;
    fn from_str(s: &str) -> Result<SpkiPin, String> {
        Ok(SpkiPin {
            sha256: decode_pin(s)?,
            text: s.trim().to_string(),
        })
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

string_type!(SpkiPin, "invalid SPKI pin: ", "SpkiPin", {
    "type": "string",
    "pattern": "^[A-Za-z0-9+/]{43}=$",
    "description": "Base64 SHA-256 of a SubjectPublicKeyInfo (44 characters ending in '=')."
});

/// Decodes a base64 SHA-256 SPKI pin; the error names what is wrong.
pub fn decode_pin(pin: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(pin.trim())
        .map_err(|e| format!("not valid base64: {e}"))?;
    raw.as_slice()
        .try_into()
        .map_err(|_| format!("decodes to {} bytes; a SHA-256 pin has 32", raw.len()))
}

/// Whether `name` can be a TLS server name: an IP address, or a DNS name (labels of 1 to
/// 63 letters, digits, `-` or `_`, not starting or ending with `-`; at most 253
/// characters; one trailing dot allowed), as TLS libraries accept.
pub fn valid_server_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // An all-numeric last label would read as a (bad) IP address.
        && !n
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TlsDefaults {
    /// PEM file of CA certificates that replaces the system roots for every TLS upstream
    /// that has no `ca_file` of its own.
    pub ca_file: Option<PathBuf>,
}

impl TlsDefaults {
    pub(crate) fn check(&self, e: &mut Errors) {
        if let Some(ca) = &self.ca_file {
            e.readable("ca_file", ca);
        }
    }
}
