//! `guardctl`: launch agents, inspect and reload the daemon, check policies,
//! follow and query the audit trail.

mod audit;
mod local;
mod pki;

use std::{ffi::OsString, path::PathBuf};

use audit::{FilterArgs, Output};
use clap::{Parser, Subcommand, ValueEnum};
use guard_api::{
    exit, paths, pb,
    tls::{Target, TlsArgs},
};

/// Where guardd serves the audit API by default (guardd --grpc-listen).
const GUARDD_API: &str = "127.0.0.1:50051";
/// Where guard-collector serves it by default.
const COLLECTOR_API: &str = "127.0.0.1:50052";

/// Launch agents under Guard, inspect and reload guardd, check policies.
#[derive(Parser)]
#[command(version, max_term_width = 100)]
struct Args {
    /// guardd's local API socket (guardd --socket).
    #[arg(long, alias = "api-socket", global = true, env = "GUARD_SOCKET", default_value = paths::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command as an agent, in a new session.
    ///
    /// The command runs as you and it and everything it starts are confined
    /// by the session's profile from its first instruction: guardd moves it
    /// into the session before it executes. Root may launch any agent;
    /// another user, the agents whose `launched_by` in the policy names
    /// them or one of their groups. Standard streams and signals pass
    /// through; the exit status is the command's. The command sees its
    /// session id in GUARD_SESSION, and the file with its last denials in
    /// GUARD_WHY (see `guardctl why`). Run from inside a session, it starts
    /// a sub-agent session under the same profile.
    Run {
        /// Agent name, as in the policy in force.
        #[arg(long, env = "GUARD_AGENT")]
        agent: String,
        /// Profile for this session instead of the agent's (root only).
        #[arg(long)]
        profile: Option<String>,
        /// A label recorded with the session and every record of it, e.g.
        /// `--label ticket=OPS-12`. Repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Run the command as this user (a name or a uid), with its groups
        /// and home and without root's capabilities, once it has joined
        /// the session. Root only: `sudo guardctl run --user alice ...`.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Place a login in a Guard session: for PAM (pam_exec), when a login
    /// session opens.
    ///
    /// Run as root by `session required pam_exec.so /usr/sbin/guardctl
    /// login` (docs/logins.md): if an agent's `logins` in the policy names
    /// the user or one of their groups, guardd starts a session of that
    /// agent for the login and moves the process opening it (this
    /// command's parent: sshd, su, login) into it, so the login shell and
    /// everything it starts are confined and recorded with the login. Exit
    /// 0 when placed or when no agent takes the user's logins; 1 when guardd
    /// cannot be asked, which makes a `required` PAM line refuse the login.
    Login {
        /// The user logging in.
        #[arg(long, env = "PAM_USER")]
        user: String,
        /// The terminal, if any.
        #[arg(long, env = "PAM_TTY")]
        tty: Option<String>,
        /// The remote host of an ssh login.
        #[arg(long, env = "PAM_RHOST")]
        remote_host: Option<String>,
        /// The PAM service (sshd, su-l, login...).
        #[arg(long, env = "PAM_SERVICE", default_value = "guardctl")]
        service: String,
        /// What PAM is doing; only `open_session` places the login.
        #[arg(long, env = "PAM_TYPE", default_value = "open_session", hide = true)]
        pam_type: String,
    },
    /// Print why actions of this session were denied: its last denials,
    /// each with the action, its target, the rule and the rule's message.
    ///
    /// Inside a session (started by `guardctl run`) it reads the file that
    /// GUARD_WHY names; guardd adds a denial there a moment after it.
    Why {
        /// Another session's id (its file in --why-dir), e.g. as root.
        #[arg(long)]
        session: Option<String>,
        /// Where guardd writes the sessions' files (guardd's --why-dir).
        #[arg(long, env = "GUARD_WHY_DIR", default_value = paths::DEFAULT_WHY_DIR)]
        why_dir: std::path::PathBuf,
    },
    /// Thaw a session that a rule or budget marked `freeze` stopped, kill
    /// every process in it, or refill its budgets (root, or guardd's
    /// --admin-group).
    Session {
        action: SessionAction,
        /// The session's id (`guardctl status` lists them).
        session: String,
    },
    /// List approval tickets: denials under rules marked `approvable`,
    /// waiting for a human (`guardctl approve`).
    ///
    /// An agent sees only its own session's tickets.
    Tickets {
        /// The recently closed tickets too (used, denied, expired).
        #[arg(long)]
        all: bool,
        /// Keep watching: print each ticket again when it opens or changes.
        #[arg(long)]
        follow: bool,
        /// One JSON object per ticket.
        #[arg(long)]
        json: bool,
    },
    /// Approve a ticket: the kernel lets the session that was denied do
    /// that action to that object (the same file, program, or address and
    /// port), so that its retry succeeds; for a database statement, the
    /// statement guard lets the session run the same statement (by its
    /// fingerprint: the same text, any literals). Root only; recorded.
    Approve {
        /// The ticket's id (`guardctl tickets`).
        ticket: String,
        /// Allow one use only (the first retry), within --ttl.
        #[arg(long)]
        once: bool,
        /// How long the approval lasts, e.g. `10m`, `2h`.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Deny a ticket: a pending one is closed, an approved one withdrawn.
    /// Root only; recorded.
    Deny {
        /// The ticket's id (`guardctl tickets`).
        ticket: String,
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
    /// List the sessions guardd knows, through its local API (an agent
    /// sees only its own session tree).
    Sessions {
        /// Only this agent's sessions.
        #[arg(long)]
        agent: Option<String>,
        /// One JSON object per session.
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
    /// Follow records live, through the audit API of guardd or of
    /// guard-collector.
    ///
    /// Filtered on the server. A loss entry says how many records were
    /// missed and where (e.g. this client fell behind).
    Events {
        /// Keep following (the only mode so far).
        #[arg(long, required = true)]
        follow: bool,
        /// The audit API's address (guardd --grpc-listen, or a collector).
        #[arg(long, env = "GUARD_GRPC", default_value = GUARDD_API)]
        server: String,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(short, long, value_enum, default_value = "json")]
        output: Output,
    },
    /// Query, count, verify and ship recorded events.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Make a small certificate authority and the certificates a test
    /// fleet's hosts, readers and collectors use for mutual TLS.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Make DIR/ca.pem (the CA every program is given as --tls-ca) and
    /// DIR/ca.key (which signs certificates; keep it off the hosts).
    Ca {
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Guard fleet CA")]
        name: String,
    },
    /// Make OUT/NAME.pem and OUT/NAME.key, signed by the CA in --ca: NAME
    /// is the certificate's DNS name (a host's --host-name), ROLE its
    /// organizational unit.
    Issue {
        name: String,
        #[arg(long, value_enum)]
        role: guard_api::tls::Role,
        /// The CA's directory (from `guardctl pki ca`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Another DNS name or IP address the holder is reached at, e.g.
        /// the address a collector or --grpc-listen serves on (repeatable).
        #[arg(long = "address", value_name = "NAME|IP")]
        addresses: Vec<String>,
        /// How long the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Where to write the files (default: the CA's directory).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print the stored entries that match, oldest first (from
    /// guard-collector): records, losses, and gaps (which match every
    /// filter but host and time, since a gap may hide any record).
    Query {
        /// The collector's address.
        #[arg(long, env = "GUARD_COLLECTOR_GRPC", default_value = COLLECTOR_API)]
        server: String,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print at most this many entries.
        #[arg(long)]
        limit: Option<u64>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Count the stored entries that match, by verdict, with losses, gaps
    /// and broken chain links, and each host's next sequence number.
    Stats {
        #[arg(long, env = "GUARD_COLLECTOR_GRPC", default_value = COLLECTOR_API)]
        server: String,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Check that records are intact: every chain hash matches and no
    /// sequence number is missing. Exit 0 when intact, 1 with the first
    /// broken link when not.
    ///
    /// Checks an events file (guardd --events), or with --host, that
    /// host's stream as the collector stores it (gaps the collector
    /// recorded are listed, and each stretch between them is checked):
    /// the hash chain, and the host's signature on every checkpoint, so
    /// that a stream rewritten with every hash recomputed is caught.
    Verify {
        /// Events file (JSON lines), or `-` for standard input.
        #[arg(required_unless_present = "host", conflicts_with = "host")]
        file: Option<PathBuf>,
        /// Check this host's stream in the collector instead.
        #[arg(long)]
        host: Option<String>,
        /// The collector's address (with --host).
        #[arg(long, env = "GUARD_COLLECTOR_GRPC", default_value = COLLECTOR_API)]
        server: String,
        #[command(flatten)]
        tls: TlsArgs,
        /// The host's public key (`ed25519:` and 64 hex digits, as guardd
        /// logs it and `guardctl status` shows it): every checkpoint must be
        /// signed by it, and there must be one. Without it, the key of the
        /// first checkpoint is taken and a change of key is a break.
        #[arg(long, value_name = "KEY", value_parser = parse_key)]
        key: Option<String>,
    },
    /// Send an events file to a collector, e.g. one kept from a host whose
    /// guardd no longer runs. Resumes where the collector's copy of the
    /// host's stream ends; exit 0 once the collector acknowledged all.
    Ship {
        /// Events file (guardd --events).
        file: PathBuf,
        /// The host the file is from, as the collector names it.
        #[arg(long = "as-host")]
        host: String,
        /// The collector's address.
        #[arg(long, env = "GUARD_COLLECTOR_GRPC", default_value = COLLECTOR_API)]
        server: String,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate and compile a policy file without loading it, on any
    /// machine (a CI job before deployment): files its rules name that do
    /// not exist here are notes, not errors. Exit 0 when valid, 4 when not
    /// (with the line, column and reason).
    Check {
        /// Policy file (YAML).
        file: PathBuf,
        /// Also check the policy against this host, as guardd would load
        /// it here: every file a rule protects must exist.
        #[arg(long)]
        this_host: bool,
    },
    /// Print the policy in force (its generation and SHA-256 on stderr).
    Show,
    /// Make FILE's policy the one in force: guardd validates it, writes it
    /// to its policy file and loads it. Exit 0 when in force, 4 when refused
    /// (the old policy stays), 1 when in force but not enforcing.
    Apply {
        /// Policy file (YAML).
        file: PathBuf,
        /// Only if the policy in force has this SHA-256 (from `policy
        /// show`), so that a change made meanwhile is not overwritten.
        #[arg(long, value_name = "SHA256")]
        expect: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SessionAction {
    /// Let a frozen session run again.
    Thaw,
    /// Kill every process of the session (frozen or not).
    Kill,
    /// Refill the session's budgets.
    Reset,
}

impl From<SessionAction> for pb::SessionAction {
    fn from(action: SessionAction) -> Self {
        match action {
            SessionAction::Thaw => pb::SessionAction::Thaw,
            SessionAction::Kill => pb::SessionAction::Kill,
            SessionAction::Reset => pb::SessionAction::Reset,
        }
    }
}

fn parse_key(text: &str) -> Result<String, String> {
    guard_api::signing::parse_key(text).map(|_| text.to_string())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

fn main() {
    // A closed pipe (`guardctl status | head -5`) ends the output quietly,
    // as it does for other commands, rather than as a write error or panic.
    // SAFETY: set before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = Args::parse();
    let socket = &args.socket;
    let code = match args.command {
        Command::Run {
            agent,
            profile,
            labels,
            user,
            command,
        } => local::run(socket, agent, profile, labels, user.as_deref(), &command),
        Command::Login {
            user,
            tty,
            remote_host,
            service,
            pam_type,
        } => {
            if pam_type == "open_session" {
                let login = guard_api::session::Login {
                    user,
                    tty: tty.filter(|t| !t.is_empty()),
                    remote_host: remote_host.filter(|h| !h.is_empty()),
                    service,
                };
                local::login(socket, login)
            } else {
                0
            }
        }
        Command::Why { session, why_dir } => why(session, &why_dir),
        Command::Session { action, session } => {
            local::control_session(socket, action.into(), session)
        }
        Command::Tickets { all, follow, json } => local::tickets(socket, all, follow, json),
        Command::Approve { ticket, once, ttl } => {
            local::decide_ticket(socket, ticket, Some((once, ttl)))
        }
        Command::Deny { ticket } => local::decide_ticket(socket, ticket, None),
        Command::Status { json } => local::status(socket, json),
        Command::Reload => local::reload(socket),
        Command::Audit { command } => audit(command),
        Command::Pki {
            command: PkiCommand::Ca { dir, name },
        } => or_fail(pki::make_ca(&dir, &name)),
        Command::Pki {
            command:
                PkiCommand::Issue {
                    name,
                    role,
                    ca,
                    addresses,
                    days,
                    out,
                },
        } => or_fail(pki::issue(&pki::Request {
            ca: &ca,
            role,
            name: &name,
            addresses: &addresses,
            days,
            out: out.as_deref().unwrap_or(&ca),
        })),
        Command::Events {
            follow: _,
            server,
            tls,
            filter,
            output,
        } => with_target(&server, &tls, |target| {
            audit::follow(target, &filter, output).map(|()| 0)
        }),
        Command::Policy {
            command: PolicyCommand::Check { file, this_host },
        } => match guard_policy::load(
            &file,
            if this_host {
                guard_policy::compile::Paths::OnThisHost
            } else {
                guard_policy::compile::Paths::Anywhere
            },
            |_| {},
        ) {
            Ok(policy) => {
                for note in &policy.compiled.notes {
                    eprintln!("note: {note}");
                }
                println!("{}: valid: {}", file.display(), policy.compiled.summary());
                0
            }
            Err(invalid) => {
                eprintln!("guardctl: {invalid}");
                exit::INVALID_POLICY
            }
        },
        Command::Policy {
            command: PolicyCommand::Show,
        } => local::show_policy(socket),
        Command::Policy {
            command: PolicyCommand::Apply { file, expect },
        } => local::apply_policy(socket, &file, expect),
        Command::Sessions { agent, json } => local::list_sessions(socket, agent, json),
    };
    std::process::exit(code);
}

fn why(session: Option<String>, why_dir: &std::path::Path) -> i32 {
    let file = match (session, std::env::var_os("GUARD_WHY")) {
        (Some(id), _) if id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            why_dir.join(id)
        }
        (Some(id), _) => {
            eprintln!("guardctl: `{id}` is not a session id");
            return exit::USAGE;
        }
        (None, Some(file)) => file.into(),
        (None, None) => {
            eprintln!(
                "guardctl: not in a Guard session (GUARD_WHY is not set); name one with --session ID"
            );
            return exit::USAGE;
        }
    };
    match std::fs::read_to_string(&file) {
        Ok(text) if text.is_empty() => {
            println!("no denials in this session");
            0
        }
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("guardctl: cannot read {}: {e}", file.display());
            exit::FAILURE
        }
    }
}

fn audit(command: AuditCommand) -> i32 {
    match command {
        AuditCommand::Query {
            server,
            tls,
            filter,
            limit,
            output,
        } => with_target(&server, &tls, |target| {
            audit::query(target, &filter, limit, output).map(|()| 0)
        }),
        AuditCommand::Stats {
            server,
            tls,
            filter,
        } => with_target(&server, &tls, |target| {
            audit::stats(target, &filter).map(|()| 0)
        }),
        AuditCommand::Verify {
            file: Some(file),
            key,
            ..
        } => audit::verify_file(&file, key.as_deref()),
        AuditCommand::Verify {
            host: Some(host),
            server,
            tls,
            key,
            ..
        } => with_target(&server, &tls, |target| {
            audit::verify_stored(target, &host, key.as_deref())
        }),
        AuditCommand::Verify { .. } => unreachable!("clap requires a file or --host"),
        AuditCommand::Ship {
            file,
            host,
            server,
            tls,
        } => with_target(&server, &tls, |target| {
            let acked = audit::ship(file, target.clone(), host)?;
            println!("shipped: the collector holds the stream up to {acked}");
            Ok(0)
        }),
    }
}

/// Runs `f` against `server` (reached as the TLS flags say) and exits
/// with its code, or 1 with its error; exit [`exit::USAGE`] when the flags
/// do not allow reaching it (plaintext beyond loopback).
fn with_target(server: &str, tls: &TlsArgs, f: impl FnOnce(&Target) -> anyhow::Result<i32>) -> i32 {
    let target = match tls.files().and_then(|tls| Target::new(server, tls)) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("guardctl: {e:#}");
            return exit::USAGE;
        }
    };
    f(&target).unwrap_or_else(|e| {
        // The connection failed, rather than the server answering.
        let transport = e.downcast_ref::<tonic::Status>().is_some_and(|s| {
            std::error::Error::source(s)
                .is_some_and(|source| source.is::<tonic::transport::Error>())
        });
        let e = match &target.tls {
            _ if !transport => e,
            // A TLS server answers plaintext with bytes that are not HTTP/2.
            None => e.context(format!(
                "{} does not answer plaintext gRPC: if it serves TLS, give --tls-cert, --tls-key and --tls-ca",
                target.url()
            )),
            // A server that refuses a client's certificate closes the
            // connection after the handshake.
            Some(files) => e.context(format!(
                "{} closed the connection: if it refused the certificate {} (from another CA, or expired), its log says why",
                target.url(),
                files.certificate.display()
            )),
        };
        eprintln!("guardctl: {e:#}");
        exit::FAILURE
    })
}

fn or_fail(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("guardctl: {e:#}");
            exit::FAILURE
        }
    }
}
