//! `cargo xtask bench`: runs `guard-bench suite` once, in a VM with
//! Debian's 6.12 kernel (or on this host with `--host`), and writes the
//! report: `bench/results.json` (every measurement) and `bench/results.md`
//! (ratios against the baseline measured in the same run).

use std::{fmt::Write as _, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{
    guest::{boot, build, initramfs},
    repo::Repo,
    setup, vm,
};

/// Configurations, in the order the suite runs them, with the overhead
/// target each must meet (as a fraction of the baseline; none for denials,
/// which do less work than the baseline).
const CONFIGS: &[(&str, &str, Option<f64>)] = &[
    ("baseline", "no programs loaded", None),
    // Untagged: nothing measurable, i.e. within the noise floor.
    ("untagged", "programs loaded, caller untagged", Some(0.0)),
    ("tagged_allowed", "tagged, allowed, no record", Some(0.15)),
    (
        "tagged_recorded",
        "tagged, allowed, a record per decision",
        Some(0.05),
    ),
    ("tagged_denied", "tagged, denied", None),
    (
        "tagged_content",
        "tagged, allowed, the profile has an exec rule by content (IMA hash)",
        None,
    ),
    ("baseline_again", "no programs loaded, measured again", None),
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
        let kernel = vm::kernel(repo, vm::Series::V6_12)?;
        let image = initramfs(repo, &artifacts, std::slice::from_ref(&kernel))?;
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
        "summary": summary(&results),
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
    let results = json["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    match of_kind(results, "load").next() {
        Some(load) if load["passed"] == true => Ok(()),
        Some(load) => bail!("the load test failed: {load}"),
        None => bail!("guard-bench reported no load test"),
    }
}

/// bench/overhead.png, drawn by bench/plot.py with matplotlib.
fn plot(repo: &Repo) -> Result<()> {
    let has_matplotlib = Command::new("python3")
        .args(["-c", "import matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_matplotlib {
        crate::repo::run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--root-user-action=ignore",
            MATPLOTLIB,
        ]))?;
    }
    let dir = repo.root.join("bench");
    crate::repo::run(
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One configuration's loops of one operation, over all rounds.
struct Overhead {
    /// Median over rounds of each round's median / that round's baseline.
    ratio: f64,
    /// The lowest and highest round's ratio.
    low: f64,
    high: f64,
    median_ns: f64,
    p99_ns: f64,
    errors: u64,
}

fn overhead(results: &[Value], config: &str, op: &str) -> Option<Overhead> {
    let mut ratios = Vec::new();
    let (mut medians, mut p99s, mut errors) = (Vec::new(), Vec::new(), 0);
    for r in of_kind(results, "loop").filter(|r| r["config"] == config && r["op"] == op) {
        let base = of_kind(results, "loop")
            .find(|b| b["config"] == "baseline" && b["op"] == op && b["round"] == r["round"])?;
        let m = r["median_ns"].as_f64()?;
        ratios.push(m / base["median_ns"].as_f64()?.max(1.0));
        medians.push(m);
        p99s.push(r["p99_ns"].as_f64()?);
        errors += r["errors"].as_u64().unwrap_or(0);
    }
    if ratios.is_empty() {
        return None;
    }
    Some(Overhead {
        low: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        high: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ratio: median(ratios),
        median_ns: median(medians),
        p99_ns: median(p99s),
        errors,
    })
}

/// How far two measurements of the same baseline differed in this run: the
/// median over rounds of the repeated baseline's deviation from its round's
/// baseline.
fn noise(results: &[Value], op: &str) -> Option<f64> {
    let deviations: Vec<f64> = of_kind(results, "loop")
        .filter(|r| r["config"] == "baseline_again" && r["op"] == op)
        .filter_map(|again| {
            let base = of_kind(results, "loop").find(|b| {
                b["config"] == "baseline" && b["op"] == op && b["round"] == again["round"]
            })?;
            Some((again["median_ns"].as_f64()? / base["median_ns"].as_f64()? - 1.0).abs())
        })
        .collect();
    (!deviations.is_empty()).then(|| median(deviations))
}

/// The per-hook summary written into results.json (and plotted).
fn summary(results: &[Value]) -> Value {
    let mut rows = Vec::new();
    for op in OPS {
        for (config, _, _) in CONFIGS {
            if let Some(o) = overhead(results, config, op) {
                rows.push(json!({
                    "op": op, "config": config, "ratio": o.ratio, "low": o.low,
                    "high": o.high, "median_ns": o.median_ns, "p99_ns": o.p99_ns,
                    "errors": o.errors,
                }));
            }
        }
    }
    let noise: serde_json::Map<String, Value> = OPS
        .iter()
        .filter_map(|op| Some((op.to_string(), json!(noise(results, op)?))))
        .collect();
    json!({"overhead": rows, "noise": noise})
}

fn us(ns: f64) -> String {
    format!("{:.1}", ns / 1000.0)
}

fn pct(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

fn markdown(json: &Value) -> String {
    let results = json["results"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let setup = of_kind(results, "setup")
        .next()
        .cloned()
        .unwrap_or_default();
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
        "Every configuration ran in the same boot as its baseline, in {} interleaved rounds. Under software emulation absolute times mean little; the ratios to the baseline are the figures to quote. A row's ratio is the median over rounds of that round's median time per call divided by the same round's baseline; the range shows the lowest and highest round. {}\n",
        setup["rounds"],
        if setup["pinned"] == true {
            "The daemons ran on the first CPU and the timed loops on the last, so a loop's time is what the kernel adds to its own calls; the daemons' work (decoding, sealing, shipping) does not compete with it."
        } else {
            "There was one CPU, so the daemons' work competes with the timed loops."
        }
    );
    let _ = writeln!(md, "## Per-hook overhead\n");
    let _ = writeln!(
        md,
        "The noise floor is how far the baseline measured again at the end of a round typically strayed from that round's baseline (the median over rounds): an overhead within it of a target cannot be judged against that target (\"within noise\").\n"
    );
    let _ = writeln!(
        md,
        "| operation | configuration | median µs | p99 µs | overhead | rounds' range | target | errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for op in OPS {
        let noise = noise(results, op).unwrap_or(0.0);
        for (config, label, target) in CONFIGS {
            let Some(o) = overhead(results, config, op) else {
                continue;
            };
            let over = o.ratio - 1.0;
            let verdict = match target {
                None => "-".to_string(),
                Some(t) if over <= *t => format!("≤ {:.0}%: met", t * 100.0),
                Some(t) if over <= *t + noise => format!("≤ {:.0}%: within noise", t * 100.0),
                Some(t) => format!("≤ {:.0}%: **missed**", t * 100.0),
            };
            let _ = writeln!(
                md,
                "| {op} | {label} | {} | {} | {} | {} … {} | {verdict} | {} |",
                us(o.median_ns),
                us(o.p99_ns),
                pct(o.ratio),
                pct(o.low),
                pct(o.high),
                o.errors
            );
        }
        let _ = writeln!(
            md,
            "| {op} | *noise floor* | | | ±{:.1}% | | | |",
            noise * 100.0
        );
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
        let (Some(guard), Some(auditd)) = (
            overhead(results, "tagged_recorded", op),
            overhead(results, "auditd", op),
        ) else {
            continue;
        };
        let (g, a) = (guard.ratio - 1.0, auditd.ratio - 1.0);
        let share = if a > 0.0 { g / a } else { f64::INFINITY };
        let _ = writeln!(
            md,
            "| {op} | {} | {} | {share:.2} | {} |",
            pct(guard.ratio),
            pct(auditd.ratio),
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
            "\n## Decision cost against policy size (tagged connect)\n\nTarget: within 10% from 1 to 100,000 rules.\n"
        );
        let _ = writeln!(md, "| rules | median µs | p99 µs | ratio to 1 rule |");
        let _ = writeln!(md, "|---|---|---|---|");
        for r in &scale {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} |",
                r["rules"],
                us(r["median_ns"].as_f64().unwrap_or(0.0)),
                us(r["p99_ns"].as_f64().unwrap_or(0.0)),
                r["median_ns"].as_f64().unwrap_or(0.0) / one
            );
        }
    }
    let programs: Vec<&Value> = of_kind(results, "program").collect();
    if !programs.is_empty() {
        let _ = writeln!(
            md,
            "\n## BPF programs (kernel statistics, `kernel.bpf_stats_enabled`)\n\nAverage run time over one tagged pass of every loop (allowed, no record). The share compares a hook's program with the operation it guards, timed in that same pass: the pass's median time for the operation less the program's average, i.e. what the operation costs without it (target: at most 10%). Both are measured at the same moment, so a change in the host's speed during the run moves both alike. The share of the baseline's median (timed in the rounds, minutes apart) is shown after it. Programs named `cg_*` are attached to Guard's root cgroup and run for agents only. These figures come from the kernel's own accounting, so they hold where the timed ratios above are within the noise.\n"
        );
        let _ = writeln!(
            md,
            "| program | runs | average ns | share of the operation, same pass | share of the baseline's median |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for p in programs {
            let name = p["program"].as_str().unwrap_or_default();
            let avg = p["avg_ns"].as_f64().unwrap_or(0.0);
            let op = MAIN_PROGRAM
                .iter()
                .find(|(program, _)| *program == name)
                .map(|(_, op)| *op);
            let same_pass = op
                .and_then(|op| {
                    let timed =
                        of_kind(results, "stats_loop").find(|r| r["op"] == op)?["median_ns"]
                            .as_f64()?;
                    Some((op, avg / (timed - avg).max(1.0)))
                })
                .map(|(op, share)| {
                    let verdict = if share <= PROGRAM_SHARE {
                        "met"
                    } else {
                        "**missed**"
                    };
                    format!("{:.1}% of {op} (≤ 10%: {verdict})", share * 100.0)
                })
                .unwrap_or_default();
            let of_baseline = op
                .and_then(|op| overhead(results, "baseline", op).map(|b| (op, b)))
                .map(|(op, b)| format!("{:.1}% of {op}", avg / b.median_ns * 100.0))
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {name} | {} | {avg:.0} | {same_pass} | {of_baseline} |",
                p["runs"]
            );
        }
    }
    let untagged: Vec<&Value> = of_kind(results, "untagged_runs").collect();
    if !untagged.is_empty() {
        let _ = writeln!(
            md,
            "\nRuns of each program over one untagged pass of every loop (the same calls from a process outside Guard's cgroup). Target: none for the programs on Guard's root cgroup (`cg_*`); the others (the socket hooks) run for every process and return after one cgroup check.\n"
        );
        let _ = writeln!(md, "| program | runs for untagged calls |");
        let _ = writeln!(md, "|---|---|");
        for p in untagged {
            let _ = writeln!(
                md,
                "| {} | {} |",
                p["program"].as_str().unwrap_or_default(),
                p["runs"]
            );
        }
    }
    let pipeline: Vec<&Value> = of_kind(results, "pipeline").collect();
    if !pipeline.is_empty() {
        let _ = writeln!(
            md,
            "\n## Pipeline: paced decisions into a gRPC subscriber and the collector\n\nA tagged agent sends UDP datagrams at a requested rate for a few seconds, each decision recorded. A subscriber follows guardd's live feed (`guardctl events --follow`), and guardd ships to guard-collector (SQLite). Every record the kernel made must reach the subscriber or be counted lost (ring buffer, subscriber queue, decode); \"exact\" says the sum matched. Delivered and stored: seconds from the start of the step until the subscriber, and then the collector's store, had everything. guardd, the subscriber and the collector share one CPU; a rate guardd cannot drain fills the kernel's ring buffer (4 MiB), and what does not fit is lost and counted.\n"
        );
        let _ = writeln!(
            md,
            "| requested /s | achieved /s | made | received | lost: ring buffer | lost: subscriber queue | lost: decode | exact | delivered s | stored s |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        for p in &pipeline {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
                p["requested_rate"],
                p["achieved_rate"].as_f64().unwrap_or(0.0),
                p["made"],
                p["received"],
                p["lost_ring_buffer"],
                p["lost_subscriber_queue"],
                p["lost_decode"],
                if p["exact"] == true { "yes" } else { "**no**" },
                p["delivered_s"].as_f64().unwrap_or(0.0),
                p["stored_s"].as_f64().unwrap_or(0.0),
            );
        }
        let lossless = pipeline
            .iter()
            .take_while(|p| {
                p["lost_ring_buffer"] == 0
                    && p["lost_subscriber_queue"] == 0
                    && p["lost_decode"] == 0
            })
            .filter_map(|p| p["achieved_rate"].as_f64())
            .fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "\nHighest rate with no loss: {lossless:.0} decisions/s (target: 100,000/s). Losses counted exactly at every rate: {}.",
            if pipeline.iter().all(|p| p["exact"] == true) {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    if let Some(load) = of_kind(results, "load").next() {
        let mib = |key: &str| load[key].as_f64().unwrap_or(0.0) / 1024.0;
        let _ = writeln!(
            md,
            "\n## Load: a tagged agent flooding for {} s\n\nThe same pipeline, with the agent sending UDP datagrams as fast as it can, each decision recorded. It passes if guardd and the collector still run and every record the kernel made was received by the subscriber or counted lost.\n",
            load["seconds"]
        );
        let _ = writeln!(
            md,
            "| achieved /s | made | received | lost: ring buffer | lost: subscriber queue | lost: decode | exact | delivered s | stored s |\n|---|---|---|---|---|---|---|---|---|\n| {:.0} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            load["achieved_rate"].as_f64().unwrap_or(0.0),
            load["made"],
            load["received"],
            load["lost_ring_buffer"],
            load["lost_subscriber_queue"],
            load["lost_decode"],
            if load["exact"] == true {
                "yes"
            } else {
                "**no**"
            },
            load["delivered_s"].as_f64().unwrap_or(0.0),
            load["stored_s"].as_f64().unwrap_or(0.0),
        );
        let _ = writeln!(
            md,
            "\n| daemon | resident before, MiB | resident after, MiB | peak resident (whole run), MiB |\n|---|---|---|---|\n| guardd | {:.1} | {:.1} | {:.1} |\n| guard-collector | {:.1} | {:.1} | {:.1} |",
            mib("guardd_rss_kib_before"),
            mib("guardd_rss_kib_after"),
            mib("guardd_peak_rss_kib"),
            mib("collector_rss_kib_before"),
            mib("collector_rss_kib_after"),
            mib("collector_peak_rss_kib"),
        );
        let _ = writeln!(
            md,
            "\nBoth daemons still running: {}. Load test: **{}**.",
            if load["daemons_alive"] == true {
                "yes"
            } else {
                "no"
            },
            if load["passed"] == true {
                "passed"
            } else {
                "failed"
            }
        );
    }
    let footprint: Vec<&Value> = of_kind(results, "footprint").collect();
    if !footprint.is_empty() {
        let _ = writeln!(
            md,
            "\n## Footprint\n\nTarget: guardd under 50 MiB resident, idle.\n"
        );
        let _ = writeln!(
            md,
            "| daemon | when | start-up ms | resident KiB | peak resident KiB |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for f in footprint {
            let round = f["round"]
                .as_u64()
                .map(|r| format!(", round {r}"))
                .unwrap_or_default();
            let or_dash = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or("-".into());
            let _ = writeln!(
                md,
                "| {} | {}{round} | {} | {} | {} |",
                f["daemon"].as_str().unwrap_or_default(),
                f["when"].as_str().unwrap_or_default(),
                or_dash(&f["startup_ms"]),
                or_dash(&f["rss_kib"]),
                or_dash(&f["peak_rss_kib"]),
            );
        }
        let _ = writeln!(
            md,
            "\nStart-up is until guardd logs `enforcing` (programs loaded and the readiness canary passed), or until the collector logs `collecting`."
        );
    }
    md
}

/// A hook program's average run time, at most, as a share of its operation.
const PROGRAM_SHARE: f64 = 0.10;

/// The program that guards each operation.
const MAIN_PROGRAM: &[(&str, &str)] = &[
    ("bprm_check_secu", "exec"),
    ("cg_bprm_check_s", "exec"),
    ("path_unlink", "unlink"),
    ("cg_path_unlink", "unlink"),
    ("socket_connect", "connect"),
    ("socket_sendmsg", "sendto"),
];

/// `cargo xtask db-bench`: runs `db-bench` on this host and writes its
/// report to bench/databases.md.
pub fn databases(repo: &Repo) -> Result<()> {
    native(repo, "db-bench", "bench/databases.md")
}

/// `cargo xtask pipeline-bench`: runs `pipeline-bench` on this host and
/// writes its report to bench/pipeline.md.
pub fn pipeline(repo: &Repo) -> Result<()> {
    native(repo, "pipeline-bench", "bench/pipeline.md")
}

/// Runs the benchmark binary `name` on this host and writes the Markdown
/// report it prints to `report`.
fn native(repo: &Repo, name: &str, report: &str) -> Result<()> {
    setup::setup(repo)?;
    let artifacts = build(repo)?;
    let output = Command::new(artifacts.bin_dir.join(name))
        .env("GUARD_BIN_DIR", &artifacts.bin_dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {name}"))?;
    if !output.status.success() {
        bail!("{name} failed");
    }
    let text = String::from_utf8(output.stdout)
        .with_context(|| format!("{name}'s report is not UTF-8"))?;
    let path = repo.root.join(report);
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    print!("{text}");
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}
