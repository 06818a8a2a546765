//! The policy's database part: the databases Guard's statement guard stands
//! in front of, and per profile and database, what statements may do.
//! `docs/databases.md` is the reference.
//!
//! A statement is judged by its classes (what it does, [`Class`]) and the
//! tables it names: for each class and each table, the rules naming that
//! table decide if one matches, else the rules naming no table, else the
//! section's default; the strictest of those decisions is the statement's.
//! So a rule about one table never loosens what the statement does to
//! another.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use guard_sql::Class;

use crate::common::{Access, Location, PolicyError, check_name, host_name};

/// A database the statement guard stands in front of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub name: String,
    /// Where the server listens: `host:port`, the host an address or a name.
    pub server: String,
    /// Where the statement guard listens for this database's clients.
    pub listen: std::net::SocketAddr,
    /// The profile of connections from processes in no Guard session
    /// (people, services); such connections are refused when `None`.
    pub default_profile: Option<String>,
    /// TLS between clients and the guard.
    pub client_tls: Option<ClientTls>,
    /// TLS between the guard and the server.
    pub server_tls: Option<ServerTls>,
    /// The guard logs in for clients with these.
    pub credentials: Option<Credentials>,
    /// The names of the server's unix-domain sockets on this host
    /// (`DIR/.s.PGSQL.PORT`; `@` for the abstract namespace), which agents
    /// may not connect to.
    pub unix_sockets: Vec<String>,
    pub location: Location,
}

/// The role the guard logs in as, and the file that holds its password
/// (read by guardd, as root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password_file: std::path::PathBuf,
}

/// The guard's certificate for clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM files: the certificate chain, and its private key.
    pub certificate: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Refuse clients that do not ask for TLS (the default).
    pub required: bool,
}

/// How the guard checks the server's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM file of the certificate authorities the server's certificate
    /// must chain to.
    pub ca: std::path::PathBuf,
    /// The name the certificate must carry; the server's host by default.
    pub name: String,
}

impl Database {
    /// The files the guard needs (TLS certificates and keys), which guardd
    /// reads and hands it.
    pub fn files(&self) -> Vec<&std::path::Path> {
        let mut files = Vec::new();
        if let Some(tls) = &self.client_tls {
            files.extend([tls.certificate.as_path(), tls.key.as_path()]);
        }
        if let Some(tls) = &self.server_tls {
            files.push(tls.ca.as_path());
        }
        if let Some(credentials) = &self.credentials {
            files.push(credentials.password_file.as_path());
        }
        files
    }

    /// The files no agent may read: the password and the TLS key.
    pub fn secret_files(&self) -> Vec<&std::path::Path> {
        let key = self.client_tls.as_ref().map(|tls| tls.key.as_path());
        let password = self.credentials.as_ref().map(|c| c.password_file.as_path());
        key.into_iter().chain(password).collect()
    }
}

/// What one profile's statements may do on one database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementRules {
    pub database: String,
    /// What a statement no rule matches gets.
    pub default: Access,
    pub rules: Vec<StatementRule>,
    pub budgets: StatementBudgets,
    /// What is masked in the rows the profile's statements read.
    pub mask: Option<Masking>,
    pub location: Location,
}

/// Columns masked in rows a profile reads, and detectors for values
/// anywhere in them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masking {
    pub columns: Vec<ColumnPattern>,
    pub values: BTreeSet<Detector>,
    /// What happens to a result column the server computed (an expression,
    /// not a table's column) in a statement that reads a table with masked
    /// columns: the guard cannot tell whether it comes from one.
    pub computed: Computed,
}

/// A column as `mask.columns` names it: `table.column`,
/// `schema.table.column` or `*.column` (any table), in lower case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnPattern {
    pub schema: Option<String>,
    /// `None` for `*`.
    pub table: Option<String>,
    pub column: String,
}

impl ColumnPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("column `{text}` must be `table.column`, `schema.table.column` or `*.column`")
        };
        let parts: Vec<&str> = text.split('.').collect();
        let word = |w: &str| !w.is_empty() && !w.contains(char::is_whitespace) && w != "*";
        let (schema, table, column) = match parts[..] {
            ["*", column] if word(column) => (None, None, column),
            [table, column] if word(table) && word(column) => (None, Some(table), column),
            [schema, table, column] if word(schema) && word(table) && word(column) => {
                (Some(schema), Some(table), column)
            }
            _ => return Err(bad()),
        };
        Ok(ColumnPattern {
            schema: schema.map(str::to_lowercase),
            table: table.map(str::to_lowercase),
            column: column.to_lowercase(),
        })
    }

    /// Whether the column `column` of `schema.table` is this one.
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.column == column.to_lowercase()
            && self
                .table
                .as_ref()
                .is_none_or(|t| *t == table.to_lowercase())
            && self
                .schema
                .as_ref()
                .is_none_or(|s| *s == schema.to_lowercase())
    }
}

/// A kind of value masked wherever it appears in a text value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Detector {
    /// E-mail addresses.
    Email,
    /// Payment card numbers (13 to 19 digits, with spaces or dashes,
    /// passing the Luhn check).
    CardNumber,
    /// Keys and tokens: private keys, cloud access keys, bearer and API
    /// tokens, JWTs.
    Secret,
}

impl Detector {
    pub const ALL: [Detector; 3] = [Detector::Email, Detector::CardNumber, Detector::Secret];

    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::CardNumber => "card_number",
            Detector::Secret => "secret",
        }
    }
}

/// See [`Masking::computed`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Computed {
    /// Mask the computed column.
    #[default]
    Mask,
    /// Refuse the statement.
    Refuse,
}

/// How many rows a profile's statements may change and read, and how many
/// bytes of rows they may read, per statement and per Guard session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatementBudgets {
    pub rows_changed: Budget,
    pub rows_read: Budget,
    pub bytes_read: Budget,
}

impl StatementBudgets {
    /// Whether any budget is set: then the guard counts each statement's
    /// rows before the next message reaches the server.
    pub fn any(&self) -> bool {
        self.changes() || self.reads()
    }

    pub fn changes(&self) -> bool {
        self.rows_changed.is_set()
    }

    pub fn reads(&self) -> bool {
        self.rows_read.is_set() || self.bytes_read.is_set()
    }
}

/// One budget: at most `statement` per statement and `session` per Guard
/// session (per connection for one from no session); `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub statement: Option<u64>,
    pub session: Option<u64>,
}

impl Budget {
    pub fn is_set(&self) -> bool {
        self.statement.is_some() || self.session.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementRule {
    pub id: String,
    pub message: Option<String>,
    pub effect: StatementEffect,
    /// A denial under this rule opens a ticket a human may approve.
    pub approvable: bool,
    /// The classes it applies to; every class when empty.
    pub classes: BTreeSet<Class>,
    /// The tables it applies to; every table (and statements naming none)
    /// when empty.
    pub objects: Vec<ObjectPattern>,
    pub location: Location,
}

/// What a matching statement rule does, least strict first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatementEffect {
    Allow,
    /// Allow, and flag the statement in its record.
    Monitor,
    Deny,
}

impl StatementEffect {
    pub fn name(self) -> &'static str {
        match self {
            StatementEffect::Allow => "allow",
            StatementEffect::Monitor => "monitor",
            StatementEffect::Deny => "deny",
        }
    }
}

/// A table as a rule names it: `table`, `schema.table` or `schema.*`,
/// compared in lower case. The guard cannot know the server's search path,
/// so a table a statement names without its schema may be in any schema:
/// it matches a `deny` rule's pattern with a schema, never an `allow` or
/// `monitor` rule's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectPattern {
    pub schema: Option<String>,
    /// `None` for `schema.*`.
    pub table: Option<String>,
}

impl ObjectPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        let (schema, table) = match lower.split_once('.') {
            Some((schema, table)) => (Some(schema.to_string()), table.to_string()),
            None => (None, lower),
        };
        let word = |w: &str| {
            !w.is_empty()
                && w.len() <= 63
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$'))
        };
        let table = (table != "*").then_some(table);
        let valid = schema.as_deref().is_none_or(word)
            && table.as_deref().is_none_or(word)
            && (schema.is_some() || table.is_some());
        if valid {
            Ok(ObjectPattern { schema, table })
        } else {
            Err(format!(
                "object `{text}` must be `table`, `schema.table` or `schema.*` (letters, digits, `_`, `$`)"
            ))
        }
    }

    /// Whether `object` (`name` or `schema.name`, as the statement names
    /// it) matches, for a rule with `effect`.
    pub fn matches(&self, object: &str, effect: StatementEffect) -> bool {
        let object = object.to_ascii_lowercase();
        let (schema, table) = match object.rsplit_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, object.as_str()),
        };
        let schema_matches = match (&self.schema, schema) {
            (Some(want), Some(got)) => want == got,
            (Some(_), None) => effect == StatementEffect::Deny,
            (None, _) => true,
        };
        let table_matches = self.table.as_ref().is_none_or(|want| want == table);
        schema_matches && table_matches
    }
}

/// How a statement is judged: the effect, and the rule that decided it
/// (`None`: the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement<'a> {
    pub effect: StatementEffect,
    pub rule: Option<&'a StatementRule>,
}

impl StatementRules {
    /// Judges a statement with these `classes` naming these `objects`.
    pub fn judge<'a>(
        &'a self,
        classes: &BTreeSet<Class>,
        objects: &BTreeSet<String>,
    ) -> Judgement<'a> {
        let default = Judgement {
            effect: match self.default {
                Access::Allow => StatementEffect::Allow,
                Access::Deny => StatementEffect::Deny,
            },
            rule: None,
        };
        let for_class = |class: Class| {
            self.rules
                .iter()
                .filter(move |r| r.classes.is_empty() || r.classes.contains(&class))
        };
        let strictest = |rules: &mut dyn Iterator<Item = &'a StatementRule>| {
            rules
                .map(|rule| Judgement {
                    effect: rule.effect,
                    rule: Some(rule),
                })
                .max_by_key(|j| j.effect)
        };
        let mut verdict: Option<Judgement<'a>> = None;
        // At equal effect a rule's judgement is kept over the default's: its
        // message says more.
        let mut consider = |j: Judgement<'a>| {
            let stricter = |v: Judgement<'a>| {
                j.effect > v.effect || (j.effect == v.effect && v.rule.is_none())
            };
            if verdict.is_none_or(stricter) {
                verdict = Some(j);
            }
        };
        for &class in classes {
            // What the rules naming no table say about this class.
            let general = strictest(&mut for_class(class).filter(|r| r.objects.is_empty()))
                .unwrap_or(default);
            if objects.is_empty() {
                consider(general);
            }
            for object in objects {
                let specific = strictest(
                    &mut for_class(class)
                        .filter(|r| r.objects.iter().any(|p| p.matches(object, r.effect))),
                );
                consider(specific.unwrap_or(general));
            }
        }
        verdict.unwrap_or(default)
    }
}

// ------------------------------------------------------------ file format --

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseFile {
    name: Spanned<String>,
    server: Spanned<String>,
    listen: Spanned<String>,
    default_profile: Option<Spanned<String>>,
    client_tls: Option<Spanned<ClientTlsFile>>,
    server_tls: Option<Spanned<ServerTlsFile>>,
    credentials: Option<Spanned<CredentialsFile>>,
    unix_socket_directories: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CredentialsFile {
    user: String,
    password_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientTlsFile {
    certificate: String,
    key: String,
    #[serde(default = "yes")]
    required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerTlsFile {
    ca: String,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatementRulesFile {
    database: Spanned<String>,
    /// Required: a section says what happens when no rule matches.
    default: Access,
    #[serde(default)]
    allow: Vec<Spanned<StatementRuleFile>>,
    #[serde(default)]
    monitor: Vec<Spanned<StatementRuleFile>>,
    #[serde(default)]
    deny: Vec<Spanned<StatementRuleFile>>,
    #[serde(default)]
    budgets: Option<BudgetsFile>,
    mask: Option<Spanned<MaskFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MaskFile {
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    computed: Option<String>,
}

fn masking(file: Option<Spanned<MaskFile>>) -> Result<Option<Masking>, PolicyError> {
    let Some(file) = file else {
        return Ok(None);
    };
    let location = Location::from(file.referenced);
    let fail = |reason: String| PolicyError::new(location, format!("mask: {reason}"));
    let file = file.value;
    let columns = file
        .columns
        .iter()
        .map(|c| ColumnPattern::parse(c).map_err(fail))
        .collect::<Result<Vec<_>, _>>()?;
    let values = file
        .values
        .iter()
        .map(|name| {
            Detector::ALL
                .into_iter()
                .find(|d| d.name() == name)
                .ok_or_else(|| {
                    fail(format!(
                        "unknown value detector `{name}` (expected one of: email, card_number, secret)"
                    ))
                })
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    if columns.is_empty() && values.is_empty() {
        return Err(fail("name `columns`, `values` or both".into()));
    }
    let computed = match file.computed.as_deref() {
        None | Some("mask") => Computed::Mask,
        Some("refuse") => Computed::Refuse,
        Some(other) => {
            return Err(fail(format!(
                "computed `{other}` must be `mask` or `refuse`"
            )));
        }
    };
    Ok(Some(Masking {
        columns,
        values,
        computed,
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetsFile {
    rows_changed: Option<Spanned<BudgetFile>>,
    rows_read: Option<Spanned<BudgetFile>>,
    bytes_read: Option<Spanned<BudgetFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetFile {
    statement: Option<Amount>,
    session: Option<Amount>,
}

/// A count, or for bytes a size with a unit (`10MiB`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Amount {
    Count(u64),
    Text(String),
}

impl Amount {
    /// The amount; `bytes` allows units `KiB`, `MiB`, `GiB` (and `B`).
    fn value(&self, bytes: bool) -> Result<u64, String> {
        let text = match self {
            Amount::Count(n) => return Ok(*n),
            Amount::Text(text) => text.trim(),
        };
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        let scale: u64 = match unit.trim() {
            "" => 1,
            "B" if bytes => 1,
            "KiB" if bytes => 1 << 10,
            "MiB" if bytes => 1 << 20,
            "GiB" if bytes => 1 << 30,
            _ if bytes => {
                return Err(format!(
                    "`{text}` is not a size: a number, or a number and a unit (B, KiB, MiB, GiB)"
                ));
            }
            _ => return Err(format!("`{text}` is not a number of rows")),
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .ok_or_else(|| format!("`{text}` is not a number, or too large"))
    }
}

fn budgets(file: Option<BudgetsFile>) -> Result<StatementBudgets, PolicyError> {
    let Some(file) = file else {
        return Ok(StatementBudgets::default());
    };
    let read = |name: &str, budget: Option<Spanned<BudgetFile>>, bytes: bool| {
        let Some(budget) = budget else {
            return Ok(Budget::default());
        };
        let location = Location::from(budget.referenced);
        let budget = budget.value;
        let amount = |a: Option<Amount>| a.map(|a| a.value(bytes)).transpose();
        let fail = |reason| PolicyError::new(location, format!("budget `{name}`: {reason}"));
        let budget = Budget {
            statement: amount(budget.statement).map_err(fail)?,
            session: amount(budget.session).map_err(fail)?,
        };
        if !budget.is_set() {
            return Err(fail("give `statement`, `session` or both".to_string()));
        }
        Ok(budget)
    };
    Ok(StatementBudgets {
        rows_changed: read("rows_changed", file.rows_changed, false)?,
        rows_read: read("rows_read", file.rows_read, false)?,
        bytes_read: read("bytes_read", file.bytes_read, true)?,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatementRuleFile {
    pub(crate) id: String,
    message: Option<String>,
    #[serde(default)]
    approvable: bool,
    #[serde(default)]
    classes: Vec<String>,
    #[serde(default)]
    objects: Vec<String>,
}

/// Reads the `databases` list.
pub(crate) fn databases(file: Vec<Spanned<DatabaseFile>>) -> Result<Vec<Database>, PolicyError> {
    let mut databases: Vec<Database> = Vec::with_capacity(file.len());
    for entry in file {
        let location = Location::from(entry.referenced);
        let entry = entry.value;
        let name_location = Location::from(entry.name.referenced);
        let name = entry.name.value;
        check_name("database", &name).map_err(|reason| PolicyError::new(name_location, reason))?;
        if databases.iter().any(|d| d.name == name) {
            return Err(PolicyError::new(
                name_location,
                format!("database `{name}` is defined twice"),
            ));
        }
        let server = entry.server.value;
        check_server(&server).map_err(|reason| {
            PolicyError::new(
                entry.server.referenced,
                format!("database `{name}`: {reason}"),
            )
        })?;
        let listen = check_listen(&entry.listen.value).map_err(|reason| {
            PolicyError::new(
                entry.listen.referenced,
                format!("database `{name}`: {reason}"),
            )
        })?;
        if let Some(other) = databases.iter().find(|d| d.listen == listen) {
            return Err(PolicyError::new(
                entry.listen.referenced,
                format!(
                    "database `{name}`: the statement guard already listens on {listen} for database `{}`",
                    other.name
                ),
            ));
        }
        if server.parse() == Ok(listen) {
            return Err(PolicyError::new(
                entry.listen.referenced,
                format!("database `{name}`: `listen` is the server's own address"),
            ));
        }
        let in_database = |location: serde_saphyr::Location, reason: String| {
            PolicyError::new(location, format!("database `{name}`: {reason}"))
        };
        let client_tls = match entry.client_tls {
            Some(tls) => {
                let at = tls.referenced;
                let tls = tls.value;
                Some(ClientTls {
                    certificate: tls_file(&tls.certificate).map_err(|r| in_database(at, r))?,
                    key: tls_file(&tls.key).map_err(|r| in_database(at, r))?,
                    required: tls.required,
                })
            }
            None => None,
        };
        let server_tls = match entry.server_tls {
            Some(tls) => {
                let at = tls.referenced;
                let tls = tls.value;
                let host = server_host(&server);
                let name = tls.name.unwrap_or_else(|| host.to_string());
                rustls_name(&name).map_err(|r| in_database(at, r))?;
                Some(ServerTls {
                    ca: tls_file(&tls.ca).map_err(|r| in_database(at, r))?,
                    name,
                })
            }
            None => None,
        };
        let credentials = match entry.credentials {
            Some(credentials) => {
                let at = credentials.referenced;
                let credentials = credentials.value;
                if credentials.user.is_empty()
                    || credentials.user.len() > 63
                    || credentials.user.contains('\0')
                {
                    return Err(in_database(
                        at,
                        "credentials: `user` must be a role name of 1 to 63 bytes".into(),
                    ));
                }
                Some(Credentials {
                    user: credentials.user,
                    password_file: tls_file(&credentials.password_file)
                        .map_err(|r| in_database(at, format!("credentials: {r}")))?,
                })
            }
            None => None,
        };
        let unix_sockets = match entry.unix_socket_directories {
            Some(dirs) => unix_sockets(&dirs.value, &server).map_err(|r| {
                in_database(dirs.referenced, format!("unix_socket_directories: {r}"))
            })?,
            None if is_loopback(server_host(&server)) => {
                unix_sockets(&DEFAULT_SOCKET_DIRECTORIES.map(String::from), &server)
                    .expect("the default directories are valid")
            }
            None => Vec::new(),
        };
        databases.push(Database {
            name,
            server,
            listen,
            default_profile: entry.default_profile.map(|p| p.value),
            client_tls,
            server_tls,
            credentials,
            unix_sockets,
            location,
        });
    }
    Ok(databases)
}

/// `host:port`, `[v6]:port`, the host an address or a host name.
fn check_server(server: &str) -> Result<(), String> {
    let bad = || {
        format!("server `{server}` must be `host:port` (e.g. `db.internal:5432` or `[::1]:5432`)")
    };
    if server.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(bad)?;
    host_name(host).map(drop).map_err(|_| bad())
}

/// Where PostgreSQL puts its unix-domain sockets by default (Debian's and
/// the upstream default): a server on this host's loopback address most
/// likely has one of these too.
const DEFAULT_SOCKET_DIRECTORIES: [&str; 3] = ["/run/postgresql", "/var/run/postgresql", "/tmp"];

/// Longest name a unix-domain socket can be bound to (`sun_path` less a NUL).
const UNIX_NAME_MAX: usize = guard_common::UNIX_PATH_LEN - 1;

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The names of a PostgreSQL server's sockets in `directories` (as in its
/// `unix_socket_directories`): `DIR/.s.PGSQL.PORT`.
fn unix_sockets(directories: &[String], server: &str) -> Result<Vec<String>, String> {
    let port = server.rsplit_once(':').map_or("", |(_, port)| port);
    directories
        .iter()
        .map(|dir| {
            let abstract_name = dir.starts_with('@');
            if !(abstract_name || dir.starts_with('/')) || dir.contains('\0') {
                return Err(format!(
                    "`{dir}` must be an absolute directory, or `@name` for the abstract namespace, as in the server's own setting"
                ));
            }
            let name = format!("{}/.s.PGSQL.{port}", dir.trim_end_matches('/'));
            if name.len() > UNIX_NAME_MAX {
                return Err(format!(
                    "the socket `{name}` would be longer than the {UNIX_NAME_MAX} bytes a unix-domain socket's name may have"
                ));
            }
            Ok(name)
        })
        .collect()
}

/// A file guardd reads for the guard (TLS, a password): an absolute path.
fn tls_file(path: &str) -> Result<std::path::PathBuf, String> {
    let p = std::path::Path::new(path);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("`{path}` must be an absolute path without `..`"));
    }
    Ok(p.to_path_buf())
}

/// The host part of `host:port` or `[v6]:port`.
fn server_host(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A name a server certificate can carry: a DNS name or an IP address.
fn rustls_name(name: &str) -> Result<(), String> {
    if name.parse::<std::net::IpAddr>().is_ok() || host_name(name).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "server_tls name `{name}` is not a host name or an IP address"
        ))
    }
}

/// An IP address and a port other than 0: clients must know where to
/// connect.
fn check_listen(listen: &str) -> Result<std::net::SocketAddr, String> {
    listen
        .parse::<std::net::SocketAddr>()
        .ok()
        .filter(|a| a.port() > 0)
        .ok_or_else(|| {
            format!("listen `{listen}` must be an IP address and a port (e.g. `127.0.0.1:6432` or `[::1]:6432`)")
        })
}

/// Reads one profile's section for one database; `rule_ids` holds the
/// ids used so far in the policy.
pub(crate) fn statement_rules(
    section: Spanned<StatementRulesFile>,
    mut unique_id: impl FnMut(&str, Location) -> Result<(), PolicyError>,
) -> Result<StatementRules, PolicyError> {
    let location = Location::from(section.referenced);
    let section = section.value;
    let mut rules = Vec::new();
    for (effect, list) in [
        (StatementEffect::Allow, section.allow),
        (StatementEffect::Monitor, section.monitor),
        (StatementEffect::Deny, section.deny),
    ] {
        for rule in list {
            let location = Location::from(rule.referenced);
            let rule = rule.value;
            unique_id(&rule.id, location)?;
            let fail = |reason: String| {
                PolicyError::new(location, format!("rule `{}`: {reason}", rule.id))
            };
            if rule.approvable && effect != StatementEffect::Deny {
                return Err(fail(
                    "`approvable` belongs on `deny` rules (a denial under them opens a ticket)"
                        .into(),
                ));
            }
            let classes = rule
                .classes
                .iter()
                .map(|name| {
                    Class::from_name(name).ok_or_else(|| {
                        let known: Vec<_> = Class::ALL.iter().map(|c| c.name()).collect();
                        fail(format!(
                            "unknown class `{name}` (expected one of: {})",
                            known.join(", ")
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            let objects = rule
                .objects
                .iter()
                .map(|o| ObjectPattern::parse(o).map_err(fail))
                .collect::<Result<_, _>>()?;
            rules.push(StatementRule {
                id: rule.id,
                message: rule.message,
                effect,
                approvable: rule.approvable,
                classes,
                objects,
                location,
            });
        }
    }
    Ok(StatementRules {
        database: section.database.value,
        default: section.default,
        rules,
        budgets: budgets(section.budgets)?,
        mask: masking(section.mask)?,
        location,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(
        default: Access,
        rules: &[(&str, StatementEffect, &[Class], &[&str])],
    ) -> StatementRules {
        StatementRules {
            database: "db".into(),
            default,
            rules: rules
                .iter()
                .map(|(id, effect, classes, objects)| StatementRule {
                    id: id.to_string(),
                    message: None,
                    effect: *effect,
                    approvable: false,
                    classes: classes.iter().copied().collect(),
                    objects: objects
                        .iter()
                        .map(|o| ObjectPattern::parse(o).unwrap())
                        .collect(),
                    location: Location::default(),
                })
                .collect(),
            budgets: StatementBudgets::default(),
            mask: None,
            location: Location::default(),
        }
    }

    fn judge<'a>(
        rules: &'a StatementRules,
        classes: &[Class],
        objects: &[&str],
    ) -> (StatementEffect, Option<&'a str>) {
        let j = rules.judge(
            &classes.iter().copied().collect(),
            &objects.iter().map(|o| o.to_string()).collect(),
        );
        (j.effect, j.rule.map(|r| r.id.as_str()))
    }

    use StatementEffect::*;

    #[test]
    fn a_rule_about_one_table_never_loosens_another() {
        let r = rules(
            Access::Deny,
            &[
                ("reads", Allow, &[Class::Read], &[]),
                (
                    "scratch",
                    Allow,
                    &[Class::Write, Class::DeleteWithoutWhere],
                    &["scratch.*"],
                ),
                ("no-bulk-delete", Deny, &[Class::DeleteWithoutWhere], &[]),
            ],
        );
        assert_eq!(
            judge(&r, &[Class::Read], &["customers"]),
            (Allow, Some("reads"))
        );
        assert_eq!(
            judge(
                &r,
                &[Class::Write, Class::DeleteWithoutWhere],
                &["scratch.t"]
            ),
            (Allow, Some("scratch"))
        );
        // The same statement also touching another table: that table's
        // judgement counts.
        assert_eq!(
            judge(
                &r,
                &[Class::Write, Class::DeleteWithoutWhere],
                &["scratch.t", "customers"]
            ),
            (Deny, Some("no-bulk-delete"))
        );
        // Unqualified, `t` may be in another schema than `scratch`.
        assert_eq!(
            judge(&r, &[Class::Write, Class::DeleteWithoutWhere], &["t"]),
            (Deny, Some("no-bulk-delete"))
        );
        // No rule for the class: the default.
        assert_eq!(judge(&r, &[Class::Drop], &["scratch.t"]), (Deny, None));
        assert_eq!(judge(&r, &[Class::Sleep], &[]), (Deny, None));
    }

    #[test]
    fn the_strictest_matching_rule_decides() {
        let r = rules(
            Access::Allow,
            &[
                ("watch", Monitor, &[Class::Write], &[]),
                ("no-customers", Deny, &[], &["public.customers"]),
            ],
        );
        assert_eq!(
            judge(&r, &[Class::Write], &["orders"]),
            (Monitor, Some("watch"))
        );
        assert_eq!(judge(&r, &[Class::Read], &["orders"]), (Allow, None));
        // Unqualified: the search path may resolve it to public.customers.
        assert_eq!(
            judge(&r, &[Class::Read], &["customers"]),
            (Deny, Some("no-customers"))
        );
        assert_eq!(
            judge(&r, &[Class::Read], &["other.customers"]),
            (Allow, None)
        );
        assert_eq!(
            judge(&r, &[Class::Read], &["PUBLIC.Customers"]),
            (Deny, Some("no-customers"))
        );
    }

    #[test]
    fn object_patterns() {
        let p = |t| ObjectPattern::parse(t).unwrap();
        assert!(p("customers").matches("crm.customers", Allow));
        assert!(p("crm.*").matches("crm.customers", Allow));
        assert!(!p("crm.*").matches("sales.customers", Deny));
        assert!(p("crm.*").matches("customers", Deny), "may resolve to crm");
        assert!(
            !p("crm.*").matches("customers", Allow),
            "may resolve elsewhere"
        );
        assert!(!p("crm.customers").matches("customers", Monitor));
        for bad in ["", "a.b.c", "*", "a b", "x.", ".x"] {
            assert!(ObjectPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    const POLICY: &str = "\
databases:
  - name: shop
    server: db.internal:5432
    listen: 127.0.0.1:6432
    default_profile: people
profiles:
  - name: people
    default: allow
    databases:
      - database: shop
        default: allow
        deny:
          - id: no-drop
            classes: [drop, truncate]
            approvable: true
            message: ask a DBA
        monitor:
          - id: watch-customers
            objects: [public.customers]
agents: []
";

    fn error(text: &str) -> PolicyError {
        crate::policy::parse(text).expect_err("must be refused")
    }

    #[test]
    fn the_file_format() {
        let policy = crate::policy::parse(POLICY).unwrap();
        assert_eq!(policy.databases[0].server, "db.internal:5432");
        assert_eq!(
            policy.databases[0].default_profile.as_deref(),
            Some("people")
        );
        let section = &policy.profiles[0].databases[0];
        assert_eq!(section.database, "shop");
        assert_eq!(section.rules.len(), 2);
        let monitor = &section.rules[0];
        assert_eq!(
            (monitor.id.as_str(), monitor.effect),
            ("watch-customers", Monitor)
        );
        let deny = &section.rules[1];
        assert!(deny.approvable);
        assert_eq!(deny.location.line, 13);
        assert_eq!(deny.classes, [Class::Drop, Class::Truncate].into());
    }

    #[test]
    fn tls_keys() {
        let with = |tls: &str| {
            POLICY.replace(
                "    default_profile: people\n",
                &format!("    default_profile: people\n{tls}"),
            )
        };
        let policy = crate::policy::parse(&with(
            "    client_tls:\n      certificate: /etc/guard/db.crt\n      key: /etc/guard/db.key\n    server_tls:\n      ca: /etc/guard/ca.crt\n",
        ))
        .unwrap();
        let db = &policy.databases[0];
        let client = db.client_tls.as_ref().unwrap();
        assert!(client.required, "TLS is required once configured");
        assert_eq!(
            db.server_tls.as_ref().unwrap().name,
            "db.internal",
            "the server's host"
        );
        assert_eq!(db.files().len(), 3);
        let e = error(&with("    server_tls:\n      ca: ca.crt\n"));
        assert!(e.reason.contains("must be an absolute path"), "{e}");
        let e = error(&with(
            "    server_tls:\n      ca: /ca.crt\n      name: not a name\n",
        ));
        assert!(e.reason.contains("not a host name"), "{e}");
        let e = error(&with("    client_tls:\n      certificate: /c\n"));
        assert!(e.reason.contains("key"), "{e}");
        let policy = crate::policy::parse(&with(
            "    credentials:\n      user: agent_role\n      password_file: /etc/guard/db/shop.password\n",
        ))
        .unwrap();
        let db = &policy.databases[0];
        assert_eq!(db.credentials.as_ref().unwrap().user, "agent_role");
        assert_eq!(
            db.files(),
            [std::path::Path::new("/etc/guard/db/shop.password")]
        );
        let e = error(&with(
            "    credentials:\n      user: agent_role\n      password_file: shop.password\n",
        ));
        assert!(
            e.reason
                .contains("credentials: `shop.password` must be an absolute path"),
            "{e}"
        );
    }

    #[test]
    fn unix_sockets() {
        let sockets = |server: &str, dirs: &str| {
            let text = POLICY.replace("server: db.internal:5432", &format!("server: {server}"));
            let text = text.replace(
                "    default_profile: people\n",
                &format!("    default_profile: people\n{dirs}"),
            );
            crate::policy::parse(&text).map(|p| p.databases[0].unix_sockets.clone())
        };
        // A server on loopback likely has its socket where PostgreSQL puts
        // it by default; a remote one has none here.
        assert_eq!(
            sockets("127.0.0.1:5433", "").unwrap(),
            [
                "/run/postgresql/.s.PGSQL.5433",
                "/var/run/postgresql/.s.PGSQL.5433",
                "/tmp/.s.PGSQL.5433"
            ]
        );
        assert_eq!(sockets("localhost:5432", "").unwrap().len(), 3);
        assert!(sockets("db.internal:5432", "").unwrap().is_empty());
        assert_eq!(
            sockets(
                "db.internal:5432",
                "    unix_socket_directories: [/srv/pg/, '@pg']\n"
            )
            .unwrap(),
            ["/srv/pg/.s.PGSQL.5432", "@pg/.s.PGSQL.5432"]
        );
        assert!(
            sockets("127.0.0.1:5432", "    unix_socket_directories: []\n")
                .unwrap()
                .is_empty()
        );
        let e = sockets("127.0.0.1:5432", "    unix_socket_directories: [run]\n").unwrap_err();
        assert!(
            e.reason
                .contains("unix_socket_directories: `run` must be an absolute directory"),
            "{e}"
        );
        let long = format!("    unix_socket_directories: [/{}]\n", "d".repeat(100));
        let e = sockets("127.0.0.1:5432", &long).unwrap_err();
        assert!(e.reason.contains("longer than the 107 bytes"), "{e}");
    }

    #[test]
    fn budgets() {
        let with = |budgets: &str| {
            POLICY.replace(
                "        default: allow\n        deny:",
                &format!("        default: allow\n{budgets}        deny:"),
            )
        };
        let policy = crate::policy::parse(&with(
            "        budgets:\n          rows_changed: {statement: 100, session: 1000}\n          bytes_read: {session: 10MiB}\n",
        ))
        .unwrap();
        let budgets = &policy.profiles[0].databases[0].budgets;
        assert_eq!(budgets.rows_changed.statement, Some(100));
        assert_eq!(budgets.rows_changed.session, Some(1000));
        assert_eq!(budgets.bytes_read.session, Some(10 << 20));
        assert!(!budgets.rows_read.is_set());
        assert!(budgets.changes() && budgets.reads());
        for (budgets, why) in [
            ("rows_read: {statement: 10MiB}", "not a number of rows"),
            ("bytes_read: {statement: 10 MB}", "not a size"),
            ("rows_changed: {}", "give `statement`, `session` or both"),
            ("rows_changed: {statement: -1}", ""),
            ("rows_deleted: {statement: 1}", "rows_deleted"),
        ] {
            let e = error(&with(&format!("        budgets:\n          {budgets}\n")));
            assert!(e.reason.contains(why), "{budgets}: {e}");
            assert_eq!(e.location.line, 13, "{budgets}: {e}");
        }
    }

    #[test]
    fn masking() {
        let with = |mask: &str| {
            POLICY.replace(
                "        default: allow\n        deny:",
                &format!("        default: allow\n{mask}        deny:"),
            )
        };
        let policy = crate::policy::parse(&with(
            "        mask:\n          columns: [customers.email, \"*.SSN\", crm.people.phone]\n          values: [email, secret]\n",
        ))
        .unwrap();
        let mask = policy.profiles[0].databases[0].mask.clone().unwrap();
        assert_eq!(mask.computed, Computed::Mask, "masks by default");
        assert!(mask.columns[0].matches("public", "Customers", "email"));
        assert!(!mask.columns[0].matches("public", "orders", "email"));
        assert!(mask.columns[1].matches("any", "thing", "ssn"));
        assert!(mask.columns[2].matches("crm", "people", "phone"));
        assert!(!mask.columns[2].matches("public", "people", "phone"));
        assert_eq!(mask.values, [Detector::Email, Detector::Secret].into());
        for (mask, why) in [
            ("columns: [email]", "must be `table.column`"),
            ("columns: [a.b.c.d]", "must be `table.column`"),
            ("values: [phone]", "unknown value detector `phone`"),
            ("{columns: [a.b], computed: maybe}", "`mask` or `refuse`"),
            ("{}", "name `columns`, `values` or both"),
        ] {
            let text = if mask.starts_with('{') {
                format!("        mask: {mask}\n")
            } else {
                format!("        mask:\n          {mask}\n")
            };
            let e = error(&with(&text));
            assert!(e.reason.contains(why), "{mask}: {e}");
        }
    }

    #[test]
    fn the_example_policy_has_budgets() {
        let policy = crate::policy::parse(include_str!("../../examples/policy.yaml")).unwrap();
        let section = |profile: &str| {
            let p = policy.profiles.iter().find(|p| p.name == profile).unwrap();
            p.databases[0].budgets.clone()
        };
        assert_eq!(section("db-maintenance").rows_changed.statement, Some(1000));
        assert_eq!(section("data-analysis").bytes_read.session, Some(100 << 20));
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        for (from, to, line, why) in [
            (
                "classes: [drop, truncate]",
                "classes: [drop, trunc]",
                13,
                "unknown class `trunc`",
            ),
            (
                "database: shop",
                "database: shoe",
                10,
                "no database is named `shoe`",
            ),
            (
                "server: db.internal:5432",
                "server: db.internal",
                3,
                "must be `host:port`",
            ),
            (
                "default_profile: people",
                "default_profile: nobody",
                2,
                "no profile is named `nobody`",
            ),
            (
                "objects: [public.customers]",
                "objects: [a.b.c]",
                18,
                "object `a.b.c`",
            ),
            ("id: watch-customers", "id: no-drop", 13, "already used"),
            (
                "listen: 127.0.0.1:6432",
                "listen: localhost:6432",
                4,
                "must be an IP address and a port",
            ),
            (
                "listen: 127.0.0.1:6432",
                "listen: 127.0.0.1:0",
                4,
                "must be an IP address and a port",
            ),
            (
                "server: db.internal:5432",
                "server: 127.0.0.1:6432",
                4,
                "the server's own address",
            ),
            ("        monitor:", "        allow:", 0, ""),
        ] {
            let text = POLICY.replace(from, to);
            if why.is_empty() {
                crate::policy::parse(&text).unwrap();
                continue;
            }
            let e = error(&text);
            assert!(e.reason.contains(why), "{to}: {e}");
            assert_eq!(e.location.line, line, "{to}: {e}");
        }
        let e = error(&POLICY.replace("        deny:", "        allow:"));
        assert!(
            e.reason.contains("`approvable` belongs on `deny` rules"),
            "{e}"
        );
        let e = error(&POLICY.replace("        default: allow\n        deny", "        deny"));
        assert!(e.reason.contains("default"), "{e}");
    }
}
