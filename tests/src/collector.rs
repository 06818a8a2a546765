//! Harness for guard-collector: start it on a free loopback port with a
//! store, kill and restart it, query it with guardctl; and a real
//! PostgreSQL server on loopback for the shared store.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::bin;

/// A free TCP port on loopback (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until `path`'s text contains `needle`; panics with the text after
/// `timeout`.
pub fn wait_for_log(path: &Path, needle: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "no `{needle}` in {} after {timeout:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` from a Prometheus endpoint at `addr` (host:port): the
/// exposition text.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    response
}

/// A test fleet's certificate authority and certificates, made by
/// `guardctl pki` in a directory.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Makes the CA (`dir/ca.pem`, `dir/ca.key`).
    pub fn new(dir: &Path) -> Pki {
        let pki = Pki { dir: dir.into() };
        pki.guardctl(&["ca", dir.to_str().unwrap()]);
        pki
    }

    /// Issues `name`'s certificate with `role`, also for `addresses`.
    pub fn issue(&self, name: &str, role: &str, addresses: &[&str]) {
        let mut args = vec![
            "issue",
            name,
            "--role",
            role,
            "--ca",
            self.dir.to_str().unwrap(),
        ];
        for address in addresses {
            args.extend(["--address", address]);
        }
        self.guardctl(&args);
    }

    /// `--tls-cert`, `--tls-key` and `--tls-ca` for `name`'s certificate.
    pub fn args(&self, name: &str) -> Vec<String> {
        let file = |name: String| self.dir.join(name).to_str().unwrap().to_string();
        vec![
            "--tls-cert".into(),
            file(format!("{name}.pem")),
            "--tls-key".into(),
            file(format!("{name}.key")),
            "--tls-ca".into(),
            file("ca.pem".into()),
        ]
    }

    fn guardctl(&self, args: &[&str]) {
        let output = Command::new(bin("guardctl"))
            .arg("pki")
            .args(args)
            .output()
            .expect("run guardctl pki");
        assert!(
            output.status.success(),
            "guardctl pki {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A running guard-collector.
pub struct Collector {
    child: Option<Child>,
    /// Its API address, host:port.
    pub addr: String,
    /// Its metrics endpoint, host:port.
    pub metrics: String,
    pub store: String,
    pub log: PathBuf,
    /// More arguments, from the next [`Collector::restart`] on.
    pub args: Vec<String>,
    /// More arguments for guardctl (a reader's TLS files).
    pub guardctl_args: Vec<String>,
}

impl Collector {
    /// Starts a collector with `store` (sqlite:PATH or a PostgreSQL URL),
    /// logging to `dir/collector.log`, and waits until it serves.
    pub fn start(dir: &Path, store: &str) -> Collector {
        Collector::start_logging_to(dir.join("collector.log"), store)
    }

    /// Starts a collector whose stderr is `log` (which may be a device such
    /// as /dev/full), and waits until it accepts connections.
    pub fn start_logging_to(log: PathBuf, store: &str) -> Collector {
        Collector::start_with(log, store, Vec::new())
    }

    /// Starts a collector with more arguments: plaintext on loopback unless
    /// they give TLS files.
    pub fn start_with(log: PathBuf, store: &str, args: Vec<String>) -> Collector {
        let mut collector = Collector {
            child: None,
            addr: format!("127.0.0.1:{}", free_port()),
            metrics: format!("127.0.0.1:{}", free_port()),
            store: store.into(),
            log,
            args,
            guardctl_args: Vec::new(),
        };
        collector.restart();
        collector
    }

    /// Starts it (again) on the same address and store.
    pub fn restart(&mut self) {
        self.kill();
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open collector log");
        use std::io::Write as _;
        let _ = writeln!(log, "--- start");
        let child = Command::new(bin("guard-collector"))
            .args(["--listen", &self.addr, "--store", &self.store])
            .args(["--metrics-listen", &self.metrics])
            .args(&self.args)
            .args((!self.args.iter().any(|a| a == "--tls-cert")).then_some("--plaintext"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start guard-collector");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(&self.addr).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("wait for guard-collector"));
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(20),
                "guard-collector did not start ({exited:?}):\n{}",
                self.log_of_this_run()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the collector logged since it last started, if its log is a
    /// file.
    pub fn log_of_this_run(&self) -> String {
        if !fs::metadata(&self.log).is_ok_and(|m| m.is_file()) {
            return String::new();
        }
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.rsplit("--- start").next().unwrap_or("").to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the collector runs").id()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `guardctl ARGS --server ADDR`.
    pub fn guardctl(&self, args: &[&str]) -> Output {
        Command::new(bin("guardctl"))
            .args(args)
            .args(["--server", &self.addr])
            .args(&self.guardctl_args)
            .output()
            .expect("run guardctl")
    }

    /// `guardctl audit query -o json ARGS`: the entries, one JSON value each.
    pub fn query(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["audit", "query", "-o", "json"];
        all.extend_from_slice(args);
        let output = self.guardctl(&all);
        assert!(
            output.status.success(),
            "guardctl {all:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits until the collector holds `host`'s stream up to `last`, and
    /// checks that it holds every sequence number from 1 on, once (lines
    /// written after `last` may be there too); returns the last.
    pub fn wait_for_whole_stream(&self, host: &str, last: u64, timeout: Duration) -> u64 {
        self.wait_for_seq(host, last, timeout);
        let seqs: Vec<u64> = self
            .query(&["--host", host])
            .iter()
            .filter_map(|r| r["seq"].as_u64())
            .collect();
        let stored_last = *seqs.last().expect("stored lines");
        assert!(stored_last >= last);
        assert_eq!(
            seqs,
            (1..=stored_last).collect::<Vec<_>>(),
            "complete, no duplicates"
        );
        stored_last
    }

    /// Waits until the collector holds `host`'s stream up to `seq`.
    pub fn wait_for_seq(&self, host: &str, seq: u64, timeout: Duration) {
        let start = Instant::now();
        loop {
            let output = self.guardctl(&["audit", "stats", "--host", host]);
            let text = String::from_utf8_lossy(&output.stdout);
            let next = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("host {host}: next sequence ")))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            if next > seq {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "the collector holds {host} only up to {} after {timeout:?}",
                next.saturating_sub(1)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL server of its own on loopback, in a temporary directory.
pub struct Postgres {
    child: Child,
    /// The server's directory, where its unix-domain socket is too.
    dir: tempfile::TempDir,
    pub url: String,
    pub port: u16,
    /// Where the server's programs are, `psql` and `pgbench` among them.
    pub bin_dir: PathBuf,
}

/// The `postgres` user when this process is root (PostgreSQL refuses to
/// run as root): its uid and gid.
pub fn postgres_user() -> Option<(u32, u32)> {
    (unsafe { libc::geteuid() } == 0).then(|| {
        // SAFETY: a NUL-terminated name; the entry is read at once.
        let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
        assert!(
            !entry.is_null(),
            "no `postgres` user (the package makes it)"
        );
        unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
    })
}

impl Postgres {
    /// The directory of the server's unix-domain socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn start() -> Postgres {
        Self::start_with(&[])
    }

    /// A server with these extra `name=value` settings.
    pub fn start_with(settings: &[&str]) -> Postgres {
        let bin_dir = fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (cargo xtask setup installs it)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("an initdb in /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let user = postgres_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        // A copy of the cluster initdb made for the first server of this
        // process: initdb is most of a start (and slow in the VMs).
        let copied = Command::new("cp")
            .arg("-a")
            .arg(template(&bin_dir, user))
            .arg(&data)
            .output()
            .expect("run cp");
        assert!(
            copied.status.success(),
            "copy the cluster: {}",
            String::from_utf8_lossy(&copied.stderr)
        );
        let port = free_port();
        let log = dir.path().join("postgres.log");
        let child = server_command(&bin_dir, "postgres", user, dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off"])
            .args(settings.iter().flat_map(|s| ["-c", s]))
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(&log).expect("log")))
            .spawn()
            .expect("start postgres");
        wait_for_log(
            &log,
            "database system is ready to accept connections",
            Duration::from_secs(30),
        );
        Postgres {
            child,
            dir,
            url: format!("postgres://guard@127.0.0.1:{port}/postgres"),
            port,
            bin_dir,
        }
    }
}

/// One of PostgreSQL's programs, run as `user` (when running as root) in
/// `dir`.
fn server_command(bin_dir: &Path, program: &str, user: Option<(u32, u32)>, dir: &Path) -> Command {
    let mut command = Command::new(bin_dir.join(program));
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt as _;
        command.uid(uid).gid(gid);
    }
    command.current_dir(dir);
    command
}

/// A fresh cluster, made by initdb once per process (owned by `user` when
/// running as root) and removed when the process exits.
fn template(bin_dir: &Path, user: Option<(u32, u32)>) -> &'static Path {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    extern "C" fn remove_template() {
        if let Some(data) = TEMPLATE.get().and_then(|d| d.parent()) {
            let _ = fs::remove_dir_all(data);
        }
    }
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.join("data");
        let init = server_command(bin_dir, "initdb", user, &dir)
            .args(["--auth=trust", "--username=guard", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        // SAFETY: registers a function that only removes a directory.
        unsafe { libc::atexit(remove_template) };
        data
    })
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}
