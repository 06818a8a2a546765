//! What every part of the policy file shares: where an error is, why it
//! is refused, names, and allow or deny.

use std::fmt;

use serde::Deserialize;

/// A location in the policy file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Location {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

impl From<serde_saphyr::Location> for Location {
    fn from(l: serde_saphyr::Location) -> Self {
        Self {
            line: l.line(),
            column: l.column(),
        }
    }
}

/// Why a policy was refused, and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{location}: {reason}")]
pub struct PolicyError {
    pub location: Location,
    pub reason: String,
}

impl PolicyError {
    pub fn new(location: impl Into<Location>, reason: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Allow,
    Deny,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Allow => "allow",
            Access::Deny => "deny",
        }
    }
}

/// Agent and profile names: agent names become cgroup directory names.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name `{name}`: use 1-64 letters, digits, `-`, `_` or `.`, not starting with `.`"
        ))
    }
}

/// A hostname as a rule may name it: letters, digits, `-` and `_` in
/// labels of 1 to 63 bytes, at most 253 bytes, compared in lower case.
pub(crate) fn host_name(name: &str) -> Result<String, String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.starts_with("*.") {
        return Err(format!(
            "host `{name}`: wildcards are not supported; name each host (guardd resolves each name itself)"
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("host `{name}` is an address: use `cidr`"));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if valid {
        Ok(name)
    } else {
        Err(format!("`{name}` is not a hostname"))
    }
}
