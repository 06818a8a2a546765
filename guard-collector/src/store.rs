//! What the collector stores, and the one SQL schema both stores use. The
//! two stores differ only in how they connect, bind values and size
//! themselves.

use guard_api::{audit::Filter, pb, record::Line};

/// One stored row: a record or loss line of a host's stream, or a gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    pub kind: Kind,
    /// The line's sequence number; a gap's first missing one.
    pub seq: u64,
    /// Records this entry stands for: 1 for a record (and a checkpoint),
    /// the lost or missing count for a loss or gap.
    pub count: u64,
    /// Nanoseconds since the epoch: when the record was made, or when the
    /// collector noticed the gap.
    pub time: i64,
    /// Indexed fields of a record (empty for the others).
    pub agent: String,
    pub session: String,
    pub hook: String,
    pub verdict: String,
    pub integrity: pb::Integrity,
    /// The sealed line; empty for a gap.
    pub json: String,
    /// The line as the collector parsed it on the way in, for the live
    /// feed; `None` for a gap and for a row read from the store.
    pub parsed: Option<Line>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Record,
    Loss,
    Gap,
    Checkpoint,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Record => "record",
            Kind::Loss => "loss",
            Kind::Gap => "gap",
            Kind::Checkpoint => "checkpoint",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "record" => Some(Kind::Record),
            "loss" => Some(Kind::Loss),
            "gap" => Some(Kind::Gap),
            "checkpoint" => Some(Kind::Checkpoint),
            _ => None,
        }
    }
}

/// A row read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    /// Position in the store (insertion order).
    pub id: u64,
    pub host: String,
    pub entry: NewEntry,
}

/// Where a host's stream stands in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    pub next_seq: u64,
    /// Chain hash of record `next_seq - 1`.
    pub last_chain: Option<[u8; 32]>,
    /// The key the host's checkpoints must be signed by: pinned
    /// (`--host-key`), or the key of its first checkpoint (enrolled on
    /// first contact); `None` before either.
    pub key: Option<String>,
}

impl Default for StreamState {
    fn default() -> Self {
        Self {
            next_seq: 1,
            last_chain: None,
            key: None,
        }
    }
}

impl StreamState {
    /// Whether the store has no line of the stream yet.
    pub fn is_new(&self) -> bool {
        self.next_seq == 1 && self.last_chain.is_none()
    }
}

/// The query for the sealed line of `host`'s first verified checkpoint,
/// whose key is the one the host enrolled (bind the host as value 1).
pub fn enrolled_key_query(placeholder: &dyn Fn(usize) -> String) -> String {
    format!(
        "SELECT json FROM entries WHERE host = {} AND kind = 'checkpoint' AND integrity = 'verified' ORDER BY id LIMIT 1",
        placeholder(1)
    )
}

/// The key a stored checkpoint line names.
pub fn key_of(json: &str) -> Option<String> {
    match Line::parse(json) {
        Ok(Line::Checkpoint(c)) => Some(c.checkpoint.key),
        _ => None,
    }
}

/// Sums over stored entries, by kind, verdict and integrity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub rows: Vec<(Kind, String, pb::Integrity, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another connection moved the host's stream since we read it.
    #[error("the stream of host `{0}` was extended by another connection")]
    Conflict(String),
    #[error("{0}")]
    Database(String),
}

/// A collector store. Calls are blocking; the collector makes them from
/// blocking threads, one at a time.
pub trait Store: Send {
    /// Where `host`'s stream stands.
    fn stream(&mut self, host: &str) -> Result<StreamState, StoreError>;

    /// Appends `entries` to `host`'s stream and moves it from `from` to
    /// `to`, in one transaction; [`StoreError::Conflict`] if the stream is
    /// no longer at `from`.
    fn append(
        &mut self,
        host: &str,
        from: &StreamState,
        to: &StreamState,
        entries: &[NewEntry],
    ) -> Result<(), StoreError>;

    /// Up to `limit` entries matching `filter` with ids above `after`, in
    /// insertion order.
    fn query(
        &mut self,
        filter: &Filter,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, StoreError>;

    fn totals(&mut self, filter: &Filter) -> Result<Totals, StoreError>;

    /// Every host and its stream's next sequence number.
    fn hosts(&mut self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Deletes entries made before `before` (ns since the epoch) and then,
    /// oldest first, entries until the store holds at most `max_bytes` (where
    /// the store can tell its size). Returns how many it deleted.
    fn prune(&mut self, before: Option<i64>, max_bytes: Option<u64>) -> Result<u64, StoreError>;
}

/// The schema; `{id}` is the dialect's auto-increment key column type.
pub fn schema(id: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS entries (
            id {id},
            host TEXT NOT NULL,
            kind TEXT NOT NULL,
            seq BIGINT NOT NULL,
            count BIGINT NOT NULL,
            time BIGINT NOT NULL,
            agent TEXT NOT NULL,
            session TEXT NOT NULL,
            hook TEXT NOT NULL,
            verdict TEXT NOT NULL,
            integrity TEXT NOT NULL,
            json TEXT NOT NULL,
            UNIQUE (host, kind, seq)
        );
        CREATE INDEX IF NOT EXISTS entries_time ON entries (time);
        CREATE INDEX IF NOT EXISTS entries_host ON entries (host, id);
        CREATE INDEX IF NOT EXISTS entries_agent ON entries (agent, time);
        CREATE INDEX IF NOT EXISTS entries_session ON entries (session);
        CREATE TABLE IF NOT EXISTS streams (
            host TEXT PRIMARY KEY,
            next_seq BIGINT NOT NULL,
            last_chain TEXT NOT NULL
        );"
    )
}

const COLUMNS: &str =
    "id, host, kind, seq, count, time, agent, session, hook, verdict, integrity, json";

/// Reads column `index` of a result row; both stores' rows implement it.
pub trait Row {
    fn int(&self, index: usize) -> i64;
    fn text(&self, index: usize) -> String;
}

/// A row of `SELECT {COLUMNS}`.
pub fn stored_entry(row: &impl Row) -> StoredEntry {
    StoredEntry {
        id: row.int(0) as u64,
        host: row.text(1),
        entry: NewEntry {
            kind: Kind::parse(&row.text(2)).unwrap_or(Kind::Record),
            seq: row.int(3) as u64,
            count: row.int(4) as u64,
            time: row.int(5),
            agent: row.text(6),
            session: row.text(7),
            hook: row.text(8),
            verdict: row.text(9),
            integrity: parse_integrity(&row.text(10)),
            json: row.text(11),
            parsed: None,
        },
    }
}

/// A row of `SELECT kind, verdict, integrity, SUM(count)`.
pub fn totals_row(row: &impl Row) -> (Kind, String, pb::Integrity, u64) {
    (
        Kind::parse(&row.text(0)).unwrap_or(Kind::Record),
        row.text(1),
        parse_integrity(&row.text(2)),
        row.int(3) as u64,
    )
}

/// A statement and the values bound to it; `placeholder(n)` spells the n-th
/// (1-based) bound value in the store's dialect.
pub type Statement = (String, Vec<Value>);

/// Moves `host`'s stream from `from` to `to`: exactly one row changes
/// unless another connection moved it first.
pub fn move_stream(
    host: &str,
    from: &StreamState,
    to: &StreamState,
    placeholder: &dyn Fn(usize) -> String,
) -> Statement {
    let hex_of =
        |c: &Option<[u8; 32]>| Value::Text(c.as_ref().map(hex::encode).unwrap_or_default());
    let p = placeholder;
    if from.is_new() {
        (
            format!(
                "INSERT INTO streams (host, next_seq, last_chain) VALUES ({}, {}, {}) ON CONFLICT (host) DO NOTHING",
                p(1),
                p(2),
                p(3)
            ),
            vec![
                Value::Text(host.into()),
                Value::Int(to.next_seq as i64),
                hex_of(&to.last_chain),
            ],
        )
    } else {
        (
            format!(
                "UPDATE streams SET next_seq = {}, last_chain = {} WHERE host = {} AND next_seq = {} AND last_chain = {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5)
            ),
            vec![
                Value::Int(to.next_seq as i64),
                hex_of(&to.last_chain),
                Value::Text(host.into()),
                Value::Int(from.next_seq as i64),
                hex_of(&from.last_chain),
            ],
        )
    }
}

/// The statement that inserts `rows` entries: each entry's values are
/// bound in the order of [`ENTRY_COLUMNS`] (PostgreSQL's `COPY` writes them
/// so too), one entry after another.
pub fn insert_entries(rows: usize, placeholder: &dyn Fn(usize) -> String) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let marks: Vec<String> = (1..=ENTRY_COLUMN_COUNT)
                .map(|column| placeholder(row * ENTRY_COLUMN_COUNT + column))
                .collect();
            format!("({})", marks.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO entries ({ENTRY_COLUMNS}) VALUES {}",
        values.join(", ")
    )
}

/// The columns a new entry fills: the host, then [`NewEntry`]'s fields in
/// this order (the integrity by [`integrity_name`]).
pub const ENTRY_COLUMNS: &str =
    "host, kind, seq, count, time, agent, session, hook, verdict, integrity, json";
pub const ENTRY_COLUMN_COUNT: usize = 11;

/// Up to `limit` entries matching `filter` with ids above `after`, in
/// insertion order; rows are read with [`stored_entry`].
pub fn query(
    filter: &Filter,
    after: u64,
    limit: u32,
    placeholder: &dyn Fn(usize) -> String,
) -> Statement {
    let (clause, mut values) = filter_clause(filter, placeholder);
    values.push(Value::Int(after as i64));
    let after_mark = placeholder(values.len());
    values.push(Value::Int(i64::from(limit)));
    let limit_mark = placeholder(values.len());
    (
        format!(
            "SELECT {COLUMNS} FROM entries WHERE {clause} AND id > {after_mark} ORDER BY id LIMIT {limit_mark}"
        ),
        values,
    )
}

/// Sums over the entries matching `filter`; rows are read with
/// [`totals_row`].
pub fn totals(filter: &Filter, placeholder: &dyn Fn(usize) -> String) -> Statement {
    let (clause, values) = filter_clause(filter, placeholder);
    (
        format!(
            "SELECT kind, verdict, integrity, CAST(SUM(count) AS BIGINT) FROM entries WHERE {clause} GROUP BY kind, verdict, integrity"
        ),
        values,
    )
}

/// A value bound to a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Int(i64),
}

/// A `WHERE` clause for `filter`, with its values; `placeholder(n)` spells
/// the n-th (1-based) bound value in the dialect.
pub fn filter_clause(
    filter: &Filter,
    placeholder: &dyn Fn(usize) -> String,
) -> (String, Vec<Value>) {
    let mut values = Vec::new();
    let mut bind = |value: Value| {
        values.push(value);
        placeholder(values.len())
    };
    let mut any_of = |column: &str, list: &[String]| -> Option<String> {
        (!list.is_empty()).then(|| {
            let marks: Vec<_> = list.iter().map(|v| bind(Value::Text(v.clone()))).collect();
            format!("{column} IN ({})", marks.join(", "))
        })
    };
    let verdicts: Vec<String> = filter.verdicts.iter().map(|v| v.name().into()).collect();
    let selects: Vec<String> = [
        any_of("agent", &filter.agents),
        any_of("session", &filter.sessions),
        any_of("hook", &filter.hooks),
        any_of("verdict", &verdicts),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut clauses = Vec::new();
    if !selects.is_empty() {
        // Losses and gaps may hide any record, so they match regardless;
        // checkpoints belong to the whole stream, not to a selection.
        clauses.push(format!(
            "(kind IN ('loss', 'gap') OR (kind = 'record' AND {}))",
            selects.join(" AND ")
        ));
    }
    if let Some(hosts) = any_of("host", &filter.hosts) {
        clauses.push(hosts);
    }
    if let Some(since) = filter.since {
        clauses.push(format!("time >= {}", bind(Value::Int(since))));
    }
    if let Some(until) = filter.until {
        clauses.push(format!("time < {}", bind(Value::Int(until))));
    }
    if clauses.is_empty() {
        clauses.push("TRUE".into());
    }
    (clauses.join(" AND "), values)
}

pub fn integrity_name(integrity: pb::Integrity) -> &'static str {
    match integrity {
        pb::Integrity::Verified => "verified",
        pb::Integrity::Unchecked => "unchecked",
        pb::Integrity::Broken => "broken",
        pb::Integrity::Unspecified => "",
    }
}

pub fn parse_integrity(name: &str) -> pb::Integrity {
    match name {
        "verified" => pb::Integrity::Verified,
        "unchecked" => pb::Integrity::Unchecked,
        "broken" => pb::Integrity::Broken,
        _ => pb::Integrity::Unspecified,
    }
}

/// Whole store tests run against both stores (see `tests` in sqlite.rs and
/// tests/tests/collector.rs for PostgreSQL).
#[cfg(test)]
mod tests {
    use super::*;
    use guard_api::record::Verdict;

    #[test]
    fn filters_become_a_clause_with_bound_values() {
        let filter = Filter {
            agents: vec!["coder".into(), "analyst".into()],
            verdicts: vec![Verdict::Deny],
            hosts: vec!["web-1".into()],
            since: Some(10),
            ..Default::default()
        };
        let (clause, values) = filter_clause(&filter, &|n| format!("${n}"));
        assert_eq!(
            clause,
            "(kind IN ('loss', 'gap') OR (kind = 'record' AND agent IN ($1, $2) AND verdict IN ($3))) AND host IN ($4) AND time >= $5"
        );
        assert_eq!(values.len(), 5);
        assert_eq!(values[4], Value::Int(10));
        let (clause, values) = filter_clause(&Filter::default(), &|n| format!("?{n}"));
        assert_eq!((clause.as_str(), values.len()), ("TRUE", 0));
    }
}
