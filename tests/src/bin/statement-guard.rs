//! Runs Guard's statement guard (`guard-pg`) for the database tests without
//! guardd: every connection gets one profile's rules for one database of a
//! policy file (on that database's `listen` address), and each statement's
//! record is printed as a JSON line.

use std::{io::Write as _, sync::Arc};

use guard_pg::{Approval, Authority, Client, ConnectionPolicy, Decision, StatementRecord};

struct OneProfile {
    policy: ConnectionPolicy,
    /// To the thread that prints records: a write per record would cost
    /// the connections a system call each.
    records: std::sync::mpsc::Sender<StatementRecord>,
}

impl Authority for OneProfile {
    fn connection(&self, _client: &Client) -> Decision {
        let policy = self.policy.clone();
        Box::pin(async move { Ok(policy) })
    }

    /// No one approves anything here.
    fn approval(&self, _connection: u64, _fingerprint: &str) -> Approval {
        Box::pin(async { None })
    }

    fn record(&self, record: StatementRecord) {
        self.records.send(record).expect("the printing thread runs");
    }

    fn closed(&self, _connection: u64) {}
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, policy, profile, database] = &args[..] else {
        eprintln!("usage: statement-guard POLICY PROFILE DATABASE");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(policy).expect("read the policy");
    let parsed = guard_policy::policy::parse(&text).unwrap_or_else(|e| panic!("{policy}: {e}"));
    let entry = parsed
        .databases
        .iter()
        .find(|d| &d.name == database)
        .expect("the database is in the policy");
    let (server, listen) = (entry.server.clone(), entry.listen);
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let tls = guard_pg::tls::for_database(entry, read).unwrap_or_else(|e| panic!("TLS: {e}"));
    let login =
        guard_pg::login::for_database(entry, read).unwrap_or_else(|e| panic!("credentials: {e}"));
    let policy =
        ConnectionPolicy::of(&parsed, 0, profile, database).unwrap_or_else(|e| panic!("{e}"));
    let (records, printed) = std::sync::mpsc::channel::<StatementRecord>();
    std::thread::spawn(move || {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        // Write what has arrived, then flush while waiting for more.
        while let Ok(first) = printed.recv() {
            let mut next = Some(first);
            while let Some(record) = next {
                serde_json::to_writer(&mut out, &record).expect("write a record");
                out.write_all(b"\n").expect("write a record");
                next = printed.try_recv().ok();
            }
            out.flush().expect("flush records");
        }
    });
    let authority = OneProfile { records, policy };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        eprintln!(
            "statement guard listening on {}",
            listener.local_addr().expect("address")
        );
        guard_pg::proxy::serve(listener, server, tls, login, Arc::new(authority))
            .await
            .expect("serve");
    });
}
