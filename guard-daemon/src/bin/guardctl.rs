//! `guardctl`: launch agents, inspect and reload the daemon, check policies.

use std::{collections::BTreeMap, ffi::OsString, path::PathBuf};

use clap::{Parser, Subcommand};
use guard_daemon::{
    api::{self, pb},
    chain,
    control::{self, Request, Response, Status},
    daemon, exit, launch,
};

/// Launch agents under Guard, inspect and reload guardd, check policies.
#[derive(Parser)]
#[command(version, max_term_width = 100)]
struct Args {
    /// guardd's control socket.
    #[arg(long, global = true, env = "GUARD_CONTROL_SOCKET", default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command as an agent, in a new session.
    ///
    /// The command and everything it starts are confined by the session's
    /// profile from its first instruction. Standard streams and signals pass through; the exit
    /// status is the command's. The command sees its session id in
    /// GUARD_SESSION. Run from inside a session, it starts a sub-agent
    /// session under the same profile.
    Run {
        /// Agent name, as in the policy in force.
        #[arg(long, env = "GUARD_AGENT")]
        agent: String,
        /// Profile for this session instead of the agent's.
        #[arg(long)]
        profile: Option<String>,
        /// A label recorded with the session and every record of it, e.g.
        /// `--label ticket=OPS-12`. Repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Show whether guardd is enforcing (exit 1 when not).
    ///
    /// Per hook, the generation and policy, the mode and defaults per
    /// profile, sessions and counters.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make guardd read its policy file again.
    ///
    /// Exit 0 when the new policy is in force, 4 when it was refused (the
    /// old one stays in force), 1 when it is in force but guardd is not
    /// enforcing (the readiness canary failed).
    Reload,
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Follow guardd's records live, through its gRPC API.
    ///
    /// Needs guardd --grpc-listen. Filtered on the server; one JSON object
    /// per line. A line `{"loss":N}` says N records were missed because this
    /// client fell behind.
    Events {
        /// Keep following (the only mode so far).
        #[arg(long, required = true)]
        follow: bool,
        /// guardd's gRPC address.
        #[arg(long, env = "GUARD_GRPC", default_value = "127.0.0.1:50051")]
        server: String,
        /// Only these agents (repeatable).
        #[arg(long)]
        agent: Vec<String>,
        /// Only these sessions (repeatable).
        #[arg(long)]
        session: Vec<String>,
        /// Only these hooks, e.g. path_unlink (repeatable).
        #[arg(long)]
        hook: Vec<String>,
        /// Only these verdicts (repeatable).
        #[arg(long, value_parser = ["allow", "deny", "would_deny"])]
        verdict: Vec<String>,
    },
    /// Check recorded events.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that an events file (guardd --events) is intact: every record's
    /// chain hash matches and no sequence number is missing. Exit 0 when
    /// intact, 1 with the first broken link (line and reason) when not.
    Verify {
        /// Events file (JSON lines), or `-` for standard input.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate and compile a policy file without loading it. Exit 0 when
    /// valid, 4 when not (with the line, column and reason).
    Check {
        /// Policy file (YAML).
        file: PathBuf,
    },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

fn main() {
    let args = Args::parse();
    let code = match args.command {
        Command::Run {
            agent,
            profile,
            labels,
            command,
        } => run(&args.socket, agent, profile, labels, &command),
        Command::Status { json } => match control::call(&args.socket, &Request::Status) {
            Ok(Response::Status(status)) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&status).expect("status serializes")
                    );
                } else {
                    print_status(&status);
                }
                if status.enforcing { 0 } else { exit::FAILURE }
            }
            other => fail(other),
        },
        Command::Reload => match control::call(&args.socket, &Request::Reload) {
            Ok(Response::Reloaded {
                generation,
                policy_sha256,
                problem,
            }) => {
                println!("generation {generation} in force (policy sha256 {policy_sha256})");
                match problem {
                    None => 0,
                    Some(problem) => {
                        eprintln!("guardctl: NOT enforcing: {problem}");
                        exit::FAILURE
                    }
                }
            }
            Ok(Response::PolicyRefused { message }) => {
                eprintln!("guardctl: {message}");
                exit::INVALID_POLICY
            }
            other => fail(other),
        },
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => verify(&file),
        Command::Events {
            follow: _,
            server,
            agent,
            session,
            hook,
            verdict,
        } => {
            let filter = pb::Filter {
                agents: agent,
                sessions: session,
                hooks: hook,
                verdicts: verdict.iter().map(|v| api::verdict(v) as i32).collect(),
            };
            match follow(&server, filter) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("guardctl: {e:#}");
                    exit::FAILURE
                }
            }
        }
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => match daemon::load_policy(&file, None) {
            Ok(policy) => {
                for note in &policy.compiled.notes {
                    eprintln!("note: {note}");
                }
                println!("{}: valid: {}", file.display(), policy.compiled.summary());
                0
            }
            Err(fatal) => {
                eprintln!("guardctl: {fatal}");
                fatal.code
            }
        },
    };
    std::process::exit(code);
}

fn run(
    socket: &std::path::Path,
    agent: String,
    profile: Option<String>,
    labels: Vec<(String, String)>,
    command: &[OsString],
) -> i32 {
    let request = Request::StartSession {
        agent,
        profile,
        labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let (session, procs) = match control::call(socket, &request) {
        Ok(Response::Session {
            session,
            cgroup_procs,
        }) => (session, cgroup_procs),
        other => return fail(other),
    };
    match launch::run(&procs, &session.id, command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("guardctl: {e}");
            exit::FAILURE
        }
    }
}

/// Prints the records of guardd's live feed until it ends.
fn follow(server: &str, filter: pb::Filter) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let url = format!("http://{server}");
        let mut client = pb::audit_service_client::AuditServiceClient::connect(url.clone())
            .await
            .with_context(|| format!("cannot reach guardd's gRPC API at {url} (is guardd running with --grpc-listen?)"))?;
        let mut stream = client
            .follow(pb::FollowRequest {
                filter: Some(filter),
            })
            .await?
            .into_inner();
        let mut out = std::io::stdout().lock();
        while let Some(response) = stream.message().await? {
            let line = match response.event {
                Some(pb::follow_response::Event::Record(r)) => record_json(&r),
                Some(pb::follow_response::Event::Loss(loss)) => {
                    serde_json::json!({"loss": loss.records, "stage": loss.stage})
                }
                None => continue,
            };
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        Ok(())
    })
}

fn record_json(r: &pb::Record) -> serde_json::Value {
    let verdict = match pb::Verdict::try_from(r.verdict) {
        Ok(pb::Verdict::Allow) => "allow",
        Ok(pb::Verdict::Deny) => "deny",
        Ok(pb::Verdict::WouldDeny) => "would_deny",
        _ => "unknown",
    };
    let time = r.time.map(|t| {
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
        humantime::format_rfc3339_nanos(at).to_string()
    });
    serde_json::json!({
        "seq": r.seq,
        "time": time,
        "hook": r.hook,
        "action": r.action,
        "verdict": verdict,
        "agent": r.agent,
        "profile": r.profile,
        "session": r.session.as_ref().map(|s| &s.id),
        "labels": r.session.as_ref().map(|s| &s.labels),
        "generation": r.generation,
        "pid": r.pid,
        "comm": r.comm,
        "target": r.target,
        "rule": r.rule,
        "message": r.message,
        "chain": r.chain,
    })
}

fn verify(file: &std::path::Path) -> i32 {
    let input: Box<dyn std::io::BufRead> = if file == std::path::Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("guardctl: cannot read {}: {e}", file.display());
                return exit::FAILURE;
            }
        }
    };
    match chain::verify(input) {
        Ok(Ok(v)) => {
            match (v.first_seq, v.last_seq) {
                (Some(first), Some(last)) => println!(
                    "{}: intact: {} records, sequence {first} to {last}",
                    file.display(),
                    v.records
                ),
                _ => println!("{}: intact: no records", file.display()),
            }
            0
        }
        Ok(Err(broken)) => {
            eprintln!("guardctl: {}: BROKEN at {broken}", file.display());
            exit::FAILURE
        }
        Err(e) => {
            eprintln!("guardctl: cannot read {}: {e}", file.display());
            exit::FAILURE
        }
    }
}

/// Reports an error or unexpected response; returns the exit code.
fn fail(response: Result<Response, control::ClientError>) -> i32 {
    match response {
        Err(e) => eprintln!("guardctl: {e}"),
        Ok(other) => eprintln!("guardctl: unexpected response from guardd: {other:?}"),
    }
    exit::FAILURE
}

fn print_status(status: &Status) {
    match &status.problem {
        None => println!("enforcing: yes"),
        Some(problem) => println!("enforcing: NO ({problem})"),
    }
    println!(
        "generation: {} (policy {}, sha256 {}, loaded {})",
        status.generation,
        status.policy_file.display(),
        status.policy_sha256,
        status.policy_loaded
    );
    if let Some(rejected) = &status.last_rejected {
        println!("last reload refused: {rejected}");
    }
    println!("hooks:");
    for hook in &status.hooks {
        let state = match (hook.attached, hook.enforcing) {
            (true, true) => "attached, enforcing",
            (true, false) => "attached, NOT enforcing",
            (false, _) => "not attached",
        };
        match &hook.note {
            Some(note) => println!("  {:<22} {state} ({note})", hook.name),
            None => println!("  {:<22} {state}", hook.name),
        }
    }
    println!("profiles:");
    for profile in &status.profiles {
        let defaults: Vec<String> = profile
            .defaults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "  {:<22} {} (defaults {}; {} rules)",
            profile.name,
            profile.mode.to_uppercase(),
            defaults.join(" "),
            profile.rules
        );
    }
    println!("sessions: {}", status.sessions.len());
    for s in &status.sessions {
        println!(
            "  {} agent={} profile={} uid={} started={}",
            s.id, s.agent, s.profile, s.uid, s.started
        );
    }
    let counters: Vec<String> = status
        .counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("counters: {}", counters.join(" "));
}
