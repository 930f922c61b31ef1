//! Secrets: never printed, read inline or from a file.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::problems::{env_name, ConfigError, Problems};

/// A secret string: never printed by `Debug`, serialized as `"<redacted>"`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; only for handing it to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(<empty>)")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

pub(super) fn check_secret(
    p: &mut Problems,
    path: &str,
    inline: &Secret,
    file: Option<&Path>,
    required: bool,
) {
    match (inline.is_empty(), file) {
        (false, Some(_)) => p.add(path, "give the secret inline or as a file, not both"),
        (true, None) if required => p.add(
            path,
            format!(
                "required; set {path}_file or the environment variable {}",
                env_name(path)
            ),
        ),
        (true, Some(f)) => {
            if let Err(e) = std::fs::read(f) {
                p.add(
                    format!("{path}_file"),
                    format!("cannot read {}: {e}", f.display()),
                );
            }
        }
        _ => {}
    }
}

pub(super) fn read_secret(
    path: &str,
    inline: &Secret,
    file: Option<&Path>,
) -> Result<Secret, ConfigError> {
    match file {
        None => Ok(inline.clone()),
        Some(f) => std::fs::read_to_string(f)
            .map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])))
            .map_err(|e| {
                ConfigError::single(
                    &format!("{path}_file"),
                    format!("cannot read {}: {e}", f.display()),
                )
            }),
    }
}
