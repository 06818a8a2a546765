//! `guardd`: the Guard enforcement daemon.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;

use clap::Parser;
use guard_api::{
    exit,
    logs::{self, LogFormat},
    paths,
    tls::{Target, TlsArgs, Transport},
};
use guard_daemon::{cgroup, daemon};

/// Enforce a Guard policy on agent cgroups with BPF LSM.
///
/// guardd checks that this host can enforce (BPF LSM active, programs accepted
/// by the kernel, BTF present), loads the programs, creates one cgroup per
/// agent below the cgroup2 mount, publishes the policy to the kernel as
/// generation 1, proves enforcement with a canary agent whose actions must be
/// denied, logs "enforcing", and writes every decision as one JSON object per
/// line. `guardctl run` starts sessions through its local API socket.
///
/// The policy is reloaded on SIGHUP, when the policy file changes, and on
/// `guardctl reload`; a policy that does not parse, validate or compile is
/// refused with its line and reason, and the generation in force stays.
/// SIGTERM or SIGINT stops guardd; its programs stay attached (pinned) and
/// agents stay confined by the policy in force until guardd runs again.
/// `guardd --detach` removes them.
///
/// Exit codes: 0 clean shutdown, 1 failure, 2 usage, 3 this host cannot
/// enforce (the message says why and what to do), 4 invalid policy.
#[derive(Parser)]
#[command(version, max_term_width = 100)]
struct Args {
    /// Policy file (YAML). See docs/policy.md.
    #[arg(long, env = "GUARD_POLICY", required_unless_present_any = ["check", "canary", "detach"])]
    policy: Option<PathBuf>,

    /// Append decision records (JSON lines) to this file instead of stdout.
    #[arg(long, env = "GUARD_EVENTS")]
    events: Option<PathBuf>,

    /// Guard's cgroup, relative to the cgroup2 mount; agents are its children.
    #[arg(long, env = "GUARD_CGROUP_ROOT", default_value = cgroup::DEFAULT_ROOT)]
    cgroup_root: String,

    /// The local gRPC API socket, for guardctl: status, policy, reload,
    /// sessions, tickets. Mode 0666: each request is decided from the
    /// caller's credentials (--read-group, --admin-group, the policy's
    /// `launched_by`).
    #[arg(long, alias = "api-socket", env = "GUARD_SOCKET", default_value = paths::DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Serve the gRPC audit API (live feed of records) on this address, e.g.
    /// 0.0.0.0:50051, with mutual TLS (--tls-*): only certificates of role
    /// `reader` may follow. Off by default.
    #[arg(long, env = "GUARD_GRPC_LISTEN", value_name = "ADDR:PORT")]
    grpc_listen: Option<std::net::SocketAddr>,

    /// Serve --grpc-listen without TLS, on a loopback address only: every
    /// local user may then follow the records.
    #[arg(long, env = "GUARD_GRPC_PLAINTEXT", requires = "grpc_listen")]
    plaintext: bool,

    /// Ship the records to guard-collector at this address, e.g.
    /// collector.example:50052, with mutual TLS (--tls-*; this host's
    /// certificate must name it as --host-name, with role `host`); plaintext
    /// to a loopback address (http://127.0.0.1:50052) when no TLS files are
    /// given. Needs --events: the events file is the spool, kept whole, and
    /// shipping resumes where the collector's copy ends.
    #[arg(
        long,
        env = "GUARD_COLLECTOR",
        value_name = "ADDR",
        requires = "events"
    )]
    collector: Option<String>,

    #[command(flatten)]
    tls: TlsArgs,

    /// Rotate the events file once it holds this much, e.g. 64MiB: it is
    /// renamed EVENTS.<its last sequence number> and a new one begins. With
    /// --collector, a rotated file is deleted once the collector
    /// acknowledged its last line; without, rotated files stay for you to
    /// keep or delete.
    #[arg(
        long,
        env = "GUARD_SPOOL_ROTATE_SIZE",
        value_name = "SIZE",
        default_value = "64MiB"
    )]
    spool_rotate_size: bytesize::ByteSize,

    /// Also rotate the events file once its first line is this old, e.g.
    /// 1h.
    #[arg(long, env = "GUARD_SPOOL_ROTATE_AGE", value_name = "DURATION", value_parser = humantime::parse_duration, requires = "events")]
    spool_rotate_age: Option<std::time::Duration>,

    /// The most the events file and the files rotated out of it may hold
    /// together, e.g. 2GiB (at least twice --spool-rotate-size). At the
    /// bound, guardd writes no record until a rotated file is gone
    /// (acknowledged by the collector, or deleted by you): records it could
    /// not write are counted lost (stage spool_full, in a loss line once it
    /// writes again), and profiles with audit_or_deny deny meanwhile what
    /// they would record. Nothing unshipped is ever deleted.
    #[arg(
        long,
        env = "GUARD_SPOOL_MAX",
        value_name = "SIZE",
        requires = "events"
    )]
    spool_max: Option<bytesize::ByteSize>,

    /// Also mask what this regular expression matches in recorded command
    /// lines (repeatable; a `secret` group limits the mask to it). Built-in
    /// patterns cover passwords in URLs, --password style options,
    /// *_TOKEN= style assignments, bearer tokens, AWS key ids and private
    /// keys.
    #[arg(long = "redact", value_name = "REGEX")]
    redact: Vec<String>,

    /// Also write every record as an OCSF 1.4 event (JSON lines) to this
    /// file, for log shippers.
    #[arg(long = "ocsf-file", env = "GUARD_OCSF_FILE", value_name = "FILE")]
    ocsf: Option<PathBuf>,

    /// Serve Prometheus metrics on this address (GET /metrics), e.g.
    /// 127.0.0.1:9464: decisions by hook, verdict and agent, losses by
    /// stage, the kernel counters, enforcement state, generation, and the
    /// shipping position.
    #[arg(long, env = "GUARD_METRICS_LISTEN", value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,

    /// A file or directory no agent may change, besides Guard's binaries,
    /// policy and record files, which are always protected (repeatable;
    /// e.g. /etc/guard, the collector's database).
    #[arg(long = "protect", value_name = "PATH")]
    protect: Vec<PathBuf>,

    /// This host's name in the collector (default: the system's host name).
    #[arg(long, env = "GUARD_HOST_NAME")]
    host_name: Option<String>,

    /// Only check whether this host can enforce (load and attach the
    /// programs, run the readiness canary, detach), and exit 0 or 3.
    #[arg(long)]
    check: bool,

    /// Where guardd keeps the policy in force and the live sessions for the
    /// guardd started after it, which adopts the programs it left attached.
    #[arg(long, env = "GUARD_STATE_FILE", default_value = paths::DEFAULT_STATE_FILE)]
    state_file: PathBuf,

    /// The host's Ed25519 key (PKCS#8 PEM, mode 0600), made on first
    /// start: guardd signs the head of its record chain with it in a
    /// checkpoint line every 1000 lines, every minute and at shutdown
    /// (docs/audit.md). Keep it across reboots; no agent may read it.
    #[arg(long, env = "GUARD_SIGNING_KEY", default_value = paths::DEFAULT_SIGNING_KEY)]
    signing_key: PathBuf,

    /// Where guardd writes each session's last denials (rule and message),
    /// one file per session, readable by the session's user. `guardctl run`
    /// passes the file to the agent in GUARD_WHY; `guardctl why` prints it.
    #[arg(long, env = "GUARD_WHY_DIR", default_value = paths::DEFAULT_WHY_DIR)]
    why_dir: PathBuf,

    /// The DNS server guardd asks for the addresses of hostname rules
    /// (`host:` in a network rule), instead of those in /etc/resolv.conf.
    #[arg(long, env = "GUARD_DNS_SERVER", value_name = "IP")]
    dns_server: Option<std::net::IpAddr>,

    /// The statement guard's program, started when the policy names
    /// databases (docs/databases.md); default: `guard-pg` next to guardd.
    #[arg(long, env = "GUARD_STATEMENT_GUARD", value_name = "PATH")]
    statement_guard: Option<PathBuf>,

    /// The unprivileged user the statement guard runs as: it parses what
    /// database clients send, so it gets no root and no BPF.
    #[arg(long, env = "GUARD_STATEMENT_GUARD_USER", default_value = "nobody")]
    statement_guard_user: String,

    /// For a host without BPF LSM: run only the routing of agents'
    /// connections to guarded databases to their statement guards (cgroup
    /// programs, which need no LSM). Nothing else is enforced: no exec,
    /// file or network rule, no self-protection. `guardctl status` says so
    /// and exits 1. Holds against agents that are not root.
    #[arg(long, env = "GUARD_ROUTING_ONLY", conflicts_with_all = ["check", "detach"])]
    routing_only: bool,

    /// Attach every BPF LSM program to its hook, where every process on the
    /// host runs it and returns at once unless it is an agent. By default,
    /// the hooks the kernel decides by the calling process's cgroup (exec,
    /// mmap, file opens and creation, unlink, rename, mkdir, clone) have their
    /// program attached to Guard's root cgroup instead (Linux 6.0+), so
    /// that processes outside it run none; a kernel that refuses that gets
    /// the global program, with a warning.
    #[arg(long, env = "GUARD_ATTACH_GLOBALLY")]
    attach_globally: bool,

    /// Detach the programs guardd left attached for --cgroup-root, then
    /// exit. guardd keeps its programs attached (pinned in
    /// /sys/fs/bpf/guard) when it stops or dies, so that agents stay
    /// confined until it runs again; this is the clean shutdown, after
    /// which agents are no longer confined.
    #[arg(long, conflicts_with_all = ["check", "policy"])]
    detach: bool,

    /// The group whose members may read through the local API (status,
    /// policy, sessions, tickets). Default: `guard`, if it exists
    /// (otherwise only root reads); "" for none. Anyone may connect to the
    /// socket: each request is decided from the caller's credentials.
    #[arg(long, env = "GUARD_READ_GROUP", value_name = "GROUP")]
    read_group: Option<String>,

    /// The group whose members may also change: approve or deny tickets,
    /// reload or apply the policy, act on sessions. Default: root only.
    #[arg(long, env = "GUARD_ADMIN_GROUP", value_name = "GROUP")]
    admin_group: Option<String>,

    /// Internal: run the readiness canary's actions (guardd starts itself
    /// this way inside the canary cgroup).
    #[arg(long, hide = true, value_name = "DIR")]
    canary: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, env = "GUARD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.canary {
        std::process::exit(guard_daemon::canary::probe(dir));
    }
    logs::init(args.log_format);

    let result = if args.check {
        daemon::check_host()
    } else if args.detach {
        daemon::detach(&args.cgroup_root)
    } else {
        let redactor = match guard_daemon::redact::Redactor::new(&args.redact) {
            Ok(redactor) => redactor,
            Err(e) => {
                tracing::error!("--redact: {e}");
                std::process::exit(exit::USAGE);
            }
        };
        let access = match daemon::AccessGroups::lookup(
            args.read_group.as_deref(),
            args.admin_group.as_deref(),
        ) {
            Ok(access) => access,
            Err(e) => {
                tracing::error!("{e}");
                std::process::exit(exit::USAGE);
            }
        };
        let (grpc_listen, collector) = match network(&args) {
            Ok(network) => network,
            Err(e) => {
                tracing::error!("{e:#}");
                std::process::exit(exit::USAGE);
            }
        };
        let config = daemon::Config {
            access,
            policy: args.policy.expect("clap requires --policy"),
            events: args.events,
            cgroup_root: args.cgroup_root,
            socket: args.socket,
            grpc_listen,
            collector,
            redactor,
            ocsf: args.ocsf,
            metrics_listen: args.metrics_listen,
            protect: args.protect,
            state_file: args.state_file,
            signing_key: args.signing_key,
            spool: guard_daemon::spool::SpoolLimits {
                rotate_size: Some(args.spool_rotate_size.as_u64()),
                rotate_age: args.spool_rotate_age,
                max: args.spool_max.map(|max| max.as_u64()),
            },
            why_dir: args.why_dir,
            dns_server: args.dns_server,
            programs: guard_daemon::enforcer::Programs {
                routing_only: args.routing_only,
                globally: args.attach_globally,
            },
            statement_guard: daemon::StatementGuardConfig {
                program: args.statement_guard.unwrap_or_else(|| {
                    let me = std::env::current_exe().unwrap_or_default();
                    me.with_file_name("guard-pg")
                }),
                user: args.statement_guard_user,
                log_format: match args.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                },
            },
            host_name: args.host_name.unwrap_or_else(|| {
                nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "localhost".into())
            }),
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| daemon::Fatal {
                code: exit::FAILURE,
                error: e.into(),
            })
            .and_then(|rt| {
                rt.block_on(async {
                    let shutdown =
                        guard_api::shutdown::on_signals().map_err(|e| daemon::Fatal {
                            code: exit::FAILURE,
                            error: e.into(),
                        })?;
                    daemon::run(config, shutdown).await
                })
            })
    };
    if let Err(fatal) = result {
        tracing::error!("{fatal}");
        if fatal.code == exit::UNSUPPORTED_HOST {
            tracing::error!("not enforcing: no agent on this host is confined by Guard");
        }
        std::process::exit(fatal.code);
    }
}

/// Where the audit API listens and how, if it does.
type GrpcListen = Option<(SocketAddr, Transport)>;

/// Where the audit API listens and how, and the collector to ship to.
fn network(args: &Args) -> anyhow::Result<(GrpcListen, Option<Target>)> {
    let tls = args.tls.files()?;
    if tls.is_some() && args.grpc_listen.is_none() && args.collector.is_none() {
        anyhow::bail!("the --tls-* files are for --grpc-listen and --collector; neither is given");
    }
    let grpc_listen = args
        .grpc_listen
        .map(|addr| {
            Transport::listener(tls.clone(), args.plaintext, addr, "--grpc-listen")
                .map(|transport| (addr, transport))
        })
        .transpose()?;
    let collector = args
        .collector
        .as_deref()
        .map(|server| Target::new(server, tls.clone()).context("--collector"))
        .transpose()?;
    Ok((grpc_listen, collector))
}
