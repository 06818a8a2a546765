//! The statement guard against a real PostgreSQL server on loopback, with
//! clients Guard did not write: `psql` (the simple protocol), the
//! `tokio-postgres` driver (the extended protocol, pipelined) and
//! `pgbench`. After each refusal the server's state is checked: the table
//! and its rows are still there. Run by `cargo xtask test` (they need the
//! release binaries and PostgreSQL).

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
    time::Duration,
};

use guard_tests::{collector::Postgres, databases::StatementGuard};
use serde_json::Value;

const POLICY: &str = "\
databases:
  - name: shop
    server: 127.0.0.1:PORT
    listen: 127.0.0.1:LISTEN
profiles:
  - name: cleanup
    default: allow
    databases:
      - database: shop
        default: allow
        deny:
          - id: no-drop
            classes: [drop, truncate]
            message: tables are never dropped by agents
          - id: no-bulk-change
            classes: [delete_without_where, update_without_where]
            message: deletes and updates need a WHERE clause
          - id: no-server-side
            classes: [copy_program, copy_server_file, server_file, code, privilege, sleep]
            message: the server's files, programs and privileges are off limits
          - id: audit-log-is-append-only
            classes: [write]
            objects: [public.audit_log]
            message: the audit log is append-only for agents
        monitor:
          - id: watch-customers
            objects: [customers]
  - name: budgeted
    default: allow
    databases:
      - database: shop
        default: allow
        budgets:
          rows_changed: {statement: 3, session: 5}
          rows_read: {statement: 4}
  - name: roomy-budgets
    default: allow
    databases:
      - database: shop
        default: allow
        budgets:
          rows_changed: {statement: 10}
          rows_read: {statement: 10}
          bytes_read: {session: 1GiB}
  - name: masked
    default: allow
    databases:
      - database: shop
        default: allow
        mask:
          columns: [customers.email, \"*.ssn\"]
          values: [email, card_number, secret]
  - name: masked-strictly
    default: allow
    databases:
      - database: shop
        default: allow
        mask:
          columns: [customers.email]
          computed: refuse
agents: []
";

/// A PostgreSQL server, and the statement guard in front of it.
struct Guarded {
    postgres: Postgres,
    guard: StatementGuard,
    records: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Guarded {
    fn start() -> Guarded {
        Guarded::start_as("cleanup")
    }

    /// The guard with `profile`'s rules for every connection (one session:
    /// they share its budgets).
    fn start_as(profile: &str) -> Guarded {
        let postgres = Postgres::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let records = dir.path().join("records.jsonl");
        let file = std::fs::File::create(&records).expect("records");
        let policy = POLICY.replace("PORT", &postgres.port.to_string());
        let guard = StatementGuard::start(dir.path(), &policy, profile, "shop", file.into());
        let guarded = Guarded {
            postgres,
            guard,
            records,
            _dir: dir,
        };
        guarded.direct(
            "CREATE TABLE t (id int, note text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 10) g; \
             CREATE TABLE customers (id int, email text); INSERT INTO customers VALUES (1, 'ann@example.com'); \
             CREATE TABLE audit_log (id serial, what text);",
        );
        guarded
    }

    fn url(&self) -> String {
        self.guard.url()
    }

    fn psql_at(&self, url: &str, sql: &str, stdin: &str) -> Output {
        let mut child = Command::new(self.postgres.bin_dir.join("psql"))
            .args([
                url,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=0",
                "-c",
                sql,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("psql output")
    }

    /// Runs `sql` through the guard; returns psql's stdout and stderr.
    fn psql(&self, sql: &str) -> (String, String) {
        let out = self.psql_at(&self.url(), sql, "");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    /// Runs `sql` on the server directly; it must succeed.
    fn direct(&self, sql: &str) -> String {
        let out = self.psql_at(&self.postgres.url, sql, "");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Asserts that `sql` is refused with the rule's message, and that the
    /// server still has table `t` with its ten rows.
    fn refused(&self, sql: &str, message: &str) {
        let (out, err) = self.psql(sql);
        assert!(
            err.contains(&format!("ERROR:  guard: {message}")),
            "{sql}: {out} {err}"
        );
        self.intact();
    }

    fn intact(&self) {
        self.rows_left(10);
    }

    fn rows_left(&self, rows: usize) {
        assert_eq!(
            self.direct("SELECT count(*) FROM t"),
            rows.to_string(),
            "table t keeps {rows} rows"
        );
    }

    /// Runs `script` through the guard in one psql session, statement by
    /// statement; returns psql's stdout and stderr.
    fn psql_script(&self, script: &str) -> (String, String) {
        let mut psql = Command::new(self.postgres.bin_dir.join("psql"))
            .args([self.url().as_str(), "-X", "-q", "-A", "-t"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        psql.stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        let out = psql.wait_with_output().expect("psql");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.records)
            .expect("records")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record"))
            .collect()
    }

    /// The last record of a statement whose normalized text is `normalized`.
    fn record_of(&self, normalized: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self
                .records()
                .into_iter()
                .rev()
                .find(|r| r["normalized"] == normalized)
            {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no record of {normalized}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const DROP: &str = "tables are never dropped by agents";
const BULK: &str = "deletes and updates need a WHERE clause";
const SERVER: &str = "the server's files, programs and privileges are off limits";

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn psql_each_class_refused_and_the_rest_runs() {
    let db = Guarded::start();
    db.refused("DROP TABLE t", DROP);
    db.refused("TRUNCATE t", DROP);
    db.refused("DELETE FROM t", BULK);
    db.refused("DELETE FROM t WHERE true", BULK);
    db.refused("UPDATE t SET note = 'x' WHERE 1 = 1", BULK);
    db.refused("COPY t TO PROGRAM 'cat > /tmp/guard-copy'", SERVER);
    db.refused("COPY t FROM '/etc/passwd'", SERVER);
    db.refused("SELECT pg_read_file('/etc/passwd')", SERVER);
    db.refused("DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$", SERVER);
    db.refused("GRANT ALL ON t TO PUBLIC", SERVER);
    db.refused("SET ROLE postgres", SERVER);
    db.refused("SELECT pg_sleep(10)", SERVER);
    db.refused(
        "INSERT INTO audit_log (what) VALUES ('forged')",
        "the audit log is append-only for agents",
    );

    // What the policy allows runs, and its effect is the server's.
    let (out, err) = db.psql("DELETE FROM t WHERE id > 8 RETURNING id");
    assert_eq!((out.as_str(), err.as_str()), ("9\n10", ""));
    assert_eq!(db.direct("SELECT count(*) FROM t"), "8");
    db.direct("INSERT INTO t VALUES (9, 'row 9'), (10, 'row 10')");

    // Records: the rule, the classes and tables, literals replaced.
    let drop = db.record_of("DROP TABLE t");
    assert_eq!(drop["verdict"], "deny");
    assert_eq!(drop["rule"], "no-drop");
    assert_eq!(drop["classes"], serde_json::json!(["drop"]));
    let delete = db.record_of("DELETE FROM t WHERE id > $1 RETURNING id");
    assert_eq!(delete["verdict"], "allow");
    let read = {
        db.psql("SELECT email FROM customers WHERE id = 1");
        db.record_of("SELECT email FROM customers WHERE id = $1")
    };
    assert_eq!(
        (read["verdict"].as_str(), read["monitored"].as_bool()),
        (Some("allow"), Some(true))
    );
    assert_eq!(read["rule"], "watch-customers");
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn psql_bypasses_are_refused_or_read_as_the_server_reads_them() {
    let db = Guarded::start();
    for sql in [
        "/* cleanup */ DrOp TaBlE \"t\"",
        "-- a comment\nDROP TABLE public.t",
        "DROP TABLE U&\"\\0074\"",
        "SELECT 1; DROP TABLE t",
        "BEGIN; SELECT 1; COMMIT; DROP TABLE t",
        "PREPARE wipe AS DELETE FROM t",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ DELETE FROM t RETURNING 1 $$",
    ] {
        let (_, err) = db.psql(sql);
        assert!(err.contains("ERROR:  guard:"), "{sql}: {err}");
        db.intact();
    }
    db.refused(
        "WITH gone AS (DELETE FROM t RETURNING *) SELECT count(*) FROM gone",
        BULK,
    );
    // Stacked statements: none runs when one is refused.
    db.refused("INSERT INTO t VALUES (11, 'x'); DROP TABLE t", DROP);
    let stacked = db.record_of("INSERT INTO t VALUES ($1, $2)");
    assert_eq!(stacked["verdict"], "deny");
    assert!(
        stacked["reason"]
            .as_str()
            .unwrap()
            .contains("another statement"),
        "{stacked}"
    );
    // Dollar quoting: the DROP is a string, and the server agrees.
    let (out, err) = db.psql("SELECT $x$; DROP TABLE t; $x$");
    assert_eq!((out.as_str(), err.as_str()), ("; DROP TABLE t;", ""));
    db.intact();
    // Settings that would make the guard read statements differently.
    for sql in [
        "SET standard_conforming_strings = off",
        "SET client_encoding = 'SQL_ASCII'",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
    ] {
        let (_, err) = db.psql(sql);
        assert!(err.contains("guard: changing"), "{sql}: {err}");
    }
    // What PostgreSQL's grammar refuses, the guard refuses too.
    let (_, err) = db.psql("DROP TABLE t extra words");
    assert!(
        err.contains("ERROR:  guard: not SQL PostgreSQL accepts"),
        "{err}"
    );
    // A prepared statement carries its classes to EXECUTE.
    let (_, err) = db.psql("PREPARE one(int) AS DELETE FROM t WHERE id = $1; EXECUTE one(11)");
    assert_eq!(err, "");
    // (libpg_query leaves EXECUTE's arguments as they are.)
    let execute = db.record_of("EXECUTE one(11)");
    assert_eq!(execute["classes"], serde_json::json!(["other", "write"]));
    db.intact();
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn psql_a_refusal_inside_a_transaction_ends_it_like_any_error() {
    let db = Guarded::start();
    let (out, err) = db.psql("BEGIN; INSERT INTO t VALUES (11, 'inside'); DROP TABLE t; COMMIT;");
    assert!(err.contains(DROP), "{out} {err}");
    // One message: nothing of it ran.
    db.intact();
    // Statement by statement, in one session: the server ends the
    // transaction as for any error, and the connection stays usable.
    let (stdout, stderr) = db.psql_script(
        "BEGIN;\nINSERT INTO t VALUES (11, 'inside');\nDROP TABLE t;\nCOMMIT;\nSELECT 'still usable';\n",
    );
    assert!(stderr.contains(DROP), "{stderr}");
    assert!(stdout.contains("still usable"), "{stdout} {stderr}");
    db.intact();
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn psql_copy_in_and_out_pass_through() {
    let db = Guarded::start();
    let out = db.psql_at(
        &db.url(),
        "\\copy t FROM STDIN",
        "11\tcopied\n12\tcopied\n\\.\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        db.direct("SELECT count(*) FROM t WHERE note = 'copied'"),
        "2"
    );
    let (out, err) = db.psql("COPY (SELECT id FROM t WHERE note = 'copied' ORDER BY id) TO STDOUT");
    assert_eq!((out.as_str(), err.as_str()), ("11\n12", ""));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// The guard's SQLSTATE and message of a refused statement.
fn refusal(error: &tokio_postgres::Error) -> (String, String) {
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("a server error: {error}"));
    (db.code().code().to_string(), db.message().to_string())
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn extended_protocol_prepared_and_pipelined() {
    let db = Guarded::start();
    runtime().block_on(async {
        let client = connect(&db.url()).await;
        // Parse refused: the statement is never prepared.
        let e = client.prepare("DROP TABLE t").await.expect_err("refused");
        assert_eq!(refusal(&e), ("42501".into(), format!("guard: {DROP}")));
        // A prepared statement re-used with other parameters.
        let delete = client
            .prepare("DELETE FROM t WHERE id = $1")
            .await
            .expect("prepare");
        assert_eq!(
            client.execute(&delete, &[&9i32]).await.expect("delete 9"),
            1
        );
        assert_eq!(
            client.execute(&delete, &[&10i32]).await.expect("delete 10"),
            1
        );
        client
            .execute(
                "INSERT INTO t VALUES ($1, 'row 9'), ($2, 'row 10')",
                &[&9i32, &10i32],
            )
            .await
            .expect("insert back");
        // Pipelined: three queries in flight at once, the middle one
        // refused; the others run and get their own answers.
        let (count, dropped, note) = tokio::join!(
            client.query_one("SELECT count(*) FROM t", &[]),
            client.execute("DELETE FROM t", &[]),
            client.query_one("SELECT note FROM t WHERE id = $1", &[&3i32]),
        );
        assert_eq!(count.expect("count").get::<_, i64>(0), 10);
        assert_eq!(
            refusal(&dropped.expect_err("refused")).1,
            format!("guard: {BULK}")
        );
        assert_eq!(note.expect("note").get::<_, String>(0), "row 3");
        // In a transaction: the refusal aborts it as any error would.
        let mut client = client;
        let tx = client.transaction().await.expect("begin");
        tx.execute("INSERT INTO t VALUES (11, 'inside')", &[])
            .await
            .expect("insert");
        let e = tx.execute("TRUNCATE t", &[]).await.expect_err("refused");
        assert_eq!(refusal(&e).0, "42501");
        // COMMIT of an aborted transaction rolls it back (row 11 is gone:
        // `intact` below counts ten rows).
        let _ = tx.commit().await;
        // The connection stays usable.
        let row = client
            .query_one("SELECT 'usable'", &[])
            .await
            .expect("still usable");
        assert_eq!(row.get::<_, String>(0), "usable");
    });
    db.intact();
}

/// Runs pgbench's own transactions through the guard in each protocol
/// mode: all 200 of each must succeed.
fn pgbench_in_every_mode(db: &Guarded) {
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(
            db,
            &db.url(),
            &["-n", "-M", mode, "-c", "4", "-j", "2", "-t", "50"],
        );
        assert!(
            out.contains("number of failed transactions: 0")
                && out.contains("number of transactions actually processed: 200/200"),
            "{mode}: {out}"
        );
    }
}

/// Runs pgbench with `args` against `url`; returns its output.
fn pgbench(db: &Guarded, url: &str, args: &[&str]) -> String {
    let out = Command::new(db.postgres.bin_dir.join("pgbench"))
        .args(args)
        .arg(url)
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?}: {text}");
    text
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn pgbench_runs_through_the_guard_in_every_protocol_mode() {
    let db = Guarded::start();
    // Initialising drops and truncates tables: the policy refuses that to
    // agents, so it is done directly.
    pgbench(&db, &db.postgres.url, &["-i", "-q", "-s", "1"]);
    pgbench_in_every_mode(&db);
    // And through the guard, the refused part of an initialisation is refused.
    let out = Command::new(db.postgres.bin_dir.join("pgbench"))
        .args(["-i", "-q", "-s", "1"])
        .arg(db.url())
        .output()
        .expect("pgbench");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains(DROP), "{text}");
    assert_eq!(db.direct("SELECT count(*) FROM pgbench_accounts"), "100000");
}

/// A small certificate authority made with `openssl`, and a certificate
/// for `localhost` and 127.0.0.1 that it signed.
struct Pki {
    ca: std::path::PathBuf,
    certificate: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Pki {
    fn new(dir: &std::path::Path, name: &str) -> Pki {
        let path = |file: &str| dir.join(format!("{name}-{file}"));
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl (cargo xtask setup installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let p = |file: &str| path(file).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", &p("ca.key"), "-out", &p("ca.crt")],
            ]
            .concat()
            .into_iter()
            .chain(["-days", "2", "-subj", &format!("/CN={name} test CA")])
            .collect::<Vec<_>>(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-keyout", &p("key.pem"), "-out", &p("csr.pem")],
            ]
            .concat()
            .into_iter()
            .chain(["-subj", "/CN=localhost"])
            .collect::<Vec<_>>(),
        );
        std::fs::write(
            path("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("csr.pem"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("cert.pem"),
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
        ]);
        let key = path("key.pem");
        // The server reads its key as `postgres`, and wants it private.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = guard_tests::collector::postgres_user() {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
        }
        Pki {
            ca: path("ca.crt"),
            certificate: path("cert.pem"),
            key,
        }
    }
}

/// TLS on both legs: the guard presents its certificate to clients (which
/// verify it) and refuses plain text; it reaches the server in TLS and
/// checks the server's certificate against the policy's authority, and
/// refuses a server that authority did not sign.
#[test]
#[ignore = "needs PostgreSQL, openssl and the release binaries; run by cargo xtask test"]
fn tls_to_clients_and_to_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "guard");
    let stranger = Pki::new(dir.path(), "stranger");
    let cert = format!("ssl_cert_file={}", pki.certificate.display());
    let key = format!("ssl_key_file={}", pki.key.display());
    let postgres = Postgres::start_with(&["ssl=on", &cert, &key]);
    let policy = |ca: &std::path::Path| {
        format!(
            "\
databases:
  - name: shop
    server: 127.0.0.1:{port}
    listen: 127.0.0.1:LISTEN
    client_tls:
      certificate: {certificate}
      key: {key}
    server_tls:
      ca: {ca}
      name: localhost
profiles:
  - name: reader
    default: allow
    databases:
      - database: shop
        default: allow
agents: []
",
            port = postgres.port,
            certificate = pki.certificate.display(),
            key = pki.key.display(),
            ca = ca.display(),
        )
    };
    let run = |guard: &StatementGuard, sslmode: &str, sql: &str| {
        let conninfo = format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=guard dbname=postgres sslmode={sslmode} sslrootcert={}",
            guard.port,
            pki.ca.display()
        );
        let out = Command::new(postgres.bin_dir.join("psql"))
            .args([&conninfo, "-X", "-A", "-t", "-c", sql])
            .output()
            .expect("psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };

    let guarded = tempfile::tempdir().expect("tempdir");
    let guard = StatementGuard::start(
        guarded.path(),
        &policy(&pki.ca),
        "reader",
        "shop",
        Stdio::null(),
    );
    // The client verifies the guard's certificate and name; the server
    // sees a TLS connection from the guard.
    let (ok, out, err) = run(
        &guard,
        "verify-full",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "t");
    // Plain text is refused.
    let (ok, _, err) = run(&guard, "disable", "SELECT 1");
    assert!(
        !ok && err.contains("guard: the statement guard requires TLS"),
        "{err}"
    );

    // A server whose certificate the policy's authority did not sign.
    let other = tempfile::tempdir().expect("tempdir");
    let doubting = StatementGuard::start(
        other.path(),
        &policy(&stranger.ca),
        "reader",
        "shop",
        Stdio::null(),
    );
    let (ok, _, err) = run(&doubting, "require", "SELECT 1");
    assert!(!ok && err.contains("TLS to the database server"), "{err}");
}

const OVER_CHANGED: &str =
    "guard: the statement went over its budget of 3 rows changed per statement";
const OVER_SESSION: &str = "guard: the session went over its budget of 5 rows changed per session";
const OVER_READ: &str = "guard: the statement went over its budget of 4 rows read per statement";

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn psql_row_budgets_undo_what_goes_over() {
    let db = Guarded::start_as("budgeted");
    // Five rows: over the statement's budget of 3, and nothing is kept.
    let (out, err) = db.psql("DELETE FROM t WHERE id > 5");
    assert!(err.contains(OVER_CHANGED), "{out} {err}");
    db.intact();
    let record = db.record_of("DELETE FROM t WHERE id > $1");
    assert_eq!(
        (record["verdict"].as_str(), record["rule"].as_str()),
        (Some("deny"), Some("budget:rows_changed"))
    );
    assert_eq!(record["rows_changed"], 5, "{record}");
    // Within it: kept, and counted in the record.
    let (out, err) = db.psql("DELETE FROM t WHERE id > 8");
    assert_eq!((out.as_str(), err.as_str()), ("", ""));
    db.rows_left(8);
    let record = db.record_of("DELETE FROM t WHERE id > $1");
    assert_eq!(
        (record["verdict"].as_str(), &record["rows_changed"]),
        (Some("allow"), &2.into())
    );
    // Inside the client's own transaction: the transaction is aborted as by
    // any error, so its COMMIT keeps nothing; the connection stays usable.
    let (out, err) = db.psql_script(
        "BEGIN;\nINSERT INTO t VALUES (20, 'inside');\nDELETE FROM t WHERE id > 4;\nCOMMIT;\nSELECT 'usable';\n",
    );
    assert!(err.contains(OVER_CHANGED), "{out} {err}");
    assert!(out.contains("usable"), "{out} {err}");
    db.rows_left(8);
    // Transaction control in the same message as a budgeted statement is
    // refused: it would end the guard's transaction.
    let (out, err) = db.psql("BEGIN; DELETE FROM t WHERE id = 8; COMMIT");
    assert!(err.contains("send transaction control"), "{out} {err}");
    db.rows_left(8);
    // Changes the command tag would not count are refused.
    let (out, err) = db.psql("WITH gone AS (DELETE FROM t RETURNING *) SELECT count(*) FROM gone");
    assert!(err.contains("would not be counted"), "{out} {err}");
    db.rows_left(8);
    // The session's budget of 5 holds across connections: 2 spent, 2
    // more fit, the next 2 do not.
    let (out, err) = db.psql("DELETE FROM t WHERE id > 6");
    assert_eq!((out.as_str(), err.as_str()), ("", ""));
    db.rows_left(6);
    let (out, err) = db.psql("DELETE FROM t WHERE id > 4");
    assert!(err.contains(OVER_SESSION), "{out} {err}");
    db.rows_left(6);
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn psql_read_budgets_cut_the_rows() {
    let db = Guarded::start_as("budgeted");
    let (out, err) = db.psql("SELECT id FROM t ORDER BY id");
    assert!(err.contains(OVER_READ), "{out} {err}");
    assert!(!out.contains('5'), "no row beyond the budget: {out}");
    let record = db.record_of("SELECT id FROM t ORDER BY id");
    assert_eq!(record["rule"], "budget:rows_read", "{record}");
    let (out, err) = db.psql("SELECT id FROM t WHERE id <= 4 ORDER BY id");
    assert_eq!((out.as_str(), err.as_str()), ("1\n2\n3\n4", ""));
    let record = db.record_of("SELECT id FROM t WHERE id <= $1 ORDER BY id");
    assert_eq!(
        (&record["rows_read"], record["verdict"].as_str()),
        (&4.into(), Some("allow"))
    );
    assert!(record["bytes_read"].as_u64().unwrap() > 0, "{record}");
    // COPY out counts its rows too.
    let (out, err) = db.psql("COPY t TO STDOUT");
    assert!(err.contains(OVER_READ), "{out} {err}");
    // Inside a transaction, the statement over its budget aborts it.
    let (out, err) =
        db.psql_script("BEGIN;\nSELECT * FROM t;\nSELECT 'after';\nROLLBACK;\nSELECT 'usable';\n");
    assert!(err.contains(OVER_READ), "{out} {err}");
    assert!(
        err.contains("current transaction is aborted"),
        "{out} {err}"
    );
    assert!(out.ends_with("usable"), "{out} {err}");
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn extended_protocol_budgets() {
    let db = Guarded::start_as("budgeted");
    runtime().block_on(async {
        let mut client = connect(&db.url()).await;
        let e = client
            .execute("DELETE FROM t WHERE id > $1", &[&6i32])
            .await
            .expect_err("over");
        assert_eq!(refusal(&e), ("42501".into(), OVER_CHANGED.into()));
        assert_eq!(
            client
                .execute("DELETE FROM t WHERE id > $1", &[&8i32])
                .await
                .expect("within"),
            2
        );
        // Pipelined: the one over its budget fails alone.
        let (over, count, read) = tokio::join!(
            client.execute("DELETE FROM t WHERE id > $1", &[&4i32]),
            client.query_one("SELECT count(*) FROM t", &[]),
            client.query("SELECT id FROM t WHERE id < $1", &[&4i32]),
        );
        assert_eq!(refusal(&over.expect_err("over")).1, OVER_CHANGED);
        assert_eq!(count.expect("count").get::<_, i64>(0), 8);
        assert_eq!(read.expect("three rows").len(), 3);
        let e = client
            .query("SELECT * FROM t", &[])
            .await
            .expect_err("over");
        assert_eq!(refusal(&e).1, OVER_READ);
        // In a transaction: aborted, so nothing of it is kept.
        let tx = client.transaction().await.expect("begin");
        tx.execute("INSERT INTO t VALUES (20, 'inside')", &[])
            .await
            .expect("insert");
        let e = tx
            .execute("UPDATE t SET note = 'x' WHERE id > $1", &[&2i32])
            .await
            .expect_err("over");
        assert_eq!(refusal(&e).1, OVER_CHANGED);
        let _ = tx.commit().await;
        let row = client
            .query_one("SELECT 'usable'", &[])
            .await
            .expect("usable");
        assert_eq!(row.get::<_, String>(0), "usable");
    });
    db.rows_left(8);
    assert_eq!(db.direct("SELECT count(*) FROM t WHERE note = 'x'"), "0");
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn pgbench_runs_under_budgets_in_every_protocol_mode() {
    let db = Guarded::start_as("roomy-budgets");
    pgbench(&db, &db.postgres.url, &["-i", "-q", "-s", "1"]);
    // Each statement of pgbench's transactions is watched: its rows
    // counted before the next reaches the server.
    pgbench_in_every_mode(&db);
    assert_eq!(
        db.direct("SELECT count(*) FROM pgbench_history"),
        "600",
        "every transaction's change was kept"
    );
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn startup_settings_are_refused() {
    let db = Guarded::start();
    // Settings in the startup packet would be set before the guard judges
    // anything: `-c role=...` would be a `SET ROLE` nobody judged.
    let out = Command::new(db.postgres.bin_dir.join("psql"))
        .args([db.url().as_str(), "-X", "-c", "SELECT 1"])
        .env("PGOPTIONS", "-c role=pg_read_all_data")
        .output()
        .expect("psql");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the startup parameter `options` is not allowed"),
        "{err}"
    );
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn credentials_held_by_the_guard() {
    // The server wants a SCRAM password from role `app`; the agent never
    // has it: the guard logs in for it.
    let hba = tempfile::Builder::new()
        .suffix(".hba")
        .tempfile_in("/tmp")
        .unwrap();
    fs_write_readable(
        hba.path(),
        "host all guard 127.0.0.1/32 trust\nhost all app 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 reject\n",
    );
    let postgres = Postgres::start_with(&[&format!("hba_file={}", hba.path().display())]);
    let dir = tempfile::tempdir().unwrap();
    let run_direct = |sql: &str| {
        let out = Command::new(postgres.bin_dir.join("psql"))
            .args([postgres.url.as_str(), "-X", "-q", "-A", "-t", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run_direct(
        "CREATE ROLE app LOGIN PASSWORD 'app-secret'; CREATE TABLE t (id int); GRANT ALL ON t TO app",
    );
    let password = dir.path().join("app.password");
    std::fs::write(&password, "app-secret\n").unwrap();
    let policy = |password: &std::path::Path| {
        POLICY
            .replace("PORT", &postgres.port.to_string())
            .replace(
                "    listen: 127.0.0.1:LISTEN\n",
                &format!(
                    "    listen: 127.0.0.1:LISTEN\n    credentials:\n      user: app\n      password_file: {}\n",
                    password.display()
                ),
            )
    };
    let records = dir.path().join("records.jsonl");
    let guard = StatementGuard::start(
        dir.path(),
        &policy(&password),
        "cleanup",
        "shop",
        std::fs::File::create(&records).unwrap().into(),
    );
    let through = |url: &str, sql: &str| {
        let out = Command::new(postgres.bin_dir.join("psql"))
            .args([url, "-X", "-q", "-A", "-t", "-c", sql])
            .env_remove("PGPASSWORD")
            .output()
            .expect("psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    // The agent's login name is only recorded; no password is asked.
    let url = guard.url().replace("guard@", "agent@");
    let (ok, out, err) = through(&url, "SELECT current_user");
    assert!(ok, "{err}");
    assert_eq!(out, "app");
    let (ok, _, err) = through(&url, "DROP TABLE t");
    assert!(!ok && err.contains(DROP), "{err}");
    // Without the guard, the role is useless to the agent.
    let direct = postgres.url.replace("guard@", "app@");
    let (ok, _, err) = through(&direct, "SELECT 1");
    assert!(!ok && err.contains("password"), "{err}");
    let text = std::fs::read_to_string(&records).unwrap();
    let record: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["normalized"] == "SELECT current_user")
        .expect("a record");
    assert_eq!(
        (record["user"].as_str(), record["role"].as_str()),
        (Some("agent"), Some("app"))
    );
    drop(guard);

    // A wrong password: the guard says it cannot log in.
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-it").unwrap();
    let guard = StatementGuard::start(
        dir.path(),
        &policy(&wrong),
        "cleanup",
        "shop",
        Stdio::null(),
    );
    let (ok, _, err) = through(&guard.url(), "SELECT 1");
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
}

/// Writes `text` to `path`, readable by the server's own user.
fn fs_write_readable(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The customers get a social security number and notes with a card
/// number and an e-mail address in them.
fn with_personal_data(db: &Guarded) {
    db.direct(
        "ALTER TABLE customers ADD COLUMN ssn text, ADD COLUMN notes text; \
         UPDATE customers SET ssn = '123-45-6789', notes = 'card 4111 1111 1111 1111, mail bob@example.org'",
    );
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn psql_masked_columns_and_values() {
    let db = Guarded::start_as("masked");
    with_personal_data(&db);
    let check = |sql: &str, expected: &str| {
        let (out, err) = db.psql(sql);
        assert_eq!((out.as_str(), err.as_str()), (expected, ""), "{sql}");
    };
    check(
        "SELECT id, email, ssn FROM customers",
        "1|<masked>|<masked>",
    );
    // By the server's ids, not by the names the statement uses.
    check(
        "SELECT c.email AS contact FROM public.customers c",
        "<masked>",
    );
    check(
        "SELECT * FROM (SELECT email FROM customers) sub",
        "<masked>",
    );
    // Computed from a table with masked columns: masked too.
    check("SELECT upper(email) FROM customers", "<masked>");
    check("SELECT email || '' AS e, id FROM customers", "<masked>|1");
    // Values the detectors know, anywhere in text.
    check(
        "SELECT notes FROM customers",
        "card <masked:card_number>, mail <masked:email>",
    );
    check("SELECT 'ann@example.com' AS literal", "<masked:email>");
    // Other columns and tables pass.
    check("SELECT id, note FROM t WHERE id = 1", "1|row 1");
    // A view over a masked column: all its columns (int: NULL).
    db.direct("CREATE VIEW contacts AS SELECT id, email FROM customers");
    check("SELECT * FROM contacts", "|<masked>");
    // Masked values are not copied where they would not be masked.
    for sql in [
        "CREATE TABLE leak AS SELECT email FROM customers",
        "CREATE VIEW leak AS SELECT email FROM customers",
        "INSERT INTO t SELECT id, email FROM customers",
        "SELECT set_config('guard.x', email, false) FROM customers",
    ] {
        let (out, err) = db.psql(sql);
        assert!(
            err.contains("may not copy from it into another"),
            "{sql}: {out} {err}"
        );
    }
    db.intact();
    // The server's errors may quote values: withheld.
    let (out, err) = db.psql("SELECT CAST(email AS int) FROM customers");
    assert!(
        err.contains("the server's message is withheld") && !err.contains("ann@"),
        "{out} {err}"
    );
    // COPY cannot mask column by column: refused for masked tables.
    let (out, err) = db.psql("COPY customers TO STDOUT");
    assert!(
        err.contains("COPY out of a table with masked columns is refused"),
        "{out} {err}"
    );
    let record = db.record_of("SELECT id, email, ssn FROM customers");
    assert_eq!(
        record["masked"],
        serde_json::json!(["public.customers.email", "public.customers.ssn"]),
        "{record}"
    );
    let record = db.record_of("SELECT notes FROM customers");
    assert_eq!(
        record["masked"],
        serde_json::json!(["value:card_number", "value:email"]),
        "{record}"
    );
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn extended_protocol_masking() {
    let db = Guarded::start_as("masked");
    with_personal_data(&db);
    runtime().block_on(async {
        let client = connect(&db.url()).await;
        // Binary results: a masked text column is the marker all the same.
        let row = client
            .query_one(
                "SELECT id, email, ssn, notes FROM customers WHERE id = $1",
                &[&1i32],
            )
            .await
            .expect("select");
        assert_eq!(row.get::<_, i32>(0), 1);
        assert_eq!(row.get::<_, String>(1), "<masked>");
        assert_eq!(row.get::<_, String>(2), "<masked>");
        assert_eq!(
            row.get::<_, String>(3),
            "card <masked:card_number>, mail <masked:email>"
        );
        // A computed column of another type: NULL.
        let row = client
            .query_one("SELECT length(email) FROM customers", &[])
            .await
            .expect("select");
        assert_eq!(row.get::<_, Option<i32>>(0), None);
        // Prepared once, executed again: still masked.
        let statement = client.prepare("SELECT email FROM customers").await.unwrap();
        for _ in 0..2 {
            let row = client.query_one(&statement, &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), "<masked>");
        }
        let rows = client
            .query("SELECT note FROM t WHERE id < $1", &[&3i32])
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].get::<_, String>(0), "row 1");
    });
}

#[test]
#[ignore = "needs PostgreSQL and the release binaries; run by cargo xtask test"]
fn computed_columns_refused_when_the_policy_says_so() {
    let db = Guarded::start_as("masked-strictly");
    let (out, err) = db.psql("SELECT upper(email) FROM customers");
    assert!(
        err.contains("guard: the result column `upper` is computed in a statement that reads a table with masked columns"),
        "{out} {err}"
    );
    assert!(!out.contains("ann"), "{out}");
    let (out, err) = db.psql("SELECT id, email FROM customers");
    assert_eq!((out.as_str(), err.as_str()), ("1|<masked>", ""));
}

/// Runs tests/python/psycopg_client.py's `scenario` through the guard.
fn psycopg(db: &Guarded, scenario: &str) -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("tests/python/psycopg_client.py"))
        .args([db.url().as_str(), scenario])
        .output()
        .expect("python3 (cargo xtask setup installs psycopg)");
    assert!(
        out.status.success(),
        "{scenario}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
#[ignore = "needs PostgreSQL, psycopg and the release binaries; run by cargo xtask test"]
fn psycopg_rules_prepared_and_pipelined() {
    let db = Guarded::start();
    let out = psycopg(&db, "rules");
    let refused = |message: &str| serde_json::json!({"sqlstate": "42501", "message": format!("guard: {message}")});
    assert_eq!(out["drop"], refused(DROP), "{out}");
    assert_eq!(out["after"], 10, "{out}");
    assert_eq!(
        (&out["prepared_3"], &out["prepared_4"]),
        (&"row 3".into(), &"row 4".into())
    );
    assert_eq!(out["pipeline"], serde_json::json!([refused(BULK)]), "{out}");
    assert_eq!(out["count_seen_in_pipeline"], 10, "{out}");
    db.intact();
    assert_eq!(
        db.direct("SELECT count(*) FROM t WHERE id = 99"),
        "0",
        "the pipeline stopped"
    );
}

#[test]
#[ignore = "needs PostgreSQL, psycopg and the release binaries; run by cargo xtask test"]
fn psycopg_budgets_and_masking() {
    let db = Guarded::start_as("budgeted");
    let out = psycopg(&db, "budgets");
    assert_eq!(out["over"]["message"], OVER_CHANGED, "{out}");
    assert_eq!(
        (&out["within"], &out["read"]),
        (&2.into(), &serde_json::json!([1, 2, 3])),
        "{out}"
    );
    db.rows_left(8);
    let db = Guarded::start_as("masked");
    with_personal_data(&db);
    let out = psycopg(&db, "masked");
    let expected = serde_json::json!([
        "<masked>",
        "<masked>",
        "card <masked:card_number>, mail <masked:email>"
    ]);
    assert_eq!(
        (&out["text"], &out["binary"]),
        (&expected, &expected),
        "{out}"
    );
}
