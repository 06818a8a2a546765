//! Masking: columns the policy names are masked in the rows a client
//! receives, and values that look like e-mail addresses, card numbers or
//! secrets are masked wherever they appear in text.
//!
//! Columns are resolved by the server's own ids, never by the names a
//! statement uses: a row description names each result column's table
//! (its OID) and column number, and at the start of each connection the
//! guard asks the server's catalog which ids the masked columns have. A
//! result column the server computed (an expression) names no table; in a
//! statement that reads a table with masked columns the guard cannot tell
//! whether it comes from one, so it masks it (or refuses the statement, as
//! the policy says).

use std::{
    collections::{BTreeSet, HashMap},
    sync::OnceLock,
};

use guard_policy::database::{Detector, Masking};
use regex::bytes::Regex;

use crate::protocol::Message;

/// What the guard shows in place of a masked text value.
const MASKED: &[u8] = b"<masked>";

/// Types whose values are text in both formats: a masked one becomes
/// [`MASKED`]; a masked value of any other type becomes NULL.
const TEXT_TYPES: [u32; 5] = [
    25,   // text
    1043, // varchar
    1042, // bpchar
    19,   // name
    705,  // unknown
];
/// `jsonb`: text in the text format, a version byte and text in binary.
const JSONB: u32 = 3802;

/// The masked columns of one connection's database, by the server's ids.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// `(table OID, column number)` to `schema.table.column`.
    columns: HashMap<(u32, i16), String>,
    /// The tables with masked columns, and the views over them, as
    /// `(schema, table)`.
    tables: BTreeSet<(String, String)>,
    /// Views (and materialized views) over masked columns, by OID: every
    /// column of theirs is masked (the guard cannot tell which of their
    /// columns come from a masked one).
    views: std::collections::HashSet<u32>,
}

impl Catalog {
    /// The query that finds the masked columns' ids (its rows are read by
    /// [`Catalog::add_row`]); `None` when no column is masked.
    pub fn query(masking: &Masking) -> Option<String> {
        let names: BTreeSet<&str> = masking.columns.iter().map(|c| c.column.as_str()).collect();
        if names.is_empty() {
            return None;
        }
        let list: Vec<String> = names
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect();
        Some(format!(
            "SELECT a.attrelid::int8, a.attnum::int4, n.nspname, c.relname, a.attname \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND lower(a.attname) IN ({})",
            list.join(", ")
        ))
    }

    /// One row of [`Catalog::query`]'s answer (text format).
    pub fn add_row(&mut self, masking: &Masking, row: &Message) -> Result<(), String> {
        let values = data_row(row).ok_or("a malformed catalog row")?;
        let text = |i| catalog_value(&values, i);
        let (table, column) = (text(0)?, text(1)?);
        let (schema, relation, name) = (text(2)?, text(3)?, text(4)?);
        if masking
            .columns
            .iter()
            .any(|c| c.matches(&schema, &relation, &name))
        {
            let id = (
                table.parse().map_err(|_| "a catalog row's table id")?,
                column
                    .parse()
                    .map_err(|_| "a catalog row's column number")?,
            );
            self.columns
                .insert(id, format!("{schema}.{relation}.{name}"));
            self.tables
                .insert((schema.to_lowercase(), relation.to_lowercase()));
        }
        Ok(())
    }

    /// The query that finds the views over the masked columns, and views
    /// over those, transitively (its rows are read by
    /// [`Catalog::add_view`]); `None` when no column was found.
    pub fn views_query(&self) -> Option<String> {
        if self.columns.is_empty() {
            return None;
        }
        let masked: Vec<String> = self
            .columns
            .keys()
            .map(|(table, column)| format!("({table}::oid, {column}::int2)"))
            .collect();
        Some(format!(
            "WITH RECURSIVE masked(rel, col) AS (VALUES {} \
             UNION SELECT r.ev_class, 0::int2 FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
             JOIN masked m ON d.refobjid = m.rel AND (m.col = 0 OR d.refobjsubid = m.col) \
             WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass \
             AND d.refclassid = 'pg_catalog.pg_class'::regclass AND r.ev_class <> m.rel) \
             SELECT DISTINCT c.oid::int8, n.nspname, c.relname FROM masked m \
             JOIN pg_catalog.pg_class c ON c.oid = m.rel \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE m.col = 0",
            masked.join(", ")
        ))
    }

    /// One row of [`Catalog::views_query`]'s answer.
    pub fn add_view(&mut self, row: &Message) -> Result<(), String> {
        let values = data_row(row).ok_or("a malformed catalog row")?;
        let text = |i| catalog_value(&values, i);
        let oid = text(0)?.parse().map_err(|_| "a catalog row's view id")?;
        self.views.insert(oid);
        self.tables
            .insert((text(1)?.to_lowercase(), text(2)?.to_lowercase()));
        Ok(())
    }

    /// Whether a statement naming `objects` (`table` or `schema.table`)
    /// may read a table with masked columns (or a view over one).
    pub fn reads_masked(&self, objects: &BTreeSet<String>) -> bool {
        objects.iter().any(|object| self.is_masked(object))
    }

    /// Whether `object` may be a table with masked columns, or a view over
    /// one. A table named without its schema may be in any.
    pub fn is_masked(&self, object: &str) -> bool {
        let object = object.to_lowercase();
        let (schema, table) = match object.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, object.as_str()),
        };
        self.tables
            .iter()
            .any(|(s, t)| t == table && schema.is_none_or(|schema| schema == s))
    }
}

/// The `i`th value of a catalog row, as text.
fn catalog_value(values: &[Option<&[u8]>], i: usize) -> Result<String, String> {
    values
        .get(i)
        .copied()
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .ok_or_else(|| "a catalog row without a value".to_string())
}

/// What happens to one result column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    /// Values pass, but for the value detectors.
    Keep { type_oid: u32 },
    /// A masked column (its name, for records).
    Mask { type_oid: u32, name: String },
}

/// A row description's columns as masking sees them; `Err` names the first
/// computed column when the policy refuses those (`computed: refuse`).
pub fn describe(
    description: &Message,
    catalog: &Catalog,
    masking: &Masking,
    reads_masked: bool,
) -> Result<Vec<Column>, String> {
    let fields = row_description(description).ok_or("a malformed row description")?;
    fields
        .into_iter()
        .map(|(name, table, column, type_oid)| {
            if let Some(masked) = catalog.columns.get(&(table, column)) {
                return Ok(Column::Mask {
                    type_oid,
                    name: masked.clone(),
                });
            }
            if catalog.views.contains(&table) {
                return Ok(Column::Mask {
                    type_oid,
                    name: format!("column `{name}` of a view over masked columns"),
                });
            }
            if table == 0 && reads_masked {
                return match masking.computed {
                    guard_policy::database::Computed::Mask => Ok(Column::Mask {
                        type_oid,
                        name: format!("computed column `{name}`"),
                    }),
                    guard_policy::database::Computed::Refuse => Err(name),
                };
            }
            Ok(Column::Keep { type_oid })
        })
        .collect()
}

/// A row with its masked values replaced; `None` when nothing changed.
/// `masked` gains what was masked (columns' names, `value:DETECTOR`).
pub fn row(
    row: &Message,
    columns: &[Column],
    detectors: &BTreeSet<Detector>,
    masked: &mut BTreeSet<String>,
) -> Option<Message> {
    let values = data_row(row)?;
    let mut changed = false;
    let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let Some(value) = value else {
            out.push(None);
            continue;
        };
        let new = match columns.get(i) {
            Some(Column::Mask { type_oid, name }) => {
                masked.insert(name.clone());
                Some(mask_value(*type_oid))
            }
            Some(Column::Keep { type_oid }) => detect(value, *type_oid, detectors, masked),
            // A row wider than its description: nothing of it passes.
            None => Some(None),
        };
        match new {
            Some(new) => {
                changed = true;
                out.push(new);
            }
            None => out.push(Some(value.to_vec())),
        }
    }
    if !changed {
        return None;
    }
    let mut body = (out.len() as i16).to_be_bytes().to_vec();
    for value in out {
        match value {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(&v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    Some(Message::new(b'D', &body))
}

/// A text with what the detectors find masked; `None` when they find
/// nothing.
pub fn text(
    value: &[u8],
    detectors: &BTreeSet<Detector>,
    masked: &mut BTreeSet<String>,
) -> Option<Vec<u8>> {
    detect(value, TEXT_TYPES[0], detectors, masked).flatten()
}

/// A masked value of `type_oid`: the marker for text, else NULL.
fn mask_value(type_oid: u32) -> Option<Vec<u8>> {
    TEXT_TYPES.contains(&type_oid).then(|| MASKED.to_vec())
}

/// The value with what the detectors find masked; `None` when they find
/// nothing. In a value that is not text (whose bytes the guard cannot
/// edit safely), a find masks the whole value.
fn detect(
    value: &[u8],
    type_oid: u32,
    detectors: &BTreeSet<Detector>,
    masked: &mut BTreeSet<String>,
) -> Option<Option<Vec<u8>>> {
    if detectors.is_empty() {
        return None;
    }
    let text_like = TEXT_TYPES.contains(&type_oid);
    // Binary jsonb starts with its version, 1; JSON text never does.
    let (prefix, text) = match value {
        [1, rest @ ..] if type_oid == JSONB => (&value[..1], rest),
        _ => (&value[..0], value),
    };
    let mut current = text.to_vec();
    let mut found = false;
    for &detector in detectors {
        let hits = find(detector, &current);
        if hits.is_empty() {
            continue;
        }
        found = true;
        masked.insert(format!("value:{}", detector.name()));
        let marker = format!("<masked:{}>", detector.name());
        let mut next = Vec::with_capacity(current.len());
        let mut at = 0;
        for (start, end) in hits {
            next.extend_from_slice(&current[at..start]);
            next.extend_from_slice(marker.as_bytes());
            at = end;
        }
        next.extend_from_slice(&current[at..]);
        current = next;
    }
    if !found {
        return None;
    }
    if !(text_like || type_oid == JSONB || type_oid == 114) {
        return Some(None);
    }
    let mut out = prefix.to_vec();
    out.extend_from_slice(&current);
    Some(Some(out))
}

/// Where `detector` finds its values in `text`.
fn find(detector: Detector, text: &[u8]) -> Vec<(usize, usize)> {
    static EMAIL: OnceLock<Regex> = OnceLock::new();
    static CARD: OnceLock<Regex> = OnceLock::new();
    static SECRET: OnceLock<Regex> = OnceLock::new();
    let regex = |cell: &'static OnceLock<Regex>, pattern: &str| {
        cell.get_or_init(|| Regex::new(pattern).expect("a valid pattern"))
    };
    match detector {
        Detector::Email => regex(
            &EMAIL,
            r"(?i)[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}",
        )
        .find_iter(text)
        .map(|m| (m.start(), m.end()))
        .collect(),
        Detector::CardNumber => regex(&CARD, r"\b\d(?:[ \-]?\d){12,18}\b")
            .find_iter(text)
            .filter(|m| luhn(m.as_bytes()))
            .map(|m| (m.start(), m.end()))
            .collect(),
        Detector::Secret => regex(
            &SECRET,
            concat!(
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
                r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
                r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b",
                r"|\bgithub_pat_[A-Za-z0-9_]{30,}\b",
                r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}\b",
                r"|\b(?:sk|rk)[-_](?:live|test|proj|ant)?[-_]?[A-Za-z0-9_\-]{20,}\b",
                r"|\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
                r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{20,}=*",
            ),
        )
        .find_iter(text)
        .map(|m| (m.start(), m.end()))
        .collect(),
    }
}

/// The Luhn check of a card number's digits (13 to 19).
fn luhn(text: &[u8]) -> bool {
    let digits: Vec<u32> = text
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (0, _) => d,
            (_, doubled) if doubled > 9 => doubled - 9,
            (_, doubled) => doubled,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A `DataRow`'s values (`None` for NULL).
pub fn data_row(message: &Message) -> Option<Vec<Option<&[u8]>>> {
    let body = message.body();
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut values = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            values.push(None);
            continue;
        }
        let end = at.checked_add(len as usize)?;
        values.push(Some(body.get(at..end)?));
        at = end;
    }
    Some(values)
}

/// A `RowDescription`'s fields: name, table OID, column number, type OID.
fn row_description(message: &Message) -> Option<Vec<(String, u32, i16, u32)>> {
    let body = message.body();
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut fields = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let end = at + body.get(at..)?.iter().position(|&b| b == 0)?;
        let name = String::from_utf8_lossy(&body[at..end]).into_owned();
        at = end + 1;
        let table = u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        let column = i16::from_be_bytes(body.get(at + 4..at + 6)?.try_into().ok()?);
        let type_oid = u32::from_be_bytes(body.get(at + 6..at + 10)?.try_into().ok()?);
        // Then the type's size (2), modifier (4) and format (2).
        at += 18;
        fields.push((name, table, column, type_oid));
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(detector: Detector, text: &str) -> String {
        let mut masked = BTreeSet::new();
        match detect(text.as_bytes(), 25, &[detector].into(), &mut masked) {
            Some(Some(v)) => String::from_utf8(v).unwrap(),
            Some(None) => "NULL".into(),
            None => text.into(),
        }
    }

    #[test]
    fn detectors() {
        assert_eq!(
            detected(Detector::Email, "write to ann.lee+x@mail.example.com today"),
            "write to <masked:email> today"
        );
        assert_eq!(
            detected(Detector::Email, "no at sign here"),
            "no at sign here"
        );
        assert_eq!(
            detected(Detector::CardNumber, "card 4111 1111 1111 1111, ok"),
            "card <masked:card_number>, ok"
        );
        assert_eq!(
            detected(Detector::CardNumber, "order 4111111111111112"),
            "order 4111111111111112",
            "fails the Luhn check"
        );
        assert_eq!(
            detected(Detector::Secret, "key=AKIAIOSFODNN7EXAMPLE"),
            "key=<masked:secret>"
        );
        assert_eq!(
            detected(
                Detector::Secret,
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----!"
            ),
            "<masked:secret>!"
        );
        // Not text: the whole value goes.
        let mut masked = BTreeSet::new();
        let found = detect(
            b"\x00\x01a@b.io",
            1009,
            &[Detector::Email].into(),
            &mut masked,
        );
        assert_eq!(found, Some(None));
        assert_eq!(masked, ["value:email".to_string()].into());
    }

    #[test]
    fn tables_read() {
        let mut catalog = Catalog::default();
        catalog.tables.insert(("crm".into(), "customers".into()));
        let objects = |o: &[&str]| o.iter().map(|s| s.to_string()).collect();
        assert!(catalog.reads_masked(&objects(&["customers"])));
        assert!(catalog.reads_masked(&objects(&["CRM.Customers"])));
        assert!(!catalog.reads_masked(&objects(&["public.customers"])));
        assert!(!catalog.reads_masked(&objects(&["orders"])));
    }
}
