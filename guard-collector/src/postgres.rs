//! The shared store: a PostgreSQL database that several collectors may
//! write to (each host's stream moves only from where it stood, so two
//! collectors never both extend one).

use postgres::{
    Client, NoTls,
    binary_copy::BinaryCopyInWriter,
    types::{ToSql, Type},
};

use crate::store::{
    self, NewEntry, Row, Store, StoreError, StoredEntry, StreamState, Totals, Value, schema,
    stored_entry, totals_row,
};
use guard_api::{audit::Filter, chain};

pub struct Postgres {
    db: Client,
}

fn db_error(e: postgres::Error) -> StoreError {
    StoreError::Database(format!("PostgreSQL: {e}"))
}

/// An arbitrary constant: the advisory lock collectors take while creating
/// the schema, so that two starting at once do not race.
const SCHEMA_LOCK: i64 = 0x6775_6172_6431;

impl Postgres {
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut db = Client::connect(url, NoTls).map_err(|e| {
            StoreError::Database(format!("cannot connect to PostgreSQL at {url}: {e}"))
        })?;
        db.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
            .map_err(db_error)?;
        let created = db.batch_execute(&schema("BIGSERIAL PRIMARY KEY"));
        db.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
            .map_err(db_error)?;
        created.map_err(db_error)?;
        Ok(Self { db })
    }
}

fn placeholder(n: usize) -> String {
    format!("${n}")
}

fn boxed(values: Vec<Value>) -> Vec<Box<dyn ToSql + Sync>> {
    values
        .into_iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Value::Text(t) => Box::new(t),
                Value::Int(i) => Box::new(i),
            }
        })
        .collect()
}

fn refs(values: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v.as_ref()).collect()
}

impl Row for postgres::Row {
    fn int(&self, index: usize) -> i64 {
        self.try_get(index).unwrap_or_default()
    }

    fn text(&self, index: usize) -> String {
        self.try_get(index).unwrap_or_default()
    }
}

impl Store for Postgres {
    fn stream(&mut self, host: &str) -> Result<StreamState, StoreError> {
        let row = self
            .db
            .query_opt(
                "SELECT next_seq, last_chain FROM streams WHERE host = $1",
                &[&host],
            )
            .map_err(db_error)?;
        let key = self
            .db
            .query_opt(&store::enrolled_key_query(&placeholder), &[&host])
            .map_err(db_error)?
            .and_then(|r| store::key_of(r.get(0)));
        Ok(row.map_or_else(StreamState::default, |r| StreamState {
            next_seq: r.get::<_, i64>(0) as u64,
            last_chain: chain::parse_hex(r.get(1)),
            key,
        }))
    }

    fn append(
        &mut self,
        host: &str,
        from: &StreamState,
        to: &StreamState,
        entries: &[NewEntry],
    ) -> Result<(), StoreError> {
        let mut tx = self.db.transaction().map_err(db_error)?;
        let (sql, values) = store::move_stream(host, from, to, &placeholder);
        let moved = tx.execute(&sql, &refs(&boxed(values))).map_err(db_error)?;
        if moved != 1 {
            return Err(StoreError::Conflict(host.into()));
        }
        // One COPY for the batch: a statement per entry costs a round trip
        // each.
        let sink = tx
            .copy_in(&format!(
                "COPY entries ({}) FROM STDIN (FORMAT binary)",
                store::ENTRY_COLUMNS
            ))
            .map_err(db_error)?;
        // In the order of `ENTRY_COLUMNS`.
        let types = [
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
        ];
        let mut rows = BinaryCopyInWriter::new(sink, &types);
        for e in entries {
            let (seq, count) = (e.seq as i64, e.count as i64);
            rows.write(&[
                &host,
                &e.kind.as_str(),
                &seq,
                &count,
                &e.time,
                &e.agent,
                &e.session,
                &e.hook,
                &e.verdict,
                &store::integrity_name(e.integrity),
                &e.json,
            ])
            .map_err(db_error)?;
        }
        rows.finish().map_err(db_error)?;
        tx.commit().map_err(db_error)
    }

    fn query(
        &mut self,
        filter: &Filter,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let (sql, values) = store::query(filter, after, limit, &placeholder);
        let rows = self
            .db
            .query(&sql, &refs(&boxed(values)))
            .map_err(db_error)?;
        Ok(rows.iter().map(stored_entry).collect())
    }

    fn totals(&mut self, filter: &Filter) -> Result<Totals, StoreError> {
        let (sql, values) = store::totals(filter, &placeholder);
        let rows = self
            .db
            .query(&sql, &refs(&boxed(values)))
            .map_err(db_error)?;
        Ok(Totals {
            rows: rows.iter().map(totals_row).collect(),
        })
    }

    fn hosts(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .db
            .query("SELECT host, next_seq FROM streams ORDER BY host", &[])
            .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    /// PostgreSQL sizes itself (autovacuum reuses deleted space); only the
    /// age limit applies.
    fn prune(&mut self, before: Option<i64>, _max_bytes: Option<u64>) -> Result<u64, StoreError> {
        let Some(before) = before else { return Ok(0) };
        self.db
            .execute("DELETE FROM entries WHERE time < $1", &[&before])
            .map_err(db_error)
    }
}
