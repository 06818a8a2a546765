//! The statement guard as guardd runs it: a real PostgreSQL server in the
//! VM, `psql` run by agents (through `guardctl run`) and by processes in no
//! session. The profile comes from the client socket's cgroup; the records
//! are in guardd's chain.

use std::{
    fs,
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use guard_tests::collector::{Postgres, free_port};
use serde_json::Value;

use crate::harness::*;

/// psql's output: (exit success, stdout, stderr).
fn psql(command: &mut Command, url: &str, sql: &str) -> (bool, String, String) {
    let out = command
        .args([url, "-X", "-q", "-A", "-t", "-c", sql])
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Runs `sql` on the server directly (untagged), which must succeed.
fn direct(postgres: &Postgres, sql: &str) -> String {
    let (ok, out, err) = psql(
        &mut Command::new(postgres.bin_dir.join("psql")),
        &postgres.url,
        sql,
    );
    assert!(ok, "{sql}: {err}");
    out
}

/// `psql` run by `agent`, through `guardctl run`.
fn psql_as(guardd: &Guardd, bin_dir: &std::path::Path, agent: &str) -> Command {
    let mut command = Command::new(bin("guardctl"));
    command
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["run", "--agent", agent, "--"])
        .arg(bin_dir.join("psql"));
    command
}

fn wait_listening(port: u16, guardd: &Guardd) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the statement guard does not listen on {port}:\n{}",
            guardd.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The statement records written so far.
fn statements(guardd: &Guardd) -> Vec<Value> {
    guardd
        .records()
        .into_iter()
        .filter(|r| r["action"] == "statement")
        .collect()
}

/// Waits for the statement record whose normalized text is `normalized`
/// and whose profile is `profile`.
fn statement(guardd: &Guardd, profile: &str, normalized: &str) -> Value {
    guardd.wait_for_record(
        &format!("the statement `{normalized}` by profile {profile}"),
        |r| {
            r["action"] == "statement"
                && r["profile"] == profile
                && r["statement"]["normalized"] == normalized
        },
    )
}

/// guardd runs the statement guard as `nobody` for a policy with
/// databases. An agent's connection is judged by its session's profile,
/// a process in no session by the database's `default_profile`; refused
/// statements leave the server as it was; every statement is a record in
/// guardd's chain with the session that made it.
#[test]
fn the_statement_guard_judges_each_connection_by_its_session() {
    let postgres = Postgres::start();
    let bin_dir = postgres.bin_dir.clone();
    let direct = |sql: &str| direct(&postgres, sql);
    direct(
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3); \
         CREATE TABLE v (id int); INSERT INTO v SELECT generate_series(1, 6)",
    );

    let (guarded, agents_only) = (free_port(), free_port());
    // A port someone else holds: that database cannot be guarded.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let policy = format!(
        "\
databases:
  - name: shop
    server: 127.0.0.1:{server}
    listen: 127.0.0.1:{guarded}
    default_profile: people
  - name: vault
    server: 127.0.0.1:{server}
    listen: 127.0.0.1:{agents_only}
  - name: busy
    server: 127.0.0.1:{server}
    listen: 127.0.0.1:{busy}
profiles:
  - name: analyst
    default: allow
    databases:
      - database: shop
        default: allow
        deny:
          - id: no-drop
            classes: [drop, truncate]
            message: analysts never drop tables
          - id: migrations-need-a-human
            classes: [alter]
            approvable: true
            message: schema changes need a human
      - database: vault
        default: allow
        budgets:
          rows_changed: {{session: 2}}
  - name: coder
    default: allow
  - name: people
    default: allow
    databases:
      - database: shop
        default: allow
        deny:
          - id: people-ask-a-dba
            classes: [drop]
            message: ask a DBA to drop tables
agents:
  - name: analyst
    profile: analyst
  - name: coder
    profile: coder
",
        server = postgres.port,
    );
    let e = env();
    let dir = e.path("databases");
    fs::create_dir_all(&dir).unwrap();
    let guardd = Guardd::start(&dir, &policy, "guard-databases-test");
    wait_listening(guarded, &guardd);
    // `guardctl status` says which databases the guard serves, and why it
    // cannot serve the one whose port is taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = guardd.status();
        let databases = status["databases"].as_array().expect("databases in status");
        assert_eq!(databases.len(), 3, "{status}");
        let state = |name: &str| {
            let d = databases.iter().find(|d| d["name"] == name).unwrap();
            (
                d["guarded"] == true,
                d["problem"].as_str().unwrap_or("").to_string(),
            )
        };
        let settled =
            state("shop").0 && state("vault").0 && state("busy").1.contains("cannot listen");
        if settled {
            assert!(!state("busy").0);
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = guardd.guardctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("NOT guarded (cannot listen on"), "{text}");
    let url = |port: u16| format!("postgres://guard@127.0.0.1:{port}/postgres");
    let as_agent = |agent: &str| psql_as(&guardd, &bin_dir, agent);
    let untagged = || Command::new(bin_dir.join("psql"));

    // The analyst's DROP is refused with its rule's reason; the table and
    // its rows are still there. Its reads run.
    let (ok, _, err) = psql(&mut as_agent("analyst"), &url(guarded), "DROP TABLE t");
    assert!(
        !ok && err.contains("guard: analysts never drop tables"),
        "{err}"
    );
    assert_eq!(direct("SELECT count(*) FROM t"), "3");
    let (ok, out, err) = psql(
        &mut as_agent("analyst"),
        &url(guarded),
        "SELECT count(*) FROM t",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "3");

    // A process in no session gets the database's default profile: its
    // own rule refuses, with its own reason.
    let (ok, _, err) = psql(&mut untagged(), &url(guarded), "DROP TABLE t");
    assert!(
        !ok && err.contains("guard: ask a DBA to drop tables"),
        "{err}"
    );
    assert_eq!(direct("SELECT count(*) FROM t"), "3");

    // No default profile: only agents whose profile has rules for the
    // database may use it.
    let (ok, _, err) = psql(&mut untagged(), &url(agents_only), "SELECT 1");
    assert!(!ok && err.contains("default_profile"), "{err}");
    let (ok, _, err) = psql(&mut as_agent("coder"), &url(guarded), "SELECT 1");
    assert!(
        !ok && err.contains("profile `coder` has no rules for database `shop`"),
        "{err}"
    );
    let (ok, out, err) = psql(&mut as_agent("analyst"), &url(agents_only), "SELECT 1");
    assert!(ok && out == "1", "{err}");

    // The records: in guardd's chain, with the session that made them.
    let drop = statement(&guardd, "analyst", "DROP TABLE t");
    assert_eq!(drop["verdict"], "deny", "{drop}");
    assert_eq!(drop["rule"], "no-drop", "{drop}");
    assert_eq!(drop["agent"], "analyst", "{drop}");
    assert!(
        drop["session"].as_str().is_some_and(|s| !s.is_empty()),
        "{drop}"
    );
    assert_eq!(drop["target"], "shop/postgres", "{drop}");
    assert_eq!(
        drop["statement"]["classes"],
        serde_json::json!(["drop"]),
        "{drop}"
    );
    assert_eq!(
        drop["statement"]["objects"],
        serde_json::json!(["t"]),
        "{drop}"
    );
    assert!(
        drop["chain"].as_str().is_some_and(|c| c.len() == 64),
        "{drop}"
    );
    let read = statement(&guardd, "analyst", "SELECT count(*) FROM t");
    assert_eq!(
        (&read["verdict"], &read["rule"]),
        (&"allow".into(), &"default".into())
    );
    let human = statement(&guardd, "people", "DROP TABLE t");
    assert_eq!(human["rule"], "people-ask-a-dba", "{human}");
    assert_eq!(human["agent"], "", "{human}");
    assert!(human.get("session").is_none(), "{human}");
    assert_eq!(human["uid"], 0, "{human}");

    // An approvable refusal opens a ticket bound to the session and the
    // statement; a human approves it once; the session's retry runs, and
    // its next one is refused again. One session runs all three.
    let alter = "ALTER TABLE t ADD COLUMN note text";
    let work = dir.join("approval");
    fs::create_dir_all(&work).unwrap();
    let script = format!(
        "psql() {{ {psql} '{url}' -X -q -A -t -c '{alter}' 2>$1.err; echo $? > $1.rc; }}
psql first
sleep 1; {guardctl} why > why.txt; touch asked
while [ ! -e approved ]; do sleep 1; done
psql second
psql third
touch done",
        psql = bin_dir.join("psql").display(),
        guardctl = bin("guardctl").display(),
        url = url(guarded),
    );
    let mut session = Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["run", "--agent", "analyst", "--", "sh", "-c", &script])
        .current_dir(&work)
        .spawn()
        .unwrap();
    let read = |name: &str| fs::read_to_string(work.join(name)).unwrap_or_default();
    let wait_for = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !work.join(name).exists() {
            assert!(Instant::now() < deadline, "no {name}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("asked");
    let err = read("first.err");
    assert!(err.contains("guard: schema changes need a human"), "{err}");
    assert!(err.contains("guardctl approve"), "{err}");
    let refused = statement(&guardd, "analyst", alter);
    assert_eq!(refused["ticket"]["state"], "requested", "{refused}");
    let ticket = refused["ticket"]["id"]
        .as_str()
        .expect("a ticket id")
        .to_string();
    let why = read("why.txt");
    assert!(
        why.contains(alter) && why.contains(&ticket),
        "guardctl why: {why}"
    );
    let listed = guardd.guardctl(&["tickets"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&ticket) && listed.contains(alter),
        "{listed}"
    );
    let approve = guardd.guardctl(&["approve", &ticket, "--once"]);
    assert!(
        approve.status.success(),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    fs::write(work.join("approved"), "").unwrap();
    wait_for("done");
    assert!(session.wait().unwrap().success());
    assert_eq!(read("second.rc").trim(), "0", "{}", read("second.err"));
    assert_eq!(direct("SELECT count(note) FROM t"), "0");
    let used = statements(&guardd)
        .into_iter()
        .find(|r| r["statement"]["normalized"] == alter && r["verdict"] == "allow")
        .expect("the approved statement's record");
    assert_eq!(used["ticket"]["id"], ticket.as_str(), "{used}");
    assert_eq!(used["ticket"]["state"], "used", "{used}");
    assert_eq!(used["flags"], serde_json::json!(["approved"]), "{used}");
    let third = read("third.err");
    assert!(
        third.contains("guard: schema changes need a human"),
        "once: {third}"
    );

    // A session's budget holds across its connections; another session
    // has its own.
    let script = format!(
        "for id in 1 2 3; do {psql} '{url}' -X -q -A -t -c \"DELETE FROM v WHERE id = $id\" 2>>budget.err; done; true",
        psql = bin_dir.join("psql").display(),
        url = url(agents_only),
    );
    let ran = Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["run", "--agent", "analyst", "--", "sh", "-c", &script])
        .current_dir(&work)
        .status()
        .unwrap();
    assert!(ran.success());
    let err = read("budget.err");
    assert!(
        err.contains("guard: the session went over its budget of 2 rows changed per session"),
        "{err}"
    );
    assert_eq!(direct("SELECT count(*) FROM v"), "4");
    let (ok, _, err) = psql(
        &mut as_agent("analyst"),
        &url(agents_only),
        "DELETE FROM v WHERE id = 3",
    );
    assert!(ok, "a new session has its own budget: {err}");
    assert_eq!(direct("SELECT count(*) FROM v"), "3");
    statement(&guardd, "analyst", "DELETE FROM v WHERE id = $1");
    let deletes: Vec<Value> = statements(&guardd)
        .into_iter()
        .filter(|r| r["statement"]["normalized"] == "DELETE FROM v WHERE id = $1")
        .collect();
    let kept = |r: &Value| r["verdict"] == "allow" && r["statement"]["rows_changed"] == 1;
    let over = |r: &Value| r["verdict"] == "deny" && r["rule"] == "budget:rows_changed";
    assert_eq!(
        deletes.iter().filter(|r| kept(r)).count(),
        3,
        "{deletes:#?}"
    );
    assert_eq!(
        deletes.iter().filter(|r| over(r)).count(),
        1,
        "{deletes:#?}"
    );

    // The guard runs as nobody, with no groups, no capabilities and no way
    // to gain privileges.
    let status = guard_status();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    assert_eq!(field("Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(field("Gid:"), "65534\t65534\t65534\t65534");
    assert_eq!(field("Groups:"), "");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");

    // A guard that dies is started again, and guardd says so meanwhile.
    let first = guard_pid().unwrap();
    unsafe { libc::kill(first, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while guard_pid().is_none_or(|pid| pid == first) {
        assert!(Instant::now() < deadline, "{}", guardd.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        guardd
            .log_text()
            .contains("the statement guard is not running"),
        "{}",
        guardd.log_text()
    );
    wait_listening(guarded, &guardd);
    let (ok, out, err) = psql(
        &mut as_agent("analyst"),
        &url(guarded),
        "SELECT count(*) FROM t",
    );
    assert!(ok && out == "3", "{err}");

    // guardd's record chain holds: `guardctl audit verify`.
    let verify = Command::new(bin("guardctl"))
        .args(["audit", "verify"])
        .arg(&guardd.events)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// The pid of the running `guard-pg`.
fn guard_pid() -> Option<i32> {
    fs::read_dir("/proc").unwrap().flatten().find_map(|entry| {
        let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim() == "guard-pg")
            .then(|| entry.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// `/proc/PID/status` of the running `guard-pg`.
fn guard_status() -> String {
    let pid = guard_pid().expect("a guard-pg process");
    fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

/// An agent whose profile has rules for a database cannot skip its guard:
/// the kernel sends its connections to the server's address (IPv4,
/// IPv4-mapped IPv6, IPv6) to the guard, unchanged for the client. A
/// process in no session, and an agent whose profile has no rules for the
/// database, connect to the server itself. Two agents connected at once
/// are each judged by their own session. The guard logs in with the
/// credentials it holds, whose file no agent may read; no agent may kill or
/// trace the guard.
#[test]
fn agents_connections_to_a_guarded_server_are_routed_to_its_guard() {
    let postgres = Postgres::start_with(&["listen_addresses=127.0.0.1,::1"]);
    let bin_dir = postgres.bin_dir.clone();
    let direct = |sql: &str| direct(&postgres, sql);
    direct("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3); CREATE ROLE app LOGIN");

    let (guard4, guard6, vault) = (free_port(), free_port(), free_port());
    let e = env();
    let dir = e.path("database-routing");
    fs::create_dir_all(&dir).unwrap();
    let password_file = dir.join("app.password");
    fs::write(&password_file, "not-for-agents\n").unwrap();
    let policy = format!(
        "\
databases:
  - name: shop
    server: 127.0.0.1:{server}
    listen: 127.0.0.1:{guard4}
    unix_socket_directories: [{socket_dir}]
  - name: shop6
    server: '[::1]:{server}'
    listen: 127.0.0.1:{guard6}
  - name: vault
    server: '[::ffff:127.0.0.1]:{server}'
    listen: 127.0.0.1:{vault}
    credentials:
      user: app
      password_file: {password}
profiles:
  - name: analyst
    default: allow
    databases:
      - database: shop
        default: allow
        deny:
          - id: no-drop
            classes: [drop, truncate]
            message: analysts never drop tables
      - database: shop6
        default: allow
        deny:
          - id: no-drop-v6
            classes: [drop]
            message: not over IPv6 either
  - name: auditor
    default: allow
    databases:
      - database: shop
        default: deny
        allow:
          - id: reads-only
            classes: [read, sleep]
  - name: keeper
    default: allow
    databases:
      - database: vault
        default: allow
  - name: coder
    default: allow
agents:
  - name: analyst
    profile: analyst
  - name: auditor
    profile: auditor
  - name: coder
    profile: coder
  - name: keeper
    profile: keeper
",
        server = postgres.port,
        password = password_file.display(),
        socket_dir = postgres.socket_dir().display(),
    );
    let guardd = Guardd::start(&dir, &policy, "guard-routing-test");
    wait_listening(guard4, &guardd);
    wait_listening(guard6, &guardd);
    wait_listening(vault, &guardd);

    // `guardctl status` says that the kernel routes agents' connections.
    let status = guardd.status();
    for program in ["route_connect4", "route_connect6"] {
        let hook = status["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == program)
            .unwrap_or_else(|| panic!("{program} in {status}"));
        assert_eq!(hook["attached"], true, "{status}");
    }
    let routed = |name: &str| {
        status["databases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| d["routed"] == true)
    };
    assert_eq!(
        (routed("shop"), routed("shop6")),
        (Some(true), Some(true)),
        "{status}"
    );

    let server = postgres.port;
    let direct_url = |host: &str| format!("postgres://guard@{host}:{server}/postgres");
    let as_agent = |agent: &str| psql_as(&guardd, &bin_dir, agent);

    // Each address form of the server reaches the analyst's guard.
    for (host, reason) in [
        ("127.0.0.1", "guard: analysts never drop tables"),
        ("[::ffff:127.0.0.1]", "guard: analysts never drop tables"),
        ("[::1]", "guard: not over IPv6 either"),
    ] {
        let (ok, _, err) = psql(&mut as_agent("analyst"), &direct_url(host), "DROP TABLE t");
        assert!(!ok && err.contains(reason), "{host}: {err}");
        assert_eq!(direct("SELECT count(*) FROM t"), "3", "{host}");
        let (ok, out, err) = psql(
            &mut as_agent("analyst"),
            &direct_url(host),
            "SELECT count(*) FROM t",
        );
        assert!(ok && out == "3", "{host}: {err}");
    }
    let read = statement(&guardd, "analyst", "SELECT count(*) FROM t");
    assert_eq!(read["target"], "shop/postgres", "{read}");

    // Untouched: a process in no session, and an agent whose profile has
    // no rules for the database, reach the server itself.
    direct("CREATE TABLE scratch_a (id int); CREATE TABLE scratch_b (id int)");
    let (ok, _, err) = psql(
        &mut Command::new(bin_dir.join("psql")),
        &direct_url("127.0.0.1"),
        "DROP TABLE scratch_a",
    );
    assert!(ok, "untagged: {err}");
    let (ok, _, err) = psql(
        &mut as_agent("coder"),
        &direct_url("[::1]"),
        "DROP TABLE scratch_b",
    );
    assert!(ok, "coder: {err}");
    assert!(
        statements(&guardd)
            .iter()
            .all(|r| r["statement"]["normalized"] != "DROP TABLE scratch_a"
                && r["statement"]["normalized"] != "DROP TABLE scratch_b"),
        "the guard saw statements it was not routed"
    );

    // The server's unix-domain socket cannot be routed: an agent whose
    // profile guards the database is refused there, by the socket's path
    // or through a symlink; the others connect as before.
    let socket_dir = postgres.socket_dir().display().to_string();
    let socket = format!("{socket_dir}/.s.PGSQL.{server}");
    let link = dir.join("socket-link");
    std::os::unix::fs::symlink(&socket_dir, &link).unwrap();
    let unix_url = |host: &str| format!("postgres://guard@/postgres?host={host}&port={server}");
    for host in [socket_dir.clone(), link.display().to_string()] {
        let (ok, _, err) = psql(&mut as_agent("analyst"), &unix_url(&host), "SELECT 1");
        assert!(
            !ok && err.contains("Operation not permitted"),
            "{host}: {err}"
        );
    }
    let (ok, out, err) = psql(
        &mut Command::new(bin_dir.join("psql")),
        &unix_url(&socket_dir),
        "SELECT 1",
    );
    assert!(ok && out == "1", "untagged: {err}");
    let (ok, out, err) = psql(&mut as_agent("coder"), &unix_url(&socket_dir), "SELECT 1");
    assert!(ok && out == "1", "coder: {err}");
    let refused = guardd.wait_for_record("the unix socket refused", |r| {
        r["hook"] == "unix_stream_connect"
    });
    assert_eq!(
        (
            &refused["verdict"],
            &refused["rule"],
            &refused["target"],
            &refused["protocol"],
            &refused["agent"]
        ),
        (
            &"deny".into(),
            &"statement-guard-only".into(),
            &socket.clone().into(),
            &"unix".into(),
            &"analyst".into()
        ),
        "{refused}"
    );
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "database `shop` only through its statement guard: connect to 127.0.0.1:{guard4}"
        )),
        "{refused}"
    );
    let shop = status["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "shop")
        .unwrap();
    assert_eq!(
        shop["unix_sockets_refused"],
        serde_json::json!([socket]),
        "{status}"
    );

    // Two agents at once, on one server address: each judged by its own
    // session, which the records name.
    let sql = "SELECT count(*) FROM t, pg_sleep(1)";
    let spawn = |agent: &str| {
        as_agent(agent)
            .args([
                &direct_url("127.0.0.1"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-c",
                "DELETE FROM t WHERE id = 1; ",
                "-c",
                sql,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (analyst, auditor) = (spawn("analyst"), spawn("auditor"));
    let (analyst, auditor) = (
        analyst.wait_with_output().unwrap(),
        auditor.wait_with_output().unwrap(),
    );
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(analyst.status.success(), "analyst: {}", text(&analyst));
    assert!(
        text(&auditor).contains("guard:"),
        "auditor's DELETE is refused: {}",
        text(&auditor)
    );
    assert_eq!(direct("SELECT count(*) FROM t"), "2");
    let session_of = |profile: &str| {
        let record = statement(&guardd, profile, "SELECT count(*) FROM t, pg_sleep($1)");
        record["session"].as_str().expect("a session").to_string()
    };
    let deleted = statement(&guardd, "auditor", "DELETE FROM t WHERE id = $1");
    assert_eq!(deleted["verdict"], "deny", "{deleted}");
    assert_eq!(deleted["agent"], "auditor", "{deleted}");
    assert_ne!(session_of("analyst"), session_of("auditor"));

    // The guard logs in for the keeper with the credentials it holds; the
    // client's login name is only recorded.
    let (ok, out, err) = psql(
        &mut as_agent("keeper"),
        &direct_url("127.0.0.1"),
        "SELECT current_user",
    );
    assert!(ok && out == "app", "{err}");
    let login = statement(&guardd, "keeper", "SELECT current_user");
    assert_eq!(login["statement"]["role"], "app", "{login}");
    assert_eq!(login["statement"]["user"], "guard", "{login}");

    // No agent may read the credentials, kill the guard or trace it.
    let probe = |agent: &str, args: &[&str]| guardd.probe(agent, &dir, args).errno;
    let password = password_file.display().to_string();
    assert_eq!(
        probe("keeper", &["read", &password]),
        Some(guard_tests::EPERM)
    );
    assert_eq!(
        probe("coder", &["read", &password]),
        Some(guard_tests::EPERM)
    );
    assert_eq!(
        probe("coder", &["open-write", &password]),
        Some(guard_tests::EPERM)
    );
    let read = guardd.wait_for_record("the read refused", |r| r["action"] == "open_read");
    assert_eq!(
        (
            &read["verdict"],
            &read["rule"],
            &read["hook"],
            &read["target"]
        ),
        (
            &"deny".into(),
            &"self-protection".into(),
            &"file_open".into(),
            &password.clone().into()
        ),
        "{read}"
    );
    // A file that is no secret is read as before.
    let readable = dir.join("readable");
    fs::write(&readable, "").unwrap();
    assert_eq!(
        probe("coder", &["read", &readable.display().to_string()]),
        None
    );
    let guard = guard_pid().expect("a guard-pg").to_string();
    assert_eq!(
        probe("keeper", &["kill", &guard, "9"]),
        Some(guard_tests::EPERM)
    );
    assert_eq!(
        probe("keeper", &["ptrace", &guard]),
        Some(guard_tests::EPERM)
    );
    assert_eq!(guard_pid().map(|p| p.to_string()), Some(guard));
}

/// A database server named by host name: guardd resolves the name (here
/// with a DNS server of the test's) and routes each address it resolves
/// to; when the answer changes, the route follows it.
#[test]
fn a_server_named_by_host_name_is_routed_on_each_address_it_resolves_to() {
    let postgres = Postgres::start_with(&["listen_addresses=127.0.0.1,127.0.0.2"]);
    let bin_dir = postgres.bin_dir.clone();
    let direct = |sql: &str| direct(&postgres, sql);
    direct("CREATE TABLE t (id int); CREATE TABLE scratch (id int)");
    let answer = std::sync::Arc::new(std::sync::Mutex::new(std::net::Ipv4Addr::new(127, 0, 0, 1)));
    crate::network::serve_dns("127.0.0.3:53", "db.test.", answer.clone());
    // The guard resolves the server's name itself, with the system's
    // resolver: the same DNS server, for this test.
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            match &self.0 {
                Some(text) => fs::write("/etc/resolv.conf", text).unwrap(),
                None => drop(fs::remove_file("/etc/resolv.conf")),
            }
        }
    }
    let _restore = Restore(fs::read_to_string("/etc/resolv.conf").ok());
    fs::write("/etc/resolv.conf", "nameserver 127.0.0.3\n").unwrap();

    let guard = free_port();
    let policy = format!(
        "\
databases:
  - name: shop
    server: db.test:{server}
    listen: 127.0.0.1:{guard}
profiles:
  - name: analyst
    default: allow
    databases:
      - database: shop
        default: allow
        deny:
          - id: no-drop
            classes: [drop]
            message: analysts never drop tables
agents:
  - name: analyst
    profile: analyst
",
        server = postgres.port,
    );
    let e = env();
    let dir = e.path("database-host-routing");
    fs::create_dir_all(&dir).unwrap();
    let guardd = Guardd::start_with(
        &dir,
        &policy,
        "guard-db-hosts-test",
        &["--dns-server", "127.0.0.3"],
        &[],
    );
    wait_listening(guard, &guardd);
    let routed_to = |addr: &str| crate::network::wait_resolved(&guardd, "db.test", addr);
    let analyst = |host: &str, sql: &str| {
        psql(
            &mut psql_as(&guardd, &bin_dir, "analyst"),
            &format!("postgres://guard@{host}:{}/postgres", postgres.port),
            sql,
        )
    };
    routed_to("127.0.0.1");
    assert_eq!(
        guardd.status()["databases"][0]["routed"],
        true,
        "{}",
        guardd.status()
    );
    let (ok, _, err) = analyst("127.0.0.1", "DROP TABLE t");
    assert!(
        !ok && err.contains("guard: analysts never drop tables"),
        "{err}"
    );

    // The name moves to 127.0.0.2: the route moves with it.
    *answer.lock().unwrap() = std::net::Ipv4Addr::new(127, 0, 0, 2);
    routed_to("127.0.0.2");
    let (ok, _, err) = analyst("127.0.0.2", "DROP TABLE t");
    assert!(
        !ok && err.contains("guard: analysts never drop tables"),
        "{err}"
    );
    let (ok, _, err) = analyst("127.0.0.1", "DROP TABLE scratch");
    assert!(ok, "127.0.0.1 is no longer the server's: {err}");
    assert_eq!(direct("SELECT count(*) FROM t"), "0");
}
