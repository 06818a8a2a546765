//! The embedded store: one SQLite database in WAL mode.

use std::path::Path;

use rusqlite::{
    Connection, OptionalExtension as _, params_from_iter,
    types::{self, ToSqlOutput, ValueRef},
};

use crate::store::{
    self, NewEntry, Row, Store, StoreError, StoredEntry, StreamState, Totals, Value, schema,
    stored_entry, totals_row,
};
use guard_api::{audit::Filter, chain};

pub struct Sqlite {
    db: Connection,
}

fn db_error(e: rusqlite::Error) -> StoreError {
    StoreError::Database(format!("SQLite: {e}"))
}

impl Sqlite {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Connection::open(path)
            .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
        // WAL: readers do not block the writer. FULL: an acknowledged
        // batch survives a power cut, not just a crash.
        db.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; {}",
            schema("INTEGER PRIMARY KEY AUTOINCREMENT")
        ))
        .map_err(db_error)?;
        Ok(Self { db })
    }
}

fn bind(values: Vec<Value>) -> Vec<types::Value> {
    values
        .into_iter()
        .map(|v| match v {
            Value::Text(t) => types::Value::Text(t),
            Value::Int(i) => types::Value::Integer(i),
        })
        .collect()
}

/// Entries one INSERT writes: SQLite starts and ends a statement (and
/// moves the AUTOINCREMENT counter) once for them all.
const ROWS_PER_INSERT: usize = 32;

/// An entry's values in the order of `store::ENTRY_COLUMNS`, borrowed.
fn entry_values<'a>(
    host: &'a str,
    e: &'a NewEntry,
) -> [ToSqlOutput<'a>; store::ENTRY_COLUMN_COUNT] {
    let text = |t: &'a str| ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes()));
    let int = |i: i64| ToSqlOutput::Borrowed(ValueRef::Integer(i));
    [
        text(host),
        text(e.kind.as_str()),
        int(e.seq as i64),
        int(e.count as i64),
        int(e.time),
        text(&e.agent),
        text(&e.session),
        text(&e.hook),
        text(&e.verdict),
        text(store::integrity_name(e.integrity)),
        text(&e.json),
    ]
}

fn placeholder(n: usize) -> String {
    format!("?{n}")
}

// The schema declares every column NOT NULL, of the type asked for.
impl Row for rusqlite::Row<'_> {
    fn int(&self, index: usize) -> i64 {
        self.get(index).unwrap_or_default()
    }

    fn text(&self, index: usize) -> String {
        self.get(index).unwrap_or_default()
    }
}

impl Sqlite {
    fn rows<T>(
        &self,
        sql: &str,
        values: Vec<Value>,
        read: fn(&rusqlite::Row<'_>) -> T,
    ) -> Result<Vec<T>, StoreError> {
        let mut statement = self.db.prepare(sql).map_err(db_error)?;
        let rows = statement
            .query_map(params_from_iter(bind(values)), |row| Ok(read(row)))
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }
}

impl Store for Sqlite {
    fn stream(&mut self, host: &str) -> Result<StreamState, StoreError> {
        let row: Option<(i64, String)> = self
            .db
            .query_row(
                "SELECT next_seq, last_chain FROM streams WHERE host = ?1",
                [host],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_error)?;
        let key: Option<String> = self
            .db
            .query_row(&store::enrolled_key_query(&placeholder), [host], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_error)?;
        Ok(
            row.map_or_else(StreamState::default, |(next_seq, last)| StreamState {
                next_seq: next_seq as u64,
                last_chain: chain::parse_hex(&last),
                key: key.as_deref().and_then(store::key_of),
            }),
        )
    }

    fn append(
        &mut self,
        host: &str,
        from: &StreamState,
        to: &StreamState,
        entries: &[NewEntry],
    ) -> Result<(), StoreError> {
        let tx = self.db.transaction().map_err(db_error)?;
        let (sql, values) = store::move_stream(host, from, to, &placeholder);
        let moved = tx
            .execute(&sql, params_from_iter(bind(values)))
            .map_err(db_error)?;
        if moved != 1 {
            return Err(StoreError::Conflict(host.into()));
        }
        let mut full = entries.chunks_exact(ROWS_PER_INSERT);
        {
            let mut insert = tx
                .prepare_cached(&store::insert_entries(ROWS_PER_INSERT, &placeholder))
                .map_err(db_error)?;
            for rows in &mut full {
                insert
                    .execute(params_from_iter(
                        rows.iter().flat_map(|e| entry_values(host, e)),
                    ))
                    .map_err(db_error)?;
            }
            let mut insert = tx
                .prepare_cached(&store::insert_entries(1, &placeholder))
                .map_err(db_error)?;
            for e in full.remainder() {
                insert
                    .execute(params_from_iter(entry_values(host, e)))
                    .map_err(db_error)?;
            }
        }
        tx.commit().map_err(db_error)
    }

    fn query(
        &mut self,
        filter: &Filter,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let (sql, values) = store::query(filter, after, limit, &placeholder);
        self.rows(&sql, values, |row| stored_entry(row))
    }

    fn totals(&mut self, filter: &Filter) -> Result<Totals, StoreError> {
        let (sql, values) = store::totals(filter, &placeholder);
        Ok(Totals {
            rows: self.rows(&sql, values, |row| totals_row(row))?,
        })
    }

    fn hosts(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut statement = self
            .db
            .prepare("SELECT host, next_seq FROM streams ORDER BY host")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    fn prune(&mut self, before: Option<i64>, max_bytes: Option<u64>) -> Result<u64, StoreError> {
        let mut deleted = 0;
        if let Some(before) = before {
            deleted += self
                .db
                .execute("DELETE FROM entries WHERE time < ?1", [before])
                .map_err(db_error)? as u64;
        }
        let Some(max_bytes) = max_bytes else {
            return Ok(deleted);
        };
        loop {
            let used: i64 = self
                .db
                .query_row(
                    "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
                    [],
                    |r| r.get(0),
                )
                .map_err(db_error)?;
            if used as u64 <= max_bytes {
                return Ok(deleted);
            }
            let n = self
                .db
                .execute(
                    "DELETE FROM entries WHERE id IN (SELECT id FROM entries ORDER BY id LIMIT 1000)",
                    [],
                )
                .map_err(db_error)?;
            if n == 0 {
                return Ok(deleted);
            }
            deleted += n as u64;
        }
    }
}
