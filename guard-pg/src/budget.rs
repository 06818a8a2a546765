//! Statement budgets: rows changed, rows read and bytes of rows read, per
//! statement and per Guard session. The guard counts a statement's rows as
//! the server sends them (`DataRow`, `CopyData`) and the rows it changed
//! from its command tag (`DELETE 3`); `proxy` decides what happens to a
//! statement over its budget.

use std::sync::atomic::AtomicU64;

use guard_policy::database::{Budget, StatementBudgets};

use crate::Spent;

/// One statement's rows so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// From its command tag, for a statement that changes rows.
    pub changed: Option<u64>,
    pub read: u64,
    pub bytes: u64,
}

/// Why the guard cut a statement short (a budget it went over, a column
/// masking cannot allow): no row after it is sent, and it is undone.
#[derive(Clone, Debug)]
pub struct Overrun {
    /// The rule records name: `budget:rows_changed`, `budget:rows_read`,
    /// `budget:bytes_read`, or `mask`.
    pub rule: String,
    /// What the client is told, after `guard: `.
    pub message: String,
}

impl Overrun {
    /// Rows masking cannot allow.
    pub fn mask(message: impl Into<String>) -> Overrun {
        Overrun {
            rule: "mask".into(),
            message: message.into(),
        }
    }

    fn budget(name: &str, message: String) -> Overrun {
        Overrun {
            rule: format!("budget:{name}"),
            message,
        }
    }
}

/// What a budget counts, as messages say it.
fn unit(budget: &str) -> &'static str {
    match budget {
        "rows_changed" => "rows changed",
        "rows_read" => "rows read",
        _ => "bytes read",
    }
}

/// Spends `amount` of `budget` (named `name`) for a statement that has now
/// spent `statement` in all.
fn spend(
    name: &'static str,
    budget: &Budget,
    counter: &AtomicU64,
    statement: u64,
    amount: u64,
) -> Result<(), Overrun> {
    if let Some(limit) = budget.statement
        && statement > limit
    {
        return Err(Overrun::budget(
            name,
            format!(
                "the statement went over its budget of {limit} {} per statement",
                unit(name)
            ),
        ));
    }
    Spent::spend(counter, amount, budget.session).map_err(|total| {
        Overrun::budget(
            name,
            format!(
                "the session went over its budget of {} {} per session (it would reach {total})",
                budget.session.unwrap_or_default(),
                unit(name)
            ),
        )
    })
}

/// A row of `bytes` the server sends, already in `counts`.
pub fn read(
    budgets: &StatementBudgets,
    spent: &Spent,
    counts: &Counts,
    bytes: u64,
) -> Result<(), Overrun> {
    spend(
        "rows_read",
        &budgets.rows_read,
        &spent.rows_read,
        counts.read,
        1,
    )?;
    spend(
        "bytes_read",
        &budgets.bytes_read,
        &spent.bytes_read,
        counts.bytes,
        bytes,
    )
}

/// `rows` a statement changed.
pub fn changed(budgets: &StatementBudgets, spent: &Spent, rows: u64) -> Result<(), Overrun> {
    spend(
        "rows_changed",
        &budgets.rows_changed,
        &spent.rows_changed,
        rows,
        rows,
    )
}

/// The rows a command tag says its statement changed (`INSERT 0 3`,
/// `UPDATE 3`, `DELETE 3`, `MERGE 3`, and `COPY 3` when it copied in);
/// `None` for a statement that changes no rows.
pub fn rows_changed(tag: &str, copied_in: bool) -> Option<u64> {
    let mut words = tag.split(' ');
    let command = words.next()?;
    let counts = match command {
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" => true,
        "COPY" => copied_in,
        _ => false,
    };
    if !counts {
        return None;
    }
    // The count is the tag's last word (`INSERT oid count`).
    tag.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags() {
        assert_eq!(rows_changed("DELETE 3", false), Some(3));
        assert_eq!(rows_changed("INSERT 0 12", false), Some(12));
        assert_eq!(rows_changed("UPDATE 0", false), Some(0));
        assert_eq!(rows_changed("MERGE 7", false), Some(7));
        assert_eq!(rows_changed("COPY 5", true), Some(5));
        assert_eq!(rows_changed("COPY 5", false), None, "copied out");
        assert_eq!(rows_changed("SELECT 5", false), None);
        assert_eq!(rows_changed("CREATE TABLE", false), None);
    }

    #[test]
    fn statement_and_session_limits() {
        let budgets = StatementBudgets {
            rows_changed: Budget {
                statement: Some(10),
                session: Some(15),
            },
            ..StatementBudgets::default()
        };
        let spent = Spent::default();
        assert!(changed(&budgets, &spent, 10).is_ok());
        let e = changed(&budgets, &spent, 11).unwrap_err();
        assert!(e.message.contains("10 rows changed per statement"), "{e:?}");
        let e = changed(&budgets, &spent, 6).unwrap_err();
        assert!(
            e.message.contains("per session (it would reach 16)"),
            "{e:?}"
        );
        assert!(
            changed(&budgets, &spent, 5).is_ok(),
            "a refusal spends nothing"
        );
        assert_eq!(e.rule, "budget:rows_changed");
    }
}
