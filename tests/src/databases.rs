//! The statement guard's test binary (`statement-guard`), started for the
//! database tests and the database benchmark.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use crate::{bin, collector::free_port};

/// `statement-guard` on a free loopback port: every connection gets
/// `profile`'s rules for `database` of the policy file; records go to
/// `records`.
pub struct StatementGuard {
    child: Child,
    pub port: u16,
}

impl StatementGuard {
    /// Writes `policy` to `dir` with `LISTEN` replaced by a free loopback
    /// port, and starts the guard on that port.
    pub fn start(
        dir: &Path,
        policy: &str,
        profile: &str,
        database: &str,
        records: Stdio,
    ) -> StatementGuard {
        let port = free_port();
        let path = dir.join("policy.yaml");
        std::fs::write(&path, policy.replace("LISTEN", &port.to_string())).expect("policy");
        let mut child = Command::new(bin("statement-guard"))
            .arg(&path)
            .args([profile, database])
            .stdout(records)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the statement guard");
        let mut line = String::new();
        BufReader::new(child.stderr.take().expect("stderr"))
            .read_line(&mut line)
            .expect("the guard's first line");
        assert!(line.contains("listening"), "statement-guard: {line}");
        StatementGuard { child, port }
    }

    /// A URL for PostgreSQL's clients, through the guard.
    pub fn url(&self) -> String {
        format!("postgres://guard@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for StatementGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
