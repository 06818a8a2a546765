//! The record pipeline's throughput on this host (no VM, no root):
//! synthetic kernel records through guardd's own code (decode, the record,
//! enrichment, sealing, the events file, the live feed) and guardd's
//! shipper into a real guard-collector over mutual TLS, with SQLite and
//! with PostgreSQL; then query and verify streaming. Every rate is shown
//! against a baseline measured in the same run: serializing the same
//! records to JSON and chaining them with SHA-256, the least any sealed
//! record stream costs. Prints a Markdown report; `cargo xtask
//! pipeline-bench` writes it to bench/pipeline.md.
//!
//! Each stage runs as fast as it can over the same records, so its rate is
//! the highest it sustains without loss: nothing in these stages drops a
//! record (the kernel's ring buffer, the one stage that does, is measured by
//! `cargo xtask bench` in a VM). This process runs on the first CPU and
//! the collector on the last; PostgreSQL's server is not pinned.

use std::{fmt::Write as _, path::Path, process::Command, time::Instant};

use guard_api::{
    chain::Chain,
    pb::{self, audit_service_client::AuditServiceClient},
    session::Session,
    ship::Shipper,
    signing::HostKey,
    tls::{Target, TlsArgs},
};
use guard_common::{Event, hook, protocol, verdict};
use guard_daemon::{
    daemon::{Checkpoints, Out, RecordWriter},
    events::{self, Clock},
    generation::Generation,
    redact::Redactor,
    spool::SpoolLimits,
};
use guard_tests::collector::{Collector, Pki, Postgres};
use sha2::{Digest as _, Sha256};

/// Records per stage (a busy host's few minutes), unless
/// `PIPELINE_BENCH_RECORDS` says otherwise (the suite's quick run).
fn record_count() -> usize {
    std::env::var("PIPELINE_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000)
}
const HOST: &str = "bench-host";

const POLICY: &str = "profiles:
  - name: coding
    default: allow
    record_allowed: true
    network:
      deny:
        - id: no-metadata
          cidr: 169.254.169.254/32
          message: the cloud metadata service holds the host's credentials
agents:
  - name: coder
    profile: coding
";

/// Native targets, records per second (issue: the pipeline keeps up).
const TARGET_WRITER: f64 = 200_000.0;
const TARGET_SQLITE: f64 = 150_000.0;
const TARGET_POSTGRES: f64 = 100_000.0;
const TARGET_QUERY: f64 = 200_000.0;

struct Row {
    stage: String,
    seconds: f64,
    records: usize,
    target: Option<f64>,
    /// CPU seconds guard-collector spent in the stage.
    collector_cpu: Option<f64>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

fn main() {
    pin_to_cpu(0, 0);
    let dir = tempfile::tempdir().expect("temporary directory");
    let dir = dir.path();
    let generation = generation();
    let session = session();
    let events = synthetic_events(&generation);
    let clock = Clock::new();
    let records: Vec<_> = events
        .iter()
        .map(|bytes| record(bytes, &generation, &session, &clock))
        .collect();

    let mut rows = Vec::new();
    let baseline = timed(
        "baseline: JSON and a SHA-256 chain",
        events.len(),
        None,
        || {
            let mut last = [0u8; 32];
            let mut bytes = 0;
            for record in &records {
                let json = serde_json::to_vec(record).expect("serialize");
                let mut hash = Sha256::new();
                hash.update(last);
                hash.update(&json);
                last = hash.finalize().into();
                bytes += json.len();
            }
            std::hint::black_box((last, bytes));
        },
    );
    rows.push(baseline);
    rows.push(timed(
        "guardd: decode and make the record",
        events.len(),
        None,
        || {
            for bytes in &events {
                std::hint::black_box(record(bytes, &generation, &session, &clock));
            }
        },
    ));

    let events_file = dir.join("events.jsonl");
    rows.push(writer_stage(
        "guardd: the writer (decode, record, enrich, seal, file, checkpoints)",
        dir,
        &events_file,
        &events,
        &generation,
        &session,
        &clock,
        false,
    ));
    let followed = dir.join("followed.jsonl");
    rows.push(writer_stage(
        "guardd: the writer with a live-feed subscriber",
        dir,
        &followed,
        &events,
        &generation,
        &session,
        &clock,
        true,
    ));
    let lines = count_lines(&events_file);

    let pki = Pki::new(&dir.join("pki"));
    pki.issue("collector", "collector", &["127.0.0.1"]);
    pki.issue(HOST, "host", &[]);
    pki.issue("reader", "reader", &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let sqlite = format!("sqlite:{}", dir.join("collector.db").display());
    let postgres = Postgres::start();
    let stores = [
        ("SQLite", sqlite, TARGET_SQLITE),
        ("PostgreSQL", postgres.url.clone(), TARGET_POSTGRES),
    ];
    for (name, store, target) in stores {
        let collector = Collector::start_with(
            dir.join(format!("collector-{name}.log")),
            &store,
            pki.args("collector"),
        );
        pin_to_cpu(collector.pid(), last_cpu());
        let cpu = || cpu_seconds(collector.pid());
        let before = cpu();
        let mut shipped = timed(
            &format!("guard-collector: ingest into {name} (shipped by guardd's shipper, TLS)"),
            lines,
            Some(target),
            || {
                let acked = runtime.block_on(ship(&events_file, &collector, &pki));
                assert_eq!(
                    acked as usize, lines,
                    "the collector acknowledged every line"
                );
            },
        );
        shipped.collector_cpu = Some(cpu() - before);
        rows.push(shipped);
        let mut read = 0;
        let before = cpu();
        let mut query = timed(
            &format!("guard-collector: query streaming from {name} (gRPC, pages of 1000)"),
            lines,
            Some(TARGET_QUERY),
            || read = runtime.block_on(query_all(&collector, &pki)),
        );
        assert_eq!(read, lines, "the query returned every line");
        query.records = read;
        query.collector_cpu = Some(cpu() - before);
        rows.push(query);
        rows.push(timed(
            &format!("guardctl audit verify --host, from {name}"),
            lines,
            None,
            || {
                guardctl(
                    &[
                        "audit",
                        "verify",
                        "--host",
                        HOST,
                        "--server",
                        &collector.addr,
                    ],
                    &pki.args("reader"),
                )
            },
        ));
    }
    rows.push(timed(
        "guardctl audit verify, the events file",
        lines,
        None,
        || guardctl(&["audit", "verify", events_file.to_str().unwrap()], &[]),
    ));
    print!("{}", report(&rows, lines));
}

/// One writer stage: every event through a real `RecordWriter` into a
/// spool at `path`, signing a checkpoint every 1000 lines as guardd does;
/// with `subscribe`, a live-feed subscriber on another thread takes every
/// entry (its queue's losses are reported in the stage's name).
#[allow(clippy::too_many_arguments)]
fn writer_stage(
    name: &str,
    dir: &Path,
    path: &Path,
    events: &[Vec<u8>],
    generation: &Generation,
    session: &Session,
    clock: &Clock,
    subscribe: bool,
) -> Row {
    let (out, _) = Out::open(Some(path), SpoolLimits::default()).expect("events file");
    let redactor = Redactor::new(&[]).expect("redactor");
    let mut writer = RecordWriter::new(Chain::default(), out, HOST.into(), redactor);
    let (key, _) = HostKey::load_or_create(&dir.join("host.key")).expect("signing key");
    writer.checkpoints = Some(Checkpoints::new(key));
    let follower = subscribe.then(|| {
        let mut queue = writer.feed.subscribe();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("the subscriber's runtime");
            runtime.block_on(async {
                let (mut received, mut lagged) = (0u64, 0u64);
                while let Some((batch, missed)) = queue.recv().await {
                    received += batch.entries.len() as u64;
                    lagged += missed;
                }
                (received, lagged)
            })
        })
    });
    let mut row = timed(name, events.len(), Some(TARGET_WRITER), || {
        for bytes in events {
            writer.emit(record(bytes, generation, session, clock));
        }
        writer.checkpoint();
        writer.flush();
    });
    drop(writer);
    if let Some(follower) = follower {
        let (received, lagged) = follower.join().expect("subscriber");
        let _ = write!(
            row.stage,
            " ({received} entries received, {lagged} lost by the subscriber's queue)"
        );
    }
    row
}

/// What guardd does with one ring-buffer record: decode it and make the
/// record from the generation and session that decided.
fn record(
    bytes: &[u8],
    generation: &Generation,
    session: &Session,
    clock: &Clock,
) -> guard_api::record::Record {
    let event = events::decode(bytes).expect("decode");
    events::to_record(
        &event,
        Some(generation),
        Some(session.agent.clone()),
        Some(session),
        clock,
    )
}

/// A busy agent's decisions, as the kernel writes them: datagrams,
/// connections, deletions and executions in turn, all from this process.
fn synthetic_events(generation: &Generation) -> Vec<Vec<u8>> {
    let pid = std::process::id();
    (0..record_count())
        .map(|i| {
            // SAFETY: Event is plain data; all-zero is valid.
            let mut e: Event = unsafe { std::mem::zeroed() };
            e.boot_ns = 1_000_000_000 + i as u64 * 1000;
            e.generation = generation.number;
            e.agent_cgroup = 77;
            e.cgroup = 77;
            e.pid = pid;
            e.tgid = pid;
            e.uid = 1000;
            e.verdict = verdict::ALLOW;
            e.rule_id = guard_common::NO_RULE;
            e.comm[..5].copy_from_slice(b"agent");
            match i % 4 {
                0 | 1 => {
                    e.hook = if i % 4 == 0 {
                        hook::SENDMSG
                    } else {
                        hook::CONNECT
                    };
                    e.family = 2;
                    e.port = 443;
                    e.protocol = if i % 4 == 0 {
                        protocol::UDP
                    } else {
                        protocol::TCP
                    };
                    e.addr = std::net::Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)
                        .to_ipv6_mapped()
                        .octets();
                }
                n => {
                    e.hook = if n == 2 { hook::UNLINK } else { hook::EXEC };
                    let path = if n == 2 {
                        format!("/srv/work/tmp/cache-{i}.tmp")
                    } else {
                        "/usr/bin/python3".into()
                    };
                    e.path[..path.len()].copy_from_slice(path.as_bytes());
                    e.path_len = path.len() as u16;
                    e.ino = i as u64;
                    e.dev = 2049;
                }
            }
            // SAFETY: Event is plain data; these are its bytes.
            unsafe {
                std::slice::from_raw_parts((&e as *const Event).cast::<u8>(), size_of::<Event>())
            }
            .to_vec()
        })
        .collect()
}

fn generation() -> Generation {
    let loaded = guard_policy::compile_text(
        POLICY.into(),
        "the bench policy",
        guard_policy::compile::Paths::Anywhere,
        |_| {},
    )
    .expect("the bench policy compiles");
    Generation {
        number: 1,
        policy_sha256: loaded.sha256,
        text: POLICY.into(),
        compiled: loaded.compiled,
        loaded: guard_api::time::now_rfc3339(),
    }
}

fn session() -> Session {
    Session {
        id: "7f3c2a9e-5d8e-4c1b-9a0f-3e2d1c0b9a87".into(),
        agent: "coder".into(),
        profile: "coding".into(),
        uid: 1000,
        user: Some("dev".into()),
        login_uid: Some(1000),
        labels: [("ticket".to_string(), "OPS-1".to_string())].into(),
        started: guard_api::time::now_rfc3339(),
        parent: None,
        cgroup: 77,
        login: None,
        ended: None,
    }
}

/// Ships the events file once with guardd's shipper; the last sequence
/// number the collector acknowledged.
async fn ship(events: &Path, collector: &Collector, pki: &Pki) -> u64 {
    let shipper = Shipper {
        events: events.to_path_buf(),
        collector: target(collector, pki, HOST),
        host: HOST.into(),
        written: None,
        acked: tokio::sync::watch::Sender::new(0),
    };
    shipper.ship_file().await.expect("ship the events file")
}

/// Reads every stored entry through the query API, as a reader; how many.
async fn query_all(collector: &Collector, pki: &Pki) -> usize {
    let channel = target(collector, pki, "reader")
        .connect()
        .await
        .expect("connect");
    let mut client = AuditServiceClient::new(channel);
    let (mut read, mut token) = (0, String::new());
    loop {
        let page = client
            .query(pb::QueryRequest {
                filter: None,
                page_size: guard_api::audit::MAX_PAGE,
                page_token: token,
            })
            .await
            .expect("query")
            .into_inner();
        read += page.entries.len();
        if page.next_page_token.is_empty() {
            return read;
        }
        token = page.next_page_token;
    }
}

fn target(collector: &Collector, pki: &Pki, name: &str) -> Target {
    let args = pki.args(name);
    let tls = TlsArgs {
        tls_cert: Some(args[1].clone().into()),
        tls_key: Some(args[3].clone().into()),
        tls_ca: Some(args[5].clone().into()),
    };
    Target::new(
        &collector.addr,
        tls.files().expect("the TLS files are given"),
    )
    .expect("target")
}

fn guardctl(args: &[&str], tls: &[String]) {
    let output = Command::new(guard_tests::bin("guardctl"))
        .args(args)
        .args(tls)
        .output()
        .expect("run guardctl");
    assert!(
        output.status.success(),
        "guardctl {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn timed(stage: &str, records: usize, target: Option<f64>, run: impl FnOnce()) -> Row {
    let started = Instant::now();
    run();
    let row = Row {
        stage: stage.into(),
        seconds: started.elapsed().as_secs_f64(),
        records,
        target,
        collector_cpu: None,
    };
    eprintln!(
        "pipeline-bench: {stage}: {:.0} records/s ({:.2} s)",
        row.rate(),
        row.seconds
    );
    row
}

/// User and system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(Vec::new(), |(_, rest)| rest.split(' ').collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a system setting.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / hz
}

fn count_lines(path: &Path) -> usize {
    let text = std::fs::read(path).expect("read the events file");
    text.iter().filter(|b| **b == b'\n').count()
}

/// The host's last CPU (counted online, whatever this process is pinned to).
fn last_cpu() -> usize {
    // SAFETY: sysconf reads a system setting.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    online.max(1) as usize - 1
}

/// Pins process `pid` (0: this one) to one CPU.
fn pin_to_cpu(pid: u32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // read and write only it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as i32, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn report(rows: &[Row], lines: usize) -> String {
    let baseline = rows[0].rate();
    let mut md = String::new();
    let _ = writeln!(md, "# The record pipeline, natively\n");
    let _ = writeln!(
        md,
        "`cargo xtask pipeline-bench` on {}, kernel {}, {} CPUs; {} synthetic records ({lines} lines with the signed checkpoints).\n",
        guard_api::time::now_rfc3339(),
        uname_release(),
        last_cpu() + 1,
        rows[0].records,
    );
    let _ = writeln!(
        md,
        "Each stage runs as fast as it can over the same records: its rate is the highest it sustains without loss. The ratio compares it with the baseline measured in the same run (the same records serialized to JSON and chained with SHA-256 on one core: the practical limit of any sealed stream). The bench runs on the first CPU, guard-collector on the last; the PostgreSQL server is not pinned. Shipping and queries use mutual TLS on loopback.\n"
    );
    let _ = writeln!(
        md,
        "| stage | records/s | ratio to baseline | seconds | guard-collector's CPU | target |\n|---|---|---|---|---|---|"
    );
    for row in rows {
        let target = match row.target {
            None => "-".to_string(),
            Some(t) if row.rate() >= t => format!("≥ {t:.0}/s: met"),
            Some(t) => format!("≥ {t:.0}/s: **missed**"),
        };
        let cpu = row.collector_cpu.map_or("-".to_string(), |cpu| {
            format!("{:.0}%", 100.0 * cpu / row.seconds)
        });
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.3} | {:.2} | {cpu} | {target} |",
            row.stage,
            row.rate(),
            row.rate() / baseline,
            row.seconds,
        );
    }
    md
}

fn uname_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
