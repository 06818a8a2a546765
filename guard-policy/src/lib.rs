//! Guard's policy: [`policy`] parses and validates the YAML file, with the
//! line and reason of every error; [`compile`] turns it into the entries of
//! the kernel's policy maps. guardd enforces what this produces, and
//! `guardctl policy check` runs the same steps.

mod common;
pub mod compile;
pub mod database;
pub mod policy;

use std::path::Path;

use compile::CompiledPolicy;
use policy::Policy;

/// A policy read from its file: compiled, with the digest of the file.
pub struct LoadedPolicy {
    pub compiled: CompiledPolicy,
    pub sha256: String,
    pub text: String,
}

/// Why a policy cannot be used: it cannot be read, or it is invalid (with
/// the line, column and reason).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPolicy(pub String);

/// Reads, validates and compiles the policy file; `paths` says whether the
/// files it names must exist here, and `add` may add to the parsed policy
/// before it is compiled (guardd adds its built-in agent, profile and
/// rules). Errors name the file.
pub fn load(
    path: &Path,
    paths: compile::Paths,
    add: impl FnOnce(&mut Policy),
) -> Result<LoadedPolicy, InvalidPolicy> {
    let text = std::fs::read(path)
        .map_err(|e| InvalidPolicy(format!("cannot read policy {}: {e}", path.display())))?;
    let text = String::from_utf8(text)
        .map_err(|_| InvalidPolicy(format!("invalid policy {}: not UTF-8", path.display())))?;
    compile_text(text, &path.display().to_string(), paths, add)
}

/// Validates and compiles a policy's text; errors name `origin` (a file)
/// with the line, column and reason.
pub fn compile_text(
    text: String,
    origin: &str,
    paths: compile::Paths,
    add: impl FnOnce(&mut Policy),
) -> Result<LoadedPolicy, InvalidPolicy> {
    let invalid =
        |e: &dyn std::fmt::Display| InvalidPolicy(format!("invalid policy {origin}: {e}"));
    let mut parsed = policy::parse(&text).map_err(|e| invalid(&e))?;
    add(&mut parsed);
    let compiled = compile::compile_for(&parsed, paths).map_err(|e| invalid(&e))?;
    Ok(LoadedPolicy {
        compiled,
        sha256: digest(text.as_bytes()),
        text,
    })
}

/// SHA-256 of a policy file's bytes, as records and status show it.
pub fn digest(text: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text))
}
