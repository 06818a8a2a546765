//! The statement guard's cost, measured on this host (no VM): `pgbench -S`
//! (read-only, 8 clients) against a PostgreSQL server on loopback,
//! directly, through a plain relay (what any proxy costs: bytes copied
//! between two sockets, nothing read) and through the guard, in the same
//! run; and the cost of parsing and classifying one statement. Prints a
//! Markdown report; `cargo xtask db-bench` writes it to bench/databases.md.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use guard_tests::{collector::Postgres, databases::StatementGuard};

const CLIENTS: &str = "8";
const SECONDS: &str = "15";

/// One pgbench run: transactions per second and latencies in µs.
struct Run {
    tps: f64,
    p50: f64,
    p99: f64,
}

fn pgbench(postgres: &Postgres, url: &str, mode: &str, logs: &Path) -> Run {
    let _ = std::fs::remove_dir_all(logs);
    std::fs::create_dir_all(logs).expect("log dir");
    let out = Command::new(postgres.bin_dir.join("pgbench"))
        .current_dir(logs)
        .args([
            "-n", "-S", "-M", mode, "-c", CLIENTS, "-j", "2", "-T", SECONDS, "-l",
        ])
        .arg(url)
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("pgbench reports tps");
    // Each log line: client, transaction, latency in µs, ...
    let mut latencies: Vec<f64> = Vec::new();
    for entry in std::fs::read_dir(logs).expect("logs").flatten() {
        let file = std::fs::File::open(entry.path()).expect("log");
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|f| f.parse().ok()) {
                latencies.push(us);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Run {
        tps,
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// A relay that copies bytes between each client and `server` and reads
/// none of them, on one thread: the floor of any proxy's cost. Returns its
/// port.
fn plain_relay(server: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let port = listener.local_addr().expect("relay address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((mut client, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(server).await?;
                    client.set_nodelay(true)?;
                    server.set_nodelay(true)?;
                    tokio::io::copy_bidirectional(&mut client, &mut server).await
                });
            }
        });
    });
    port
}

/// Microseconds to parse and classify each statement, over `rounds`.
fn classify_cost(sql: &str, rounds: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(guard_sql::classify(std::hint::black_box(sql)).expect("parses"));
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

fn main() {
    let postgres = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = format!(
        "databases:\n  - name: bench\n    server: 127.0.0.1:{}\n    listen: 127.0.0.1:LISTEN\nprofiles:\n  - name: reader\n    default: allow\n    databases:\n      - database: bench\n        default: deny\n        allow:\n          - id: reads\n            classes: [read, transaction, setting]\nagents: []\n",
        postgres.port
    );
    let guard = StatementGuard::start(dir.path(), &policy, "reader", "bench", Stdio::null());
    let init = Command::new(postgres.bin_dir.join("pgbench"))
        .args(["-i", "-q", "-s", "10"])
        .arg(&postgres.url)
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let guarded_url = guard.url();
    let relay_url = postgres.url.replace(
        &format!(":{}/", postgres.port),
        &format!(":{}/", plain_relay(format!("127.0.0.1:{}", postgres.port))),
    );
    assert_ne!(relay_url, postgres.url, "the relay's URL");
    let logs = dir.path().join("logs");

    println!("# The statement guard's cost\n");
    println!(
        "`pgbench -n -S -c {CLIENTS} -j 2 -T {SECONDS}` (scale 10) against PostgreSQL on loopback, measured in one run by `cargo xtask db-bench` on {} cores: directly, through a plain relay (bytes copied between client and server, none read: what any proxy costs) and through the guard (one rule set; every statement parsed, classified, judged and recorded). pgbench, the server and the relay or the guard share those cores, so a proxy's every system call is taken from the server's time.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| protocol | direct TPS | relay TPS | guarded TPS | guarded / direct (target ≥ 0.8) | relay / direct | guarded / relay | direct p50 / p99 µs | guarded p50 / p99 µs | added p50 / p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for mode in ["simple", "extended", "prepared"] {
        let direct = pgbench(&postgres, &postgres.url, mode, &logs);
        let relay = pgbench(&postgres, &relay_url, mode, &logs);
        let guarded = pgbench(&postgres, &guarded_url, mode, &logs);
        println!(
            "| {mode} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} |",
            direct.tps,
            relay.tps,
            guarded.tps,
            guarded.tps / direct.tps,
            relay.tps / direct.tps,
            guarded.tps / relay.tps,
            direct.p50,
            direct.p99,
            guarded.p50,
            guarded.p99,
            guarded.p50 - direct.p50,
            guarded.p99 - direct.p99,
        );
    }
    println!(
        "\nParsing and classifying one statement (`guard_sql::classify`: parse, walk, normalize, fingerprint), target < 50 µs:\n"
    );
    println!("| statement | µs |");
    println!("|---|---|");
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
        "UPDATE pgbench_accounts SET abalance = abalance + 12 WHERE aid = 48213",
        "SELECT c.id, c.email, sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.created > now() - interval '30 days' GROUP BY c.id, c.email ORDER BY 3 DESC LIMIT 20",
        "WITH gone AS (DELETE FROM sessions WHERE expires < now() RETURNING user_id) INSERT INTO audit_log (what, user_id) SELECT 'expired', user_id FROM gone",
    ] {
        println!("| `{sql}` | {:.1} |", classify_cost(sql, 2000));
    }
    drop(guard);
}
