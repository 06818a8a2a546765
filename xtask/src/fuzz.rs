//! `cargo xtask fuzz`: runs each fuzz target of tests/fuzz (cargo-fuzz,
//! libFuzzer) for a bounded time. Not part of `cargo xtask test`: a
//! campaign is open-ended, and CI's time is not. Findings land in
//! tests/fuzz/artifacts/TARGET/, the growing corpus in tests/fuzz/corpus/.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    repo::{Repo, run},
    setup,
};

/// The targets: the policy parser and compiler, the record decoder (ring
/// buffer records and events-file lines), the collector's ingest step, the
/// SQL statement classifier and the statement guard's protocol decoder.
pub const TARGETS: &[&str] = &[
    "policy",
    "record_decode",
    "collector_ingest",
    "sql_classify",
    "pg_protocol",
];

const CARGO_FUZZ: &str = "0.13.2";

pub fn fuzz(repo: &Repo, seconds: u64, only: Option<String>) -> Result<()> {
    setup::setup(repo)?;
    let has_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_fuzz {
        run(Command::new("cargo").args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ,
        ]))?;
    }
    let targets: Vec<&str> = match &only {
        Some(name) if TARGETS.contains(&name.as_str()) => vec![name.as_str()],
        Some(name) => bail!("no fuzz target `{name}`; the targets are {TARGETS:?}"),
        None => TARGETS.to_vec(),
    };
    // libFuzzer's instrumentation needs a nightly; the eBPF build pins one.
    let nightly = format!("+{}", repo.ebpf_toolchain()?);
    for target in targets {
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        // A target's dictionary (tests/fuzz/TARGET.dict) gives libFuzzer
        // the tokens its input is made of.
        let dict = repo.root.join(format!("tests/fuzz/{target}.dict"));
        let dict = dict.exists().then(|| format!("-dict={}", dict.display()));
        run(Command::new("cargo")
            .current_dir(&repo.root)
            .args([
                &nightly,
                "fuzz",
                "run",
                "--fuzz-dir",
                "tests/fuzz",
                target,
                "--",
            ])
            .arg(format!("-max_total_time={seconds}"))
            .args(dict))?;
    }
    eprintln!("xtask: no fuzz target found a crash");
    Ok(())
}
