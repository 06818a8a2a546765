//! The record stream: drains the programs' ring buffers (denials first),
//! turns kernel records into sealed lines of the events file, publishes them
//! to the live feed, and accounts for every record it could not write with a
//! loss line in its place.
//!
//! A full disk or a full spool does not stop guardd: records it cannot
//! write are counted (stage `events_file`, or `spool_full` at the spool's
//! bound), the programs are told (profiles with audit-or-deny then deny what
//! they would record), and once a write succeeds again a loss line says how
//! many records the gap holds.
//!
//! Between batches it tends the spool: it deletes the rotated files the
//! collector acknowledged, and rotates the events file when it is due,
//! after a signed checkpoint, so every rotated file ends signed.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{Notify, watch},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::state::{State, lock};
use guard_api::{
    audit::{FEED_BATCH, Feed},
    chain::Chain,
    metrics::StageLabels,
    pb,
    record::{Action, CheckpointRecord, Line, Record},
    signing::HostKey,
};

use crate::{
    enforcer::Lane,
    events::{self, Clock},
    metrics::{DaemonMetrics, DecisionLabels},
    spool::{LineFile, Refused, Spool, SpoolLimits},
};

/// How often records of allowed decisions (written without a wake-up) are
/// drained.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// Records written between two chances for the control socket and reloads
/// to run (guardd is single-threaded).
const DRAIN_BATCH: usize = 1024;
/// How often ended sessions are looked for.
const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// How often a blocked events file is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A signed checkpoint follows at most this many lines...
const CHECKPOINT_LINES: u64 = 1000;
/// ...or lines this old (and every guardd's last lines, at shutdown).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// Signs the head of the chain in a checkpoint line now and then
/// ([`guard_api::signing`]).
pub struct Checkpoints {
    key: HostKey,
    /// Lines written since the last checkpoint, and when the first was.
    unsigned: u64,
    since: Option<Instant>,
}

impl Checkpoints {
    pub fn new(key: HostKey) -> Self {
        Self {
            key,
            unsigned: 0,
            since: None,
        }
    }

    fn due(&self) -> bool {
        self.unsigned >= CHECKPOINT_LINES
            || self
                .since
                .is_some_and(|t| t.elapsed() >= CHECKPOINT_INTERVAL)
    }
}

/// Where sealed lines go.
pub enum Out {
    File(Spool),
    Stdout,
}

impl Out {
    /// The spool of the events file at `path` (a torn last line cut, and
    /// returned as the bytes cut), or stdout when there is none.
    pub fn open(path: Option<&Path>, limits: SpoolLimits) -> anyhow::Result<(Self, u64)> {
        match path {
            Some(path) => {
                let (spool, cut) = Spool::open(path, limits)
                    .with_context(|| format!("cannot open events file {}", path.display()))?;
                Ok((Out::File(spool), cut))
            }
            None => Ok((Out::Stdout, 0)),
        }
    }

    fn append(&mut self, lines: &[u8]) -> Result<(), Refused> {
        match self {
            Out::File(spool) => spool.append(lines),
            Out::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(lines)?;
                Ok(stdout.flush()?)
            }
        }
    }
}

/// Writes every record until `shutdown`, then drains what is left.
pub async fn stream_events(
    rings: Vec<(Lane, RingBuf<MapData>)>,
    state: &Mutex<State>,
    mut writer: RecordWriter,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut lanes = Vec::new();
    for (lane, ring) in rings {
        // SAFETY: the ring buffer owns its map fd and lives inside the
        // AsyncFd, so the fd stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .with_context(|| format!("cannot poll the {} ring buffer", lane.map()))?;
        lanes.push((lane, ring));
    }
    let [(denials_lane, denials), (allowed_lane, allowed)] = &mut lanes[..] else {
        anyhow::bail!("the programs have {} ring buffers, not 2", lanes.len());
    };
    let (denials_lane, allowed_lane) = (*denials_lane, *allowed_lane);
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    let mut reap = tokio::time::interval(REAP_INTERVAL);
    let clock = Clock::new();
    macro_rules! drain_both {
        () => {{
            writer
                .drain_all(denials_lane, denials.get_mut(), state, &clock)
                .await?;
            writer
                .drain_all(allowed_lane, allowed.get_mut(), state, &clock)
                .await?;
        }};
    }
    loop {
        tokio::select! {
            ready = denials.readable_mut() => {
                let mut guard = ready?;
                writer.drain_all(denials_lane, guard.get_inner_mut(), state, &clock).await?;
                guard.clear_ready();
            }
            ready = allowed.readable_mut() => {
                let mut guard = ready?;
                writer.drain_all(allowed_lane, guard.get_inner_mut(), state, &clock).await?;
                guard.clear_ready();
            }
            _ = tick.tick() => drain_both!(),
            _ = reap.tick() => {
                drain_both!();
                let mut state = lock(state);
                state.reap_sessions();
                state.update_metrics(&writer.metrics);
            }
            () = shutdown.cancelled() => break,
        }
    }
    drain_both!();
    writer.checkpoint();
    writer.flush();
    Ok(())
}

pub struct RecordWriter {
    chain: Chain,
    out: Out,
    host: String,
    redactor: crate::redact::Redactor,
    processes: crate::enrich::ProcessCache,
    /// An OCSF copy of the stream, for log shippers.
    pub ocsf: Option<LineFile>,
    pub metrics: Arc<DaemonMetrics>,
    pub feed: Feed,
    /// Entries for the feed's subscribers, published at the next flush
    /// (or once there are a batch's worth).
    feed_pending: Vec<pb::Entry>,
    /// The last sequence number written (the shipper follows it).
    pub written: watch::Sender<u64>,
    /// Per lane, the kernel's losses already written as loss lines.
    lost_reported: BTreeMap<&'static str, u64>,
    /// Records lost at a stage and not yet in a loss line (waiting for
    /// the events file to take writes again).
    pending: BTreeMap<&'static str, u64>,
    /// Since when the events file refuses writes, and when it was last
    /// tried; `None` while writes succeed.
    blocked: Option<Blocked>,
    /// The host's signed checkpoints; none without a key.
    pub checkpoints: Option<Checkpoints>,
    /// The collector's acknowledgements, when guardd ships: rotated files
    /// it acknowledged are deleted.
    pub acked: Option<watch::Receiver<u64>>,
    /// Told of each rotation (the new files are then protected).
    pub rotated: Option<Arc<Notify>>,
}

struct Blocked {
    since: Instant,
    tried: Instant,
    /// The loss stage of what is not written meanwhile.
    stage: &'static str,
}

impl RecordWriter {
    /// A writer that seals lines onto `chain` and appends them to `out`.
    pub fn new(chain: Chain, out: Out, host: String, redactor: crate::redact::Redactor) -> Self {
        let written = watch::Sender::new(chain.next_seq() - 1);
        Self {
            chain,
            out,
            host,
            redactor,
            processes: Default::default(),
            ocsf: None,
            metrics: Arc::default(),
            feed: Feed::default(),
            feed_pending: Vec::new(),
            written,
            lost_reported: BTreeMap::new(),
            pending: BTreeMap::new(),
            blocked: None,
            checkpoints: None,
            acked: None,
            rotated: None,
        }
    }

    /// Takes the kernel's losses a previous guardd already reported (kept
    /// with adopted programs), so that they are not reported again.
    pub(super) fn losses_reported_by(&mut self, state: &Mutex<State>) {
        let state = lock(state);
        for lane in Lane::ALL {
            let reported = state.enforcer.counter(lane.reported()).unwrap_or(0);
            self.lost_reported.insert(lane.stage(), reported);
        }
    }

    /// Writes everything in a ring buffer, a batch at a time, letting the
    /// control socket and reloads run between batches.
    async fn drain_all(
        &mut self,
        lane: Lane,
        ring: &mut RingBuf<MapData>,
        state: &Mutex<State>,
        clock: &Clock,
    ) -> anyhow::Result<()> {
        while self.drain(lane, ring, state, clock) {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Writes up to [`DRAIN_BATCH`] records of `lane`; true if more are
    /// waiting.
    fn drain(
        &mut self,
        lane: Lane,
        ring: &mut RingBuf<MapData>,
        state: &Mutex<State>,
        clock: &Clock,
    ) -> bool {
        // What the programs were last told (they are told at each change).
        let mut told_blocked = self.blocked.is_some();
        self.delete_acked();
        self.retry_if_blocked();
        // The state lock is taken once for the batch. guardd's tasks share
        // one thread, so holding it across the batch keeps nobody waiting
        // but a reload's blocking step.
        let mut state = lock(state);
        // Writes resumed: the programs learn it now, not after the batch.
        self.tell_blocked(&mut told_blocked, &mut state);
        let mut taken = 0;
        while taken < DRAIN_BATCH
            && let Some(item) = ring.next()
        {
            taken += 1;
            match events::decode(&item) {
                Ok(event) => {
                    // Make the record (pure) and apply what the decision
                    // sets off, then add the process, seal and write it.
                    let record = state.record(&event, clock);
                    self.emit(record);
                }
                Err(e) => {
                    warn!("{e}");
                    self.lose("decode", 1);
                }
            }
            // `item` is released from the ring buffer only here, once its
            // record is written: a guardd killed before this point leaves
            // the record for the next guardd, never lost unaccounted.
        }
        for record in std::mem::take(&mut state.notes) {
            self.write(Line::Decision(Box::new(record)));
        }
        state.why.write();
        self.count_kernel_losses(lane, &mut state);
        self.write_losses();
        if self.rotate_if_due() {
            // The next guardd checks that it continues this events file.
            state.keep();
        }
        self.tell_blocked(&mut told_blocked, &mut state);
        drop(state);
        if self.checkpoints.as_ref().is_some_and(Checkpoints::due) {
            self.checkpoint();
        }
        self.flush();
        taken == DRAIN_BATCH
    }

    /// Tells the programs when records stop (or start again) being
    /// written, if they were `told` otherwise: audit-or-deny profiles deny
    /// meanwhile.
    fn tell_blocked(&self, told: &mut bool, state: &mut State) {
        let blocked = self.blocked.is_some();
        if *told != blocked {
            if let Err(e) = state.enforcer.set_spool_blocked(blocked) {
                warn!("{e}");
            }
            *told = blocked;
        }
    }

    /// Deletes the rotated files the collector acknowledged.
    fn delete_acked(&mut self) {
        if let (Out::File(spool), Some(acked)) = (&mut self.out, &self.acked) {
            spool.delete_acked(*acked.borrow());
        }
    }

    /// Rotates the events file if it is due, after a checkpoint signing
    /// its last line; true if it did.
    fn rotate_if_due(&mut self) -> bool {
        if self.blocked.is_some() || !matches!(&self.out, Out::File(spool) if spool.rotation_due())
        {
            return false;
        }
        self.checkpoint();
        let last_seq = self.chain.next_seq() - 1;
        let Out::File(spool) = &mut self.out else {
            return false;
        };
        match spool.rotate(last_seq) {
            Ok(to) => {
                info!(file = %to.display(), last_seq, "events file rotated");
                if let Some(rotated) = &self.rotated {
                    rotated.notify_one();
                }
                true
            }
            Err(e) => {
                warn!("cannot rotate the events file: {e}");
                false
            }
        }
    }

    /// Writes a checkpoint signing the last line, if any line since the
    /// last checkpoint needs one.
    pub fn checkpoint(&mut self) {
        let Some(checkpoints) = &self.checkpoints else {
            return;
        };
        if checkpoints.unsigned == 0 || self.blocked.is_some() {
            return;
        }
        let time = guard_api::time::now_rfc3339();
        let seq = self.chain.next_seq();
        let checkpoint = checkpoints
            .key
            .checkpoint(seq - 1, &self.chain.last_hex(), &time);
        let line = Line::Checkpoint(CheckpointRecord {
            seq,
            time,
            checkpoint,
        });
        if self.write_line(&line)
            && let Some(checkpoints) = &mut self.checkpoints
        {
            checkpoints.unsigned = 0;
            checkpoints.since = None;
        }
    }

    /// Adds the acting process to a decision's record, counts it and writes
    /// it.
    pub fn emit(&mut self, mut record: Record) {
        let fresh = record.action == Action::Exec;
        if let Some((process, masked)) = self.processes.get(record.pid, fresh, &self.redactor) {
            record.process = Some(process);
            if masked {
                record.redacted.push("process.cmdline".into());
            }
        }
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                hook: record.hook.clone(),
                verdict: record.verdict.name().into(),
                agent: record.agent.clone(),
            })
            .inc();
        self.write(Line::Decision(Box::new(record)));
    }

    /// Counts the records the programs of `lane` could not make (a full
    /// ring buffer) since they were last reported.
    fn count_kernel_losses(&mut self, lane: Lane, state: &mut State) {
        let reported = self.lost_reported.get(lane.stage()).copied().unwrap_or(0);
        let lost = state.enforcer.counter(lane.lost()).unwrap_or(reported);
        if lost > reported {
            self.lose(lane.stage(), lost - reported);
            self.lost_reported.insert(lane.stage(), lost);
            // Kept with the programs, for a guardd that adopts them.
            if let Err(e) = state.enforcer.set_losses_reported(lane, lost) {
                warn!("{e}");
            }
        }
    }

    /// Counts `records` lost at `stage`; the next loss line reports them.
    pub fn lose(&mut self, stage: &'static str, records: u64) {
        if records == 0 {
            return;
        }
        self.metrics
            .lost
            .get_or_create(&StageLabels {
                stage: stage.into(),
            })
            .inc_by(records);
        *self.pending.entry(stage).or_default() += records;
    }

    /// Writes a loss line for each stage with losses not yet reported,
    /// unless the events file refuses writes.
    pub fn write_losses(&mut self) {
        while self.blocked.is_none()
            && let Some((stage, records)) = self.pending.pop_first()
        {
            let line = Line::Loss(guard_api::record::LossRecord {
                seq: self.chain.next_seq(),
                time: guard_api::time::rfc3339(guard_api::time::now_nanos()),
                loss: guard_api::record::Loss {
                    stage: stage.into(),
                    records,
                },
            });
            if self.write_line(&line) {
                warn!(stage, records, "records lost");
            } else {
                *self.pending.entry(stage).or_default() += records;
            }
        }
    }

    /// Makes what was written visible: the feed's subscribers and the
    /// shipper (woken only when there is something new) and the metrics
    /// told.
    pub fn flush(&mut self) {
        if !self.feed_pending.is_empty() {
            self.feed.publish(std::mem::take(&mut self.feed_pending));
        }
        let last = self.chain.next_seq() - 1;
        self.written.send_if_modified(|written| {
            let new = *written != last;
            *written = last;
            new
        });
        self.metrics.written_seq.set(last as i64);
    }

    /// While the events file refuses writes, tries it again every
    /// [`RETRY_INTERVAL`] with the loss line that reports the gap.
    fn retry_if_blocked(&mut self) {
        let Some(blocked) = self.blocked.take() else {
            return;
        };
        if blocked.tried.elapsed() < RETRY_INTERVAL {
            self.blocked = Some(blocked);
            return;
        }
        self.write_losses();
        match &mut self.blocked {
            None => info!(
                blocked_ms = blocked.since.elapsed().as_millis() as u64,
                "the events file takes records again"
            ),
            Some(again) => again.since = blocked.since,
        }
    }

    /// Writes one decision as the next in the chain, or counts it lost
    /// while the events file refuses writes.
    fn write(&mut self, mut line: Line) {
        if let Line::Decision(record) = &mut line {
            record.seq = self.chain.next_seq();
        }
        if self.blocked.is_some() || !self.write_line(&line) {
            let stage = self.blocked.as_ref().map_or("events_file", |b| b.stage);
            self.lose(stage, 1);
        }
    }

    /// Seals and appends one line (one write, so that a reader following
    /// the file never sees a line split across writes), then copies it to
    /// the OCSF file and publishes it. False if the events file refused it:
    /// the chain is left as it was and the writer is blocked.
    fn write_line(&mut self, line: &Line) -> bool {
        let json = match line.to_json() {
            Ok(json) => json,
            Err(e) => {
                warn!("cannot serialize a record: {e}");
                return false;
            }
        };
        let before = self.chain.clone();
        let (mut sealed, _) = self.chain.seal(json);
        sealed.push(b'\n');
        if let Err(e) = self.out.append(&sealed) {
            self.chain = before;
            if self.blocked.is_none() {
                let stage = match e {
                    Refused::Full { .. } => "spool_full",
                    Refused::Io(_) => "events_file",
                };
                warn!(
                    stage,
                    "cannot write to the events file ({e}): records are counted as lost until it takes writes again; profiles with audit_or_deny deny what they would record"
                );
                let now = Instant::now();
                self.blocked = Some(Blocked {
                    since: now,
                    tried: now,
                    stage,
                });
            }
            return false;
        }
        sealed.pop();
        let text = String::from_utf8_lossy(&sealed);
        if let Some(ocsf) = &mut self.ocsf
            && let Some(event) = guard_api::ocsf::event(&self.host, line, &text)
        {
            let written = serde_json::to_vec(&event)
                .map_err(std::io::Error::other)
                .and_then(|mut event| {
                    event.push(b'\n');
                    ocsf.append(&event)
                });
            if written.is_err() {
                // The chained events file has the record; the copy does not.
                self.metrics
                    .lost
                    .get_or_create(&StageLabels {
                        stage: "ocsf_file".into(),
                    })
                    .inc();
            }
        }
        if self.feed.has_subscribers() {
            self.feed_pending.push(guard_api::audit::entry(
                &self.host,
                text.into_owned(),
                line.clone(),
                pb::Integrity::Unspecified,
            ));
            if self.feed_pending.len() >= FEED_BATCH {
                self.feed.publish(std::mem::take(&mut self.feed_pending));
            }
        }
        if let Some(checkpoints) = &mut self.checkpoints
            && !matches!(line, Line::Checkpoint(_))
        {
            checkpoints.unsigned += 1;
            checkpoints.since.get_or_insert_with(Instant::now);
        }
        true
    }
}
