//! `cargo xtask bench`: runs `guard-bench suite` once, in a VM with
//! Debian's 6.12 kernel (or on this host with `--host`), and writes the
//! report: `bench/results.json` (every measurement) and `bench/results.md`
//! (ratios against the baseline measured in the same run).

use std::{fmt::Write as _, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{Repo, boot, build, initramfs, setup, vm};

/// Configurations, in the order the suite runs them, with the overhead
/// target each must meet (as a fraction of the baseline; none for denials,
/// which do less work than the baseline).
const CONFIGS: &[(&str, &str, Option<f64>)] = &[
    ("baseline", "no programs loaded", None),
    ("untagged", "programs loaded, caller untagged", Some(0.01)),
    ("tagged_allowed", "tagged, allowed, no record", Some(0.02)),
    (
        "tagged_recorded",
        "tagged, allowed, a record per decision",
        Some(0.05),
    ),
    ("tagged_denied", "tagged, denied", None),
    (
        "baseline_again",
        "no programs loaded, measured again (drift)",
        None,
    ),
    ("auditd", "auditd recording the same calls (peer)", None),
];

const OPS: &[&str] = &["exec", "unlink", "connect", "sendto"];

pub fn bench(repo: &Repo, on_host: bool) -> Result<()> {
    let start = Instant::now();
    setup::setup(repo)?;
    // The peer measured side by side; only the benchmark needs it.
    if let Err(e) = setup::install_packages(&["auditd"]) {
        eprintln!("xtask: auditd is not installed, so it will not be measured: {e:#}");
    }
    let artifacts = build(repo)?;
    let (kernel, output) = if on_host {
        let output = Command::new(artifacts.bin_dir.join("guard-bench"))
            .arg("suite")
            .env("GUARD_BIN_DIR", &artifacts.bin_dir)
            .output()
            .context("cannot run guard-bench")?;
        if !output.status.success() {
            bail!(
                "guard-bench suite failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
        (
            release.trim().to_string(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    } else {
        let image = initramfs(repo, &artifacts)?;
        let kernel = vm::kernel(repo, vm::Series::V6_12)?;
        boot(repo, &kernel, &image, "bench", true)?;
        let log = repo.cache.join(format!("vm-{}-bench.log", kernel.package));
        (kernel.package.clone(), std::fs::read_to_string(log)?)
    };
    let results: Vec<Value> = output
        .lines()
        .filter_map(|l| l.split_once("GUARD-BENCH ").map(|(_, json)| json))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a GUARD-BENCH line is not JSON")?;
    if results.is_empty() {
        bail!("guard-bench printed no results");
    }
    let elapsed = start.elapsed().as_secs();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let where_ = if on_host {
        format!("this host (kernel {kernel})")
    } else {
        format!("a QEMU VM under software emulation (kernel {kernel})")
    };
    let dir = repo.root.join("bench");
    std::fs::create_dir_all(&dir)?;
    let json = json!({
        "command": format!("cargo xtask bench{}", if on_host { " --host" } else { "" }),
        "date": date,
        "kernel": kernel,
        "where": where_,
        "seconds": elapsed,
        "results": results,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    let report = markdown(&json);
    std::fs::write(dir.join("results.md"), &report)?;
    println!("{report}");
    plot(repo)?;
    eprintln!(
        "xtask: bench/results.md, bench/results.json and bench/overhead.png written ({elapsed}s)"
    );
    Ok(())
}

/// bench/overhead.png, drawn by bench/plot.py with matplotlib.
fn plot(repo: &Repo) -> Result<()> {
    let has_matplotlib = Command::new("python3")
        .args(["-c", "import matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_matplotlib {
        crate::run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--root-user-action=ignore",
            MATPLOTLIB,
        ]))?;
    }
    let dir = repo.root.join("bench");
    crate::run(
        Command::new("python3")
            .arg(dir.join("plot.py"))
            .arg(dir.join("results.json"))
            .arg(dir.join("overhead.png")),
    )
}

const MATPLOTLIB: &str = "matplotlib==3.11.2";

fn of_kind<'a>(results: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    results.iter().filter(move |r| r["kind"] == kind)
}

fn loop_result<'a>(results: &'a [Value], config: &str, op: &str) -> Option<&'a Value> {
    of_kind(results, "loop").find(|r| r["config"] == config && r["op"] == op)
}

fn us(ns: &Value) -> String {
    format!("{:.1}", ns.as_f64().unwrap_or(0.0) / 1000.0)
}

fn markdown(json: &Value) -> String {
    let results = json["results"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut md = String::new();
    let _ = writeln!(md, "# What Guard costs\n");
    let _ = writeln!(
        md,
        "`{}` on {}, {}; {} s in all.\n",
        json["command"].as_str().unwrap_or_default(),
        json["date"].as_str().unwrap_or_default(),
        json["where"].as_str().unwrap_or_default(),
        json["seconds"]
    );
    let _ = writeln!(
        md,
        "Every configuration ran in the same boot as its baseline. Under software emulation absolute times mean little; the ratios to the baseline are the figures to quote. Each row is the median (and p99) of one loop of system calls; the overhead is the median's increase over the baseline's.\n"
    );
    let _ = writeln!(md, "## Per-hook overhead\n");
    let _ = writeln!(
        md,
        "| operation | configuration | median µs | p99 µs | ratio | overhead | target | errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for op in OPS {
        let Some(base) = loop_result(results, "baseline", op) else {
            continue;
        };
        let base_median = base["median_ns"].as_f64().unwrap_or(1.0).max(1.0);
        for (config, label, target) in CONFIGS {
            let Some(r) = loop_result(results, config, op) else {
                continue;
            };
            let ratio = r["median_ns"].as_f64().unwrap_or(0.0) / base_median;
            let overhead = ratio - 1.0;
            let verdict = match target {
                None => "-".to_string(),
                Some(t) if overhead <= *t => format!("≤ {:.0}%: met", t * 100.0),
                Some(t) => format!("≤ {:.0}%: **missed**", t * 100.0),
            };
            let _ = writeln!(
                md,
                "| {op} | {label} | {} | {} | {ratio:.3} | {:+.1}% | {verdict} | {} |",
                us(&r["median_ns"]),
                us(&r["p99_ns"]),
                overhead * 100.0,
                r["errors"]
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## Guard's full recording against auditd's\n\nTarget: Guard with a record per decision costs at most a third of what auditd costs.\n"
    );
    let _ = writeln!(
        md,
        "| operation | Guard overhead | auditd overhead | Guard / auditd | target |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for op in OPS {
        let median =
            |config| loop_result(results, config, op).and_then(|r| r["median_ns"].as_f64());
        let (Some(base), Some(guard), Some(auditd)) = (
            median("baseline"),
            median("tagged_recorded"),
            median("auditd"),
        ) else {
            continue;
        };
        let (g, a) = (guard / base - 1.0, auditd / base - 1.0);
        let share = if a > 0.0 { g / a } else { f64::INFINITY };
        let _ = writeln!(
            md,
            "| {op} | {:+.1}% | {:+.1}% | {share:.2} | {} |",
            g * 100.0,
            a * 100.0,
            if share <= 1.0 / 3.0 {
                "met"
            } else {
                "**missed**"
            }
        );
    }
    for note in of_kind(results, "note") {
        let _ = writeln!(md, "\nNote: {}", note["note"].as_str().unwrap_or_default());
    }
    let scale: Vec<&Value> = of_kind(results, "scale").collect();
    if let Some(first) = scale.first() {
        let one = first["median_ns"].as_f64().unwrap_or(1.0).max(1.0);
        let _ = writeln!(
            md,
            "\n## Decision cost against policy size (tagged connect)\n"
        );
        let _ = writeln!(md, "| rules | median µs | p99 µs | ratio to 1 rule |");
        let _ = writeln!(md, "|---|---|---|---|");
        for r in &scale {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} |",
                r["rules"],
                us(&r["median_ns"]),
                us(&r["p99_ns"]),
                r["median_ns"].as_f64().unwrap_or(0.0) / one
            );
        }
    }
    let programs: Vec<&Value> = of_kind(results, "program").collect();
    if !programs.is_empty() {
        let _ = writeln!(
            md,
            "\n## BPF programs (kernel statistics, `kernel.bpf_stats_enabled`)\n"
        );
        let _ = writeln!(md, "| program | runs | average ns |");
        let _ = writeln!(md, "|---|---|---|");
        for p in programs {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                p["program"].as_str().unwrap_or_default(),
                p["runs"],
                p["avg_ns"]
            );
        }
    }
    let footprint: Vec<&Value> = of_kind(results, "footprint").collect();
    if !footprint.is_empty() {
        let _ = writeln!(md, "\n## Footprint\n");
        for f in footprint {
            let when = f["after"].as_str().unwrap_or("idle");
            let startup = f["startup_ms"]
                .as_u64()
                .map(|ms| format!(", start-up {ms} ms (to `enforcing`)"))
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "- {} ({when}): resident memory {} KiB{startup}",
                f["daemon"].as_str().unwrap_or_default(),
                f["rss_kib"]
            );
        }
    }
    md
}
