//! Test harness: start `guardd` with a policy, run `guard-probe` tagged (via
//! `guardctl run`) or untagged, and read the records guardd writes.
//!
//! Binaries are found in `$GUARD_BIN_DIR` (set by `cargo xtask`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod bpf;
pub mod collector;
pub mod databases;

pub const EPERM: i32 = libc::EPERM;

/// Path of one of Guard's binaries.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("GUARD_BIN_DIR")
        .expect("GUARD_BIN_DIR must name the directory with guardd, guardctl and guard-probe");
    Path::new(&dir).join(name)
}

/// A running guardd.
pub struct Guardd {
    child: Child,
    pub policy: PathBuf,
    pub events: PathBuf,
    pub log: PathBuf,
    /// Its local API socket.
    pub socket: PathBuf,
    pub cgroup_root: String,
    /// Detach its pinned programs when dropped (see [`detach`]).
    detach_on_drop: bool,
}

/// `guardd --detach`: removes the programs a guardd left pinned (and
/// attached) for `cgroup_root`. Panics if it fails.
pub fn detach(cgroup_root: &str) {
    if let Err(e) = try_detach(cgroup_root) {
        panic!("{e}");
    }
}

fn try_detach(cgroup_root: &str) -> Result<(), String> {
    let output = Command::new(bin("guardd"))
        .args(["--detach", "--cgroup-root", cgroup_root])
        .output()
        .map_err(|e| format!("run guardd --detach: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "guardd --detach: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl Guardd {
    /// Writes `policy` into `dir`, starts guardd on it with Guard's cgroup at
    /// `cgroup_root` and its local API socket in `dir`, and waits until it logs
    /// "enforcing".
    pub fn start(dir: &Path, policy: &str, cgroup_root: &str) -> Guardd {
        Self::start_with_env(dir, policy, cgroup_root, &[])
    }

    /// [`Self::start`] with extra environment variables for guardd.
    pub fn start_with_env(
        dir: &Path,
        policy: &str,
        cgroup_root: &str,
        env: &[(&str, &str)],
    ) -> Guardd {
        Self::start_with(dir, policy, cgroup_root, &[], env)
    }

    /// [`Self::start`] with extra arguments and environment variables.
    pub fn start_with(
        dir: &Path,
        policy: &str,
        cgroup_root: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Guardd {
        Self::launch(dir, policy, cgroup_root, args, env, claims_enforcing)
    }

    /// A guardd with `--routing-only`, once it has said that it routes and
    /// enforces nothing else.
    pub fn start_routing_only(dir: &Path, policy: &str, cgroup_root: &str) -> Guardd {
        Self::launch(dir, policy, cgroup_root, &["--routing-only"], &[], |log| {
            log.contains("NOT enforcing: routing only")
        })
    }

    /// Starts guardd and waits until its log shows `ready`.
    fn launch(
        dir: &Path,
        policy: &str,
        cgroup_root: &str,
        args: &[&str],
        env: &[(&str, &str)],
        ready: fn(&str) -> bool,
    ) -> Guardd {
        let policy_path = dir.join("policy.yaml");
        fs::write(&policy_path, policy).expect("write policy");
        let events = dir.join("events.jsonl");
        let log = dir.join("guardd.log");
        let socket = dir.join("guard.sock");
        let child = Command::new(bin("guardd"))
            .arg("--policy")
            .arg(&policy_path)
            .arg("--events")
            .arg(&events)
            .arg("--cgroup-root")
            .arg(cgroup_root)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-file")
            .arg(dir.join("state.json"))
            .arg("--why-dir")
            .arg(dir.join("why"))
            .arg("--signing-key")
            .arg(dir.join("signing.key"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("start guardd");
        let mut guardd = Guardd {
            child,
            policy: policy_path,
            events,
            log,
            socket,
            cgroup_root: cgroup_root.into(),
            detach_on_drop: true,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = guardd.log_text();
            if ready(&text) {
                return guardd;
            }
            if let Some(status) = guardd.child.try_wait().expect("poll guardd") {
                panic!("guardd exited with {status} before enforcing:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "guardd did not report being ready in time:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `guardctl ARGS` against this guardd; returns its output.
    pub fn guardctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("guardctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run guardctl")
    }

    /// `guardctl status --json`.
    pub fn status(&self) -> Value {
        let output = self.guardctl(&["status", "--json"]);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "guardctl status: {e}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// Writes a new policy and reloads with `guardctl reload`; returns the
    /// generation now in force, or guardctl's exit code and stderr.
    pub fn reload(&self, policy: &str) -> Result<u64, (i32, String)> {
        fs::write(&self.policy, policy).expect("write policy");
        let output = self.guardctl(&["reload"]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if output.status.success() {
            let generation = stdout
                .split_whitespace()
                .nth(1)
                .and_then(|g| g.parse().ok())
                .unwrap_or_else(|| panic!("guardctl reload: unexpected output {stdout}"));
            Ok(generation)
        } else {
            Err((
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ))
        }
    }

    /// Runs guard-probe as agent `agent` (via `guardctl run`) in `cwd`.
    pub fn probe(&self, agent: &str, cwd: &Path, args: &[&str]) -> Outcome {
        self.probe_with(&["--agent", agent], cwd, args)
    }

    /// Runs guard-probe through `guardctl run RUN_ARGS --` in `cwd`.
    pub fn probe_with(&self, run_args: &[&str], cwd: &Path, args: &[&str]) -> Outcome {
        let output = self
            .probe_command(run_args, args)
            .current_dir(cwd)
            .output()
            .expect("run guardctl");
        parse_outcome(
            output,
            &format!("guardctl run {run_args:?} -- guard-probe {args:?}"),
        )
    }

    /// The `guardctl run RUN_ARGS -- guard-probe ARGS` command.
    pub fn probe_command(&self, run_args: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("guardctl"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("run")
            .args(run_args)
            .arg("--")
            .arg(bin("guard-probe"))
            .args(args);
        cmd
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every complete record written so far (a last line without its
    /// newline is still being written and is left for the next read).
    pub fn records(&self) -> Vec<Value> {
        spool_lines(&self.events)
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("record is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// The sequence number of the last complete line written.
    pub fn last_seq(&self) -> u64 {
        self.records()
            .last()
            .and_then(|r| r["seq"].as_u64())
            .expect("a sealed line")
    }

    /// Waits for the record of process `pid` that satisfies `matches`.
    pub fn record(&self, pid: u32, matches: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_record(&format!("pid {pid}"), |r| r["pid"] == pid && matches(r))
    }

    /// Waits (up to 10 s: records reach the events file a moment after the
    /// decision) for a record that satisfies `matches`, `what` saying which.
    pub fn wait_for_record(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let records = self.records();
            if let Some(r) = records.iter().find(|r| matches(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no record of {what} among {:#?}",
                records
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Records of `pid`, after giving the daemon time to drain allowed records.
    pub fn records_of(&self, pid: u32) -> Vec<Value> {
        std::thread::sleep(Duration::from_millis(600));
        self.records()
            .into_iter()
            .filter(|r| r["pid"] == pid)
            .collect()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Sends SIGTERM and waits; returns the exit code and the log. The
    /// programs guardd leaves attached are then detached ([`detach`]).
    pub fn stop(mut self) -> (Option<i32>, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for guardd");
        (status.code(), self.log_text())
    }

    /// [`Self::stop`], leaving the programs attached (pinned) until
    /// [`detach`] or the drop of a guardd started after it.
    pub fn stop_keeping_programs(mut self) -> (Option<i32>, String) {
        self.detach_on_drop = false;
        self.stop()
    }

    /// SIGKILL: the programs stay attached (pinned) until [`detach`] or the
    /// drop of a guardd started after it.
    pub fn kill(mut self) {
        self.detach_on_drop = false;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guardd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // No panic here: this may run while a failed test unwinds.
        if self.detach_on_drop
            && let Err(e) = try_detach(&self.cgroup_root)
        {
            eprintln!("{e}");
        }
    }
}

/// What a probe reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub pid: u32,
    /// `None` when the call succeeded.
    pub errno: Option<i32>,
}

pub fn parse_outcome(output: std::process::Output, what: &str) -> Outcome {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "{what}: no output; status {}; stderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: bad output {line:?}: {e}"));
    Outcome {
        pid: v["pid"].as_u64().expect("pid") as u32,
        errno: v["errno"].as_i64().map(|e| e as i32),
    }
}

/// Runs guard-probe untagged.
pub fn probe_untagged(cwd: &Path, args: &[&str]) -> Outcome {
    let output = Command::new(bin("guard-probe"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run guard-probe");
    parse_outcome(output, &format!("guard-probe {args:?}"))
}

/// Whether guardd's log claims it is enforcing (its INFO line `enforcing: ...`).
pub fn claims_enforcing(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("INFO") && l.contains("enforcing:"))
}

/// The complete lines of a spool: the files rotated out of `events`, then
/// `events` (whose last line, without its newline, is still being written).
pub fn spool_lines(events: &Path) -> String {
    let mut text = String::new();
    for file in guard_api::spool::files(events).unwrap_or_default() {
        text.push_str(&fs::read_to_string(file).unwrap_or_default());
    }
    let complete = text.rfind('\n').map_or(0, |end| end + 1);
    text.truncate(complete);
    text
}
