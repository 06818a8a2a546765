//! guardctl's audit commands: follow and query the audit API (guardd or
//! guard-collector), verify chains, ship an events file.

use std::{
    io::{BufRead, Read, Write},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use guard_api::{
    audit, chain, exit, ocsf, pb,
    record::{Line, Verdict},
    ship, spool, time,
    tls::Target,
};

/// Which entries: every non-empty list must contain the entry's value.
#[derive(Args, Clone, Debug)]
pub struct FilterArgs {
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
    #[arg(long, value_parser = verdict_parser())]
    verdict: Vec<Verdict>,
    /// Only these hosts (repeatable; collector only).
    #[arg(long)]
    host: Vec<String>,
    /// Entries made at or after this time: a duration ago (`1h`, `30m`) or
    /// an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Entries made before this time (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
}

impl FilterArgs {
    fn to_proto(&self) -> pb::Filter {
        pb::Filter {
            agents: self.agent.clone(),
            sessions: self.session.clone(),
            hooks: self.hook.clone(),
            verdicts: self
                .verdict
                .iter()
                .map(|v| pb::Verdict::from(*v) as i32)
                .collect(),
            hosts: self.host.clone(),
            since: self.since.map(time::timestamp),
            until: self.until.map(time::timestamp),
        }
    }
}

/// Verdicts by name, with their names listed in `--help`.
fn verdict_parser() -> impl clap::builder::TypedValueParser<Value = Verdict> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Verdict::ALL.map(Verdict::name))
        .map(|name| Verdict::from_name(&name).expect("one of the possible values"))
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(time::now_nanos() - ago.as_nanos() as i64);
    }
    humantime::parse_rfc3339_weak(text)
        .map(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_nanos() as i64
        })
        .map_err(|_| format!("`{text}` is neither a duration (1h, 30m) nor an RFC 3339 time"))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// The records exactly as sealed on their host, one JSON object per
    /// line; losses and gaps as `{"loss":..}` and `{"gap":..}` lines.
    Json,
    /// Aligned columns for people.
    Table,
    /// OCSF 1.4 events, one JSON object per line (see docs/audit.md).
    Ocsf,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn client(
    server: &Target,
) -> anyhow::Result<pb::audit_service_client::AuditServiceClient<tonic::transport::Channel>> {
    Ok(pb::audit_service_client::AuditServiceClient::new(
        server.connect().await.context("the audit API")?,
    ))
}

/// Prints entries of the live feed until it ends.
pub fn follow(server: &Target, filter: &FilterArgs, output: Output) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut stream = client(server)
            .await?
            .follow(pb::FollowRequest {
                filter: Some(filter.to_proto()),
            })
            .await?
            .into_inner();
        // The server has subscribed: nothing from now on is missed.
        eprintln!("guardctl: following {}", server.url());
        let mut out = std::io::stdout().lock();
        while let Some(entry) = stream.message().await? {
            print_entry(&mut out, &entry, output)?;
            out.flush()?;
        }
        Ok(())
    })
}

/// Hands every stored entry that matches `filter` to `each`, oldest first,
/// a page at a time, until `each` returns false or none are left.
fn for_each_stored(
    server: &Target,
    filter: pb::Filter,
    mut each: impl FnMut(pb::Entry) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = client(server).await?;
        let mut page_token = String::new();
        loop {
            let page = client
                .query(pb::QueryRequest {
                    filter: Some(filter.clone()),
                    page_size: audit::MAX_PAGE,
                    page_token,
                })
                .await?
                .into_inner();
            for entry in page.entries {
                if !each(entry)? {
                    return Ok(());
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(());
            }
            page_token = page.next_page_token;
        }
    })
}

/// Prints every stored entry that matches, oldest first.
pub fn query(
    server: &Target,
    filter: &FilterArgs,
    limit: Option<u64>,
    output: Output,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut left = limit.unwrap_or(u64::MAX);
    for_each_stored(server, filter.to_proto(), |entry| {
        if left == 0 {
            return Ok(false);
        }
        print_entry(&mut out, &entry, output)?;
        left -= 1;
        Ok(true)
    })
}

pub fn stats(server: &Target, filter: &FilterArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let stats = client(server)
            .await?
            .stats(pb::StatsRequest {
                filter: Some(filter.to_proto()),
            })
            .await?
            .into_inner();
        println!(
            "allowed: {}\ndenied: {}\nwould_deny: {}\nlost: {}\nmissing: {}\nbroken: {}",
            stats.allowed, stats.denied, stats.would_deny, stats.lost, stats.missing, stats.broken
        );
        for host in stats.hosts {
            println!("host {}: next sequence {}", host.host, host.next_seq);
        }
        Ok(())
    })
}

/// One line per entry; none for an entry the output has no form for (a
/// checkpoint in OCSF).
fn print_entry(out: &mut impl Write, entry: &pb::Entry, output: Output) -> std::io::Result<()> {
    let text = format(entry, output);
    if text.is_empty() {
        return Ok(());
    }
    writeln!(out, "{text}")
}

fn format(entry: &pb::Entry, output: Output) -> String {
    match (&entry.entry, output) {
        (Some(pb::entry::Entry::Record(pb::Record { host, json, .. })), Output::Ocsf)
        | (Some(pb::entry::Entry::Loss(pb::Loss { host, json, .. })), Output::Ocsf)
            if !json.is_empty() =>
        {
            match Line::parse(json) {
                Ok(line) => {
                    ocsf::event(host, &line, json).map_or_else(String::new, |e| e.to_string())
                }
                Err(e) => {
                    serde_json::json!({"error": format!("not a record: {e}"), "raw_data": json})
                        .to_string()
                }
            }
        }
        (Some(pb::entry::Entry::Gap(g)), Output::Ocsf) => ocsf::gap(
            &g.host,
            g.first_seq,
            g.last_seq,
            g.time.as_ref().map_or(0, time::nanos),
        )
        .to_string(),
        (Some(pb::entry::Entry::Loss(l)), Output::Ocsf) => {
            // A subscriber-queue loss: not part of any host's stream.
            serde_json::json!({"class_uid": 0, "class_name": "Base Event", "message":
                format!("{} record(s) lost at {}", l.records, l.stage), "count": l.records})
            .to_string()
        }
        (Some(pb::entry::Entry::Record(r)), Output::Json) => r.json.clone(),
        (Some(pb::entry::Entry::Record(r)), Output::Table) => {
            let time = r.time.as_ref().map(|t| time::rfc3339(time::nanos(t)));
            let session = r.session.as_ref().map_or("-", |s| s.id.as_str());
            format!(
                "{:<30} {:<12} {:<10} {:<12} {:<8.8} {:<12} {:<32} {}{}",
                time.unwrap_or_default(),
                if r.host.is_empty() { "-" } else { &r.host },
                audit::verdict_of(r.verdict).map_or("unknown", Verdict::name),
                r.agent,
                session,
                r.action,
                r.target,
                r.rule,
                match pb::Integrity::try_from(r.integrity) {
                    Ok(pb::Integrity::Broken) => "  CHAIN BROKEN",
                    _ => "",
                }
            )
        }
        (Some(pb::entry::Entry::Record(_)), Output::Ocsf) => String::new(),
        (Some(pb::entry::Entry::Loss(l)), Output::Json) if !l.json.is_empty() => l.json.clone(),
        (Some(pb::entry::Entry::Loss(l)), Output::Json) => {
            serde_json::json!({"loss": {"stage": l.stage, "records": l.records}}).to_string()
        }
        (Some(pb::entry::Entry::Loss(l)), Output::Table) => format!(
            "LOSS: {} record(s) lost at {}{}",
            l.records,
            l.stage,
            if l.host.is_empty() {
                String::new()
            } else {
                format!(" on {} (sequence {})", l.host, l.seq)
            }
        ),
        (Some(pb::entry::Entry::Gap(g)), Output::Json) => serde_json::json!({"gap": {
            "host": g.host, "first_seq": g.first_seq, "last_seq": g.last_seq,
            "time": g.time.as_ref().map(|t| time::rfc3339(time::nanos(t))),
        }})
        .to_string(),
        (Some(pb::entry::Entry::Gap(g)), Output::Table) => format!(
            "GAP: records {} to {} of {} never reached the collector",
            g.first_seq, g.last_seq, g.host
        ),
        (Some(pb::entry::Entry::Checkpoint(c)), Output::Json) => c.json.clone(),
        (Some(pb::entry::Entry::Checkpoint(c)), Output::Table) => format!(
            "CHECKPOINT: {} signed sequence {} with {}{}",
            c.host,
            c.covers,
            c.key,
            match pb::Integrity::try_from(c.integrity) {
                Ok(pb::Integrity::Broken) => "  SIGNATURE NOT VALID",
                _ => "",
            }
        ),
        (Some(pb::entry::Entry::Checkpoint(_)), Output::Ocsf) => String::new(),
        (None, _) => String::new(),
    }
}

/// Checks an events file's chain and checkpoints (signed by `key` when
/// given); exit code 0 when intact.
/// Checks an events file, and before it the files rotated out of it (one
/// stream, oldest first); `-` reads standard input.
pub fn verify_file(file: &Path, key: Option<&str>) -> i32 {
    let files = if file == Path::new("-") {
        Vec::new()
    } else {
        match spool::files(file) {
            Ok(files) => files,
            Err(e) => {
                eprintln!(
                    "guardctl: cannot list the files rotated out of {}: {e}",
                    file.display()
                );
                return exit::FAILURE;
            }
        }
    };
    let mut input: Box<dyn Read> = Box::new(std::io::empty());
    for path in &files {
        match std::fs::File::open(path) {
            Ok(f) => input = Box::new(input.chain(f)),
            Err(e) => {
                eprintln!("guardctl: cannot read {}: {e}", path.display());
                return exit::FAILURE;
            }
        }
    }
    if files.is_empty() {
        input = Box::new(std::io::stdin().lock());
    }
    let name = match files.len() {
        0 | 1 => file.display().to_string(),
        n => format!(
            "{} (and {} file(s) rotated out of it)",
            file.display(),
            n - 1
        ),
    };
    match chain::verify(std::io::BufReader::new(input), key) {
        Ok(Err(broken)) if files.len() > 1 => report(&name, &[Err(in_file(&files, broken))], key),
        Ok(result) => report(&name, &[result], key),
        Err(e) => {
            eprintln!("guardctl: cannot read {name}: {e}");
            exit::FAILURE
        }
    }
}

/// Names the file of `files` (read as one stream) where `broken` is, and
/// its line there.
fn in_file(files: &[std::path::PathBuf], broken: chain::Break) -> chain::Break {
    let mut before = 0;
    for path in files {
        let lines = std::fs::File::open(path)
            .map(|f| std::io::BufReader::new(f).lines().count())
            .unwrap_or(0);
        if broken.line <= before + lines {
            return chain::Break {
                line: broken.line - before,
                reason: format!("{} (in {})", broken.reason, path.display()),
            };
        }
        before += lines;
    }
    broken
}

/// Checks the chain of one host's stream as the collector stores it. Gaps
/// the collector recorded split the stream into stretches, each verified
/// on its own; a record removed or changed in the store breaks one.
pub fn verify_stored(server: &Target, host: &str, key: Option<&str>) -> anyhow::Result<i32> {
    let filter = pb::Filter {
        hosts: vec![host.into()],
        ..Default::default()
    };
    let mut stretches = vec![String::new()];
    let mut gaps = Vec::new();
    for_each_stored(server, filter, |entry| {
        let json = match entry.entry {
            Some(pb::entry::Entry::Record(r)) => r.json,
            Some(pb::entry::Entry::Loss(l)) => l.json,
            Some(pb::entry::Entry::Checkpoint(c)) => c.json,
            Some(pb::entry::Entry::Gap(g)) => {
                gaps.push((g.first_seq, g.last_seq));
                stretches.push(String::new());
                return Ok(true);
            }
            None => return Ok(true),
        };
        let stretch = stretches.last_mut().expect("one stretch at least");
        stretch.push_str(&json);
        stretch.push('\n');
        Ok(true)
    })?;
    if stretches.iter().all(|s| s.is_empty()) {
        bail!("the collector holds no records of host `{host}`");
    }
    for (first, last) in &gaps {
        println!("{host}: records {first} to {last} never reached the collector (recorded gap)");
    }
    // The key the first signed stretch shows holds for the later ones.
    let mut results = Vec::new();
    let mut expected = key.map(str::to_string);
    for stretch in &stretches {
        let result = chain::verify(stretch.as_bytes(), expected.as_deref())?;
        if let Ok(verified) = &result {
            expected = verified.key.clone();
        }
        results.push(result);
    }
    Ok(report(&format!("{host} in the collector"), &results, key))
}

/// Prints what `results` (the stretches of one stream) found; exit 1 at a
/// break, or when `key` is expected and no checkpoint was signed by it.
fn report(name: &str, results: &[Result<chain::Verified, chain::Break>], key: Option<&str>) -> i32 {
    let mut records = 0;
    let mut checkpoints = 0;
    let (mut first, mut last, mut signed, mut signer) = (None, None, None, None);
    for result in results {
        match result {
            Ok(v) => {
                records += v.records;
                checkpoints += v.checkpoints;
                first = first.or(v.first_seq);
                last = v.last_seq.or(last);
                signed = v.signed_through.or(signed);
                signer = v.key.clone().or(signer);
            }
            Err(broken) => {
                eprintln!("guardctl: {name}: BROKEN at {broken}");
                return exit::FAILURE;
            }
        }
    }
    match (first, last) {
        (Some(first), Some(last)) => {
            println!("{name}: intact: {records} records, sequence {first} to {last}")
        }
        _ => println!("{name}: intact: no records"),
    }
    match (signed, signer) {
        (Some(through), Some(signer)) => {
            println!(
                "{name}: signed: {checkpoints} checkpoint(s) by {signer}, through sequence {through}"
            );
            if let Some(unsigned) = last
                .map(|last| last.saturating_sub(through))
                .filter(|n| *n > 0)
            {
                println!("{name}: the last {unsigned} line(s) follow the last checkpoint");
            }
            0
        }
        _ if key.is_some() => {
            eprintln!("guardctl: {name}: NOT SIGNED: no checkpoint signed by the host's key");
            exit::FAILURE
        }
        _ => {
            println!("{name}: not signed: no checkpoint");
            0
        }
    }
}

/// Sends an events file to a collector; returns the last acknowledged
/// sequence number.
pub fn ship(file: PathBuf, collector: Target, host: String) -> anyhow::Result<u64> {
    runtime()?.block_on(
        ship::Shipper {
            events: file,
            collector,
            host,
            written: None,
            acked: tokio::sync::watch::Sender::new(0),
        }
        .ship_file(),
    )
}
