//! What a SQL statement does, as PostgreSQL reads it: every statement of a
//! string is parsed with PostgreSQL's own grammar (libpg_query), and its
//! parse tree, not its text, says what it does ([`Class`]), to which tables
//! ([`Statement::objects`]) and with which functions.
//!
//! The whole tree is walked, so a statement hidden in a writable CTE, a
//! subquery or a function argument is seen. What does not parse is refused
//! ([`Unparsable`]); a statement kind this module does not know is
//! [`Class::Other`], which a policy denies unless it allows it by name.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// What a statement does. One statement can do several things.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Reads rows (SELECT, SHOW, EXPLAIN without ANALYZE, a read-only COPY TO STDOUT).
    Read,
    /// Changes rows (INSERT, UPDATE, DELETE, MERGE, COPY FROM STDIN).
    Write,
    /// A DELETE whose WHERE clause is missing or mentions no column.
    DeleteWithoutWhere,
    /// An UPDATE whose WHERE clause is missing or mentions no column.
    UpdateWithoutWhere,
    Create,
    Alter,
    Drop,
    Truncate,
    Rename,
    Comment,
    /// Grants, revokes, roles, `SET ROLE`, `SET SESSION AUTHORIZATION`,
    /// `ALTER SYSTEM`, row-level security and ownership.
    Privilege,
    /// COPY to or from a program run by the server.
    CopyProgram,
    /// COPY to or from a file on the server.
    CopyServerFile,
    /// Functions that read or list the server's files, or move large
    /// objects to and from them.
    ServerFile,
    /// Other large-object functions.
    LargeObject,
    /// dblink, foreign servers, foreign tables, user mappings.
    ForeignData,
    /// `DO` blocks, `CALL`, and creating functions, procedures or triggers:
    /// code the server runs that the guard cannot see into.
    Code,
    /// `LOCK TABLE`, or rows locked with `FOR UPDATE`/`FOR SHARE`.
    Lock,
    /// `pg_sleep` and its relatives.
    Sleep,
    /// Ending or signalling other sessions, reloading the configuration.
    Backend,
    /// `BEGIN`, `COMMIT`, `ROLLBACK`, savepoints, prepared transactions.
    Transaction,
    /// `SET`, `RESET`, `DISCARD` of ordinary settings.
    Setting,
    /// Extensions, libraries (`LOAD`), replication (publications,
    /// subscriptions) and server maintenance (VACUUM, CHECKPOINT, ...).
    Server,
    /// A statement kind not classified here.
    Other,
}

impl Class {
    pub const ALL: [Class; 24] = [
        Class::Read,
        Class::Write,
        Class::DeleteWithoutWhere,
        Class::UpdateWithoutWhere,
        Class::Create,
        Class::Alter,
        Class::Drop,
        Class::Truncate,
        Class::Rename,
        Class::Comment,
        Class::Privilege,
        Class::CopyProgram,
        Class::CopyServerFile,
        Class::ServerFile,
        Class::LargeObject,
        Class::ForeignData,
        Class::Code,
        Class::Lock,
        Class::Sleep,
        Class::Backend,
        Class::Transaction,
        Class::Setting,
        Class::Server,
        Class::Other,
    ];

    /// The class a policy or record names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::DeleteWithoutWhere => "delete_without_where",
            Class::UpdateWithoutWhere => "update_without_where",
            Class::Create => "create",
            Class::Alter => "alter",
            Class::Drop => "drop",
            Class::Truncate => "truncate",
            Class::Rename => "rename",
            Class::Comment => "comment",
            Class::Privilege => "privilege",
            Class::CopyProgram => "copy_program",
            Class::CopyServerFile => "copy_server_file",
            Class::ServerFile => "server_file",
            Class::LargeObject => "large_object",
            Class::ForeignData => "foreign_data",
            Class::Code => "code",
            Class::Lock => "lock",
            Class::Sleep => "sleep",
            Class::Backend => "backend",
            Class::Transaction => "transaction",
            Class::Setting => "setting",
            Class::Server => "server",
            Class::Other => "other",
        }
    }
}

/// One statement of a string, as the server will run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The statement's own text, as sent.
    pub text: String,
    /// The text with its literals replaced by `$1`, `$2`, ...: what records
    /// keep, so that values do not end up in the audit trail.
    pub normalized: String,
    /// libpg_query's fingerprint: the same for statements that differ only
    /// in their literals, different for different tables ([`fingerprint_options`]).
    pub fingerprint: String,
    pub classes: BTreeSet<Class>,
    /// Tables, views and sequences named, as `schema.name` or `name`.
    pub objects: BTreeSet<String>,
    /// Functions called, as `schema.name` or `name`, lowercase.
    pub functions: BTreeSet<String>,
    /// Settings it changes (`SET`, `RESET`, `set_config`), lowercase; `all`
    /// for `RESET ALL`, [`ANY_SETTING`] when a `set_config` names its
    /// setting with an expression.
    pub settings: BTreeSet<String>,
    /// The name a `PREPARE` gives its statement.
    pub prepares: Option<String>,
    /// The prepared statements it runs (`EXECUTE name`).
    pub executes: BTreeSet<String>,
    /// Every row it changes is in its command tag (`DELETE 3`): it changes
    /// nothing, or it is one `INSERT`, `UPDATE`, `DELETE`, `MERGE` or
    /// `COPY FROM` (or `PREPARE`s one) with no data-modifying `WITH`.
    /// `false` for a writable CTE under a `SELECT`, `EXPLAIN ANALYZE` of a
    /// change, or several changes in one statement: their tag counts
    /// another statement's rows, or none.
    pub changes_counted: bool,
}

/// In [`Statement::settings`]: a setting the statement names with an
/// expression, which could be any.
pub const ANY_SETTING: &str = "*";

/// How the server reads string literals: its `standard_conforming_strings`.
/// The guard must read them the same way, or `'a\' ...` could be one
/// literal to the guard and a literal plus SQL to the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strings {
    /// `standard_conforming_strings = on` (the default since 9.1):
    /// backslashes are ordinary characters.
    #[default]
    Standard,
    /// `off`: backslashes escape in ordinary literals.
    BackslashEscapes,
}

/// A string PostgreSQL's grammar does not accept; the server would refuse
/// it too, so nothing of it is run.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not SQL PostgreSQL accepts: {0}")]
pub struct Unparsable(String);

/// How statements are fingerprinted: a ticket approves one fingerprint, so
/// the full table name and its schema count (by default libpg_query 18
/// ignores schemas in DML, and digits in table names: `DROP TABLE
/// staging.t` would share a fingerprint with `DROP TABLE prod.t`).
fn fingerprint_options() -> pg_query::FingerprintOptions {
    use pg_query::FingerprintOptions as Options;
    Options::RANGEVAR_PG17_COMPAT | Options::FULL_RELNAME
}

/// Parses and classifies every statement in `sql`, as a server with
/// standard conforming strings reads it.
pub fn classify(sql: &str) -> Result<Vec<Statement>, Unparsable> {
    classify_with(sql, Strings::Standard)
}

/// Parses and classifies every statement in `sql`, reading string
/// literals as `strings` says.
pub fn classify_with(sql: &str, strings: Strings) -> Result<Vec<Statement>, Unparsable> {
    let options = match strings {
        Strings::Standard => pg_query::ParserOptions::default(),
        Strings::BackslashEscapes => pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS,
    };
    let parsed = pg_query::parse(sql, options).map_err(|e| Unparsable(e.to_string()))?;
    let tree = serde_json::to_value(&parsed.protobuf).map_err(|e| Unparsable(e.to_string()))?;
    let mut statements = Vec::new();
    for raw in tree["stmts"].as_array().into_iter().flatten() {
        let text = statement_text(sql, raw).trim().to_string();
        let mut found = Found::default();
        walk(&raw["stmt"], &mut found);
        if found.classes.is_empty() {
            found.classes.insert(Class::Other);
        }
        let normalized = pg_query::normalize(&text).map_err(|e| Unparsable(e.to_string()))?;
        let fingerprint = pg_query::fingerprint(&text, 0, fingerprint_options())
            .map_err(|e| Unparsable(e.to_string()))?
            .hex;
        let prepares = raw["stmt"]["node"]["PrepareStmt"]["name"]
            .as_str()
            .map(str::to_string);
        // The statement the server runs (for `PREPARE`, the one it keeps).
        let runs = match prepares {
            Some(_) => &raw["stmt"]["node"]["PrepareStmt"]["query"],
            None => &raw["stmt"],
        };
        let reports_its_rows = runs["node"]
            .as_object()
            .is_some_and(|node| node.keys().any(|kind| CHANGES.contains(&kind.as_str())));
        let changes_counted = found.changes == 0 || (found.changes == 1 && reports_its_rows);
        statements.push(Statement {
            text,
            normalized,
            fingerprint,
            classes: found.classes,
            objects: found.objects,
            functions: found.functions,
            settings: found.settings,
            prepares,
            executes: found.executes,
            changes_counted,
        });
    }
    Ok(statements)
}

/// The bytes of `sql` that one raw statement spans (its length is 0 for
/// the last statement: to the end).
fn statement_text<'a>(sql: &'a str, raw: &Value) -> &'a str {
    let start = raw["stmt_location"].as_u64().unwrap_or(0) as usize;
    let len = raw["stmt_len"].as_u64().unwrap_or(0) as usize;
    let end = if len == 0 { sql.len() } else { start + len };
    sql.get(start..end.min(sql.len())).unwrap_or(sql)
}

/// The statements that change rows and report how many in their command
/// tag (`COPY` only `FROM`).
const CHANGES: [&str; 5] = [
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
    "CopyStmt",
];

#[derive(Default)]
struct Found {
    /// Statements in the tree that change rows.
    changes: usize,
    classes: BTreeSet<Class>,
    objects: BTreeSet<String>,
    functions: BTreeSet<String>,
    settings: BTreeSet<String>,
    executes: BTreeSet<String>,
}

/// Visits every node below `value`: each JSON object whose key names a
/// node type is classified, and every value is walked.
fn walk(value: &Value, found: &mut Found) {
    match value {
        Value::Object(fields) => {
            for (key, inner) in fields {
                if key.starts_with(|c: char| c.is_ascii_uppercase())
                    && let Value::Object(node) = inner
                {
                    node_kind(key, node, found);
                }
                if key == "relation" {
                    range_var(inner, found);
                }
                walk(inner, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
        _ => {}
    }
}

/// The table a statement names in its `relation` field: a `RangeVar` not
/// wrapped in a node (`DELETE FROM t`, `COPY t`, `ALTER TABLE t`). Wrapped
/// ones are found as nodes.
fn range_var(value: &Value, found: &mut Found) {
    if let Some(fields) = value.as_object() {
        found.objects.extend(table_of(fields));
    }
}

/// A `RangeVar`'s table, as `schema.name` or `name`.
fn table_of(range_var: &Map<String, Value>) -> Option<String> {
    let name = range_var.get("relname")?.as_str()?;
    let schema = range_var.get("schemaname").and_then(Value::as_str);
    Some(qualified(schema, name))
}

fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) if !schema.is_empty() => format!("{schema}.{name}"),
        _ => name.to_string(),
    }
}

fn node_kind(kind: &str, node: &Map<String, Value>, found: &mut Found) {
    let mut add = |class| {
        found.classes.insert(class);
    };
    match kind {
        "RangeVar" => found.objects.extend(table_of(node)),
        "SelectStmt" => {
            add(Class::Read);
            if node
                .get("locking_clause")
                .and_then(Value::as_array)
                .is_some_and(|l| !l.is_empty())
            {
                add(Class::Lock);
            }
            if node.get("into_clause").is_some_and(|i| !i.is_null()) {
                add(Class::Create);
            }
        }
        "VariableShowStmt" | "ExplainStmt" => add(Class::Read),
        "InsertStmt" | "MergeStmt" => {
            add(Class::Write);
            found.changes += 1;
        }
        "DeleteStmt" => {
            add(Class::Write);
            found.changes += 1;
            if !bounded(node.get("where_clause")) {
                add(Class::DeleteWithoutWhere);
            }
        }
        "UpdateStmt" => {
            add(Class::Write);
            found.changes += 1;
            if !bounded(node.get("where_clause")) {
                add(Class::UpdateWithoutWhere);
            }
        }
        "CopyStmt" => {
            let from = node.get("is_from").and_then(Value::as_bool) == Some(true);
            add(if from { Class::Write } else { Class::Read });
            found.changes += usize::from(from);
            let file = node.get("filename").and_then(Value::as_str).unwrap_or("");
            if node.get("is_program").and_then(Value::as_bool) == Some(true) {
                add(Class::CopyProgram);
            } else if !file.is_empty() {
                add(Class::CopyServerFile);
            }
        }
        "DropStmt"
        | "DropRoleStmt"
        | "DropOwnedStmt"
        | "DropdbStmt"
        | "DropTableSpaceStmt"
        | "DropSubscriptionStmt"
        | "DropUserMappingStmt" => {
            add(Class::Drop);
            if let Some(objects) = node.get("objects").and_then(Value::as_array) {
                found.objects.extend(objects.iter().filter_map(dotted_name));
            }
            if matches!(kind, "DropRoleStmt" | "DropOwnedStmt") {
                add(Class::Privilege);
            }
            if kind == "DropUserMappingStmt" {
                add(Class::ForeignData);
            }
        }
        "TruncateStmt" => add(Class::Truncate),
        "RenameStmt" => add(Class::Rename),
        "CommentStmt" | "SecLabelStmt" => add(Class::Comment),
        "AlterTableStmt" => {
            add(Class::Alter);
            // Row-level security on or off, or a new owner.
            let privileged = node
                .get("cmds")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|cmd| {
                    cmd.get("node")?
                        .get("AlterTableCmd")?
                        .get("subtype")?
                        .as_i64()
                })
                .any(|subtype| PRIVILEGE_SUBTYPES.contains(&subtype));
            if privileged {
                add(Class::Privilege);
            }
        }
        "GrantStmt"
        | "GrantRoleStmt"
        | "CreateRoleStmt"
        | "AlterRoleStmt"
        | "AlterRoleSetStmt"
        | "AlterDefaultPrivilegesStmt"
        | "ReassignOwnedStmt"
        | "AlterOwnerStmt"
        | "CreatePolicyStmt"
        | "AlterPolicyStmt"
        | "AlterSystemStmt" => add(Class::Privilege),
        "VariableSetStmt" => {
            let name = node.get("name").and_then(Value::as_str).unwrap_or("");
            add(if PRIVILEGED_SETTINGS.contains(&name) {
                Class::Privilege
            } else {
                Class::Setting
            });
            // `RESET ALL` has no name.
            let name = if name.is_empty() { "all" } else { name };
            found.settings.insert(name.to_lowercase());
        }
        "ExecuteStmt" => {
            if let Some(name) = node.get("name").and_then(Value::as_str) {
                found.executes.insert(name.to_string());
            }
        }
        "DiscardStmt" => add(Class::Setting),
        "TransactionStmt" => add(Class::Transaction),
        "LockStmt" => add(Class::Lock),
        "DoStmt"
        | "CallStmt"
        | "CreateFunctionStmt"
        | "AlterFunctionStmt"
        | "CreateTrigStmt"
        | "CreateEventTrigStmt"
        | "RuleStmt"
        | "CreatePLangStmt" => add(Class::Code),
        "CreateForeignServerStmt"
        | "AlterForeignServerStmt"
        | "CreateForeignTableStmt"
        | "CreateUserMappingStmt"
        | "AlterUserMappingStmt"
        | "ImportForeignSchemaStmt"
        | "CreateFdwStmt"
        | "AlterFdwStmt" => add(Class::ForeignData),
        "CreateExtensionStmt"
        | "AlterExtensionStmt"
        | "AlterExtensionContentsStmt"
        | "LoadStmt"
        | "CreatePublicationStmt"
        | "AlterPublicationStmt"
        | "CreateSubscriptionStmt"
        | "AlterSubscriptionStmt"
        | "VacuumStmt"
        | "ClusterStmt"
        | "ReindexStmt"
        | "CheckPointStmt"
        | "CreatedbStmt"
        | "AlterDatabaseStmt"
        | "AlterDatabaseSetStmt"
        | "CreateTableSpaceStmt"
        | "AlterTableSpaceOptionsStmt" => add(Class::Server),
        "CreateStmt"
        | "CreateTableAsStmt"
        | "ViewStmt"
        | "IndexStmt"
        | "CreateSeqStmt"
        | "CreateSchemaStmt"
        | "CompositeTypeStmt"
        | "CreateEnumStmt"
        | "CreateRangeStmt"
        | "CreateDomainStmt"
        | "DefineStmt"
        | "CreateCastStmt"
        | "CreateConversionStmt"
        | "CreateOpClassStmt"
        | "CreateOpFamilyStmt"
        | "CreateStatsStmt"
        | "CreateAmStmt"
        | "CreateTransformStmt" => add(Class::Create),
        "AlterSeqStmt"
        | "AlterDomainStmt"
        | "AlterEnumStmt"
        | "AlterObjectSchemaStmt"
        | "AlterTypeStmt"
        | "AlterOperatorStmt"
        | "AlterOpFamilyStmt"
        | "AlterStatsStmt"
        | "AlterTSConfigurationStmt"
        | "AlterTSDictionaryStmt"
        | "AlterCollationStmt"
        | "RefreshMatViewStmt"
        | "AlterObjectDependsStmt" => add(Class::Alter),
        "FuncCall" => {
            let name = function_name(node);
            classify_function(&name, &mut add);
            if name.rsplit('.').next() == Some("set_config") {
                found.settings.insert(set_config_setting(node));
            }
            found.functions.insert(name);
        }
        _ => {}
    }
}

/// The `ALTER TABLE` subcommands that change who may do what: row-level
/// security on or off, and a new owner.
const PRIVILEGE_SUBTYPES: [i64; 5] = {
    use pg_query::protobuf::AlterTableType as At;
    [
        At::AtEnableRowSecurity as i64,
        At::AtDisableRowSecurity as i64,
        At::AtForceRowSecurity as i64,
        At::AtNoForceRowSecurity as i64,
        At::AtChangeOwner as i64,
    ]
};

/// The name of a dropped object: a `List` of name parts (`a.b`), a single
/// `String`, or the name of an `ObjectWithArgs` (functions).
fn dotted_name(object: &Value) -> Option<String> {
    let node = object.get("node")?;
    let parts = if let Some(list) = node.get("List") {
        list.get("items")?
    } else if let Some(with_args) = node.get("ObjectWithArgs") {
        with_args.get("objname")?
    } else {
        return node
            .get("String")?
            .get("sval")?
            .as_str()
            .map(str::to_string);
    };
    let parts: Vec<&str> = parts
        .as_array()?
        .iter()
        .filter_map(|p| p.get("node")?.get("String")?.get("sval")?.as_str())
        .collect();
    (!parts.is_empty()).then(|| parts.join("."))
}

/// Settings whose change is a change of privilege.
const PRIVILEGED_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "row_security",
    "session_replication_role",
];

/// A function's name as called: its name parts joined with dots, lowercase.
fn function_name(node: &Map<String, Value>) -> String {
    node.get("funcname")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|part| part.get("node")?.get("String")?.get("sval")?.as_str())
        .collect::<Vec<_>>()
        .join(".")
        .to_lowercase()
}

/// The setting a `set_config(name, value, is_local)` call changes, if its
/// name is a string constant; [`ANY_SETTING`] otherwise.
fn set_config_setting(node: &Map<String, Value>) -> String {
    node.get("args")
        .and_then(|args| args.get(0))
        .and_then(|arg| {
            let constant = arg.get("node")?.get("AConst")?.get("val")?;
            constant.get("Sval")?.get("sval")?.as_str()
        })
        .map_or_else(|| ANY_SETTING.to_string(), str::to_lowercase)
}

fn classify_function(name: &str, add: &mut impl FnMut(Class)) {
    let bare = name.rsplit('.').next().unwrap_or(name);
    if SERVER_FILE_FUNCTIONS.contains(&bare) {
        add(Class::ServerFile);
    } else if bare.starts_with("lo_") || bare == "loread" || bare == "lowrite" {
        add(Class::LargeObject);
    } else if bare.starts_with("dblink") {
        add(Class::ForeignData);
    } else if bare.starts_with("pg_sleep") {
        add(Class::Sleep);
    } else if BACKEND_FUNCTIONS.contains(&bare) {
        add(Class::Backend);
    } else if bare == "set_config" {
        add(Class::Setting);
    }
}

const SERVER_FILE_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "lo_import",
    "lo_export",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
];

const BACKEND_FUNCTIONS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_log_backend_memory_contexts",
];

/// Whether a WHERE clause bounds the rows: it exists and mentions a column
/// (`WHERE true` or `WHERE 1 = 1` bounds nothing).
fn bounded(clause: Option<&Value>) -> bool {
    fn mentions_column(value: &Value) -> bool {
        match value {
            Value::Object(fields) => fields
                .iter()
                .any(|(key, inner)| key == "ColumnRef" || mentions_column(inner)),
            Value::Array(items) => items.iter().any(mentions_column),
            _ => false,
        }
    }
    clause.is_some_and(|c| !c.is_null() && mentions_column(c))
}

#[cfg(test)]
mod tests;
