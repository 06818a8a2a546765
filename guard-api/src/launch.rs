//! `guardctl run`: start a command as an agent.
//!
//! The child joins the agent's cgroup between fork and exec (it writes `0`,
//! meaning "myself", to the cgroup's `cgroup.procs`), so the command runs
//! tagged from its first instruction and everything it starts inherits the
//! tag. Standard streams are inherited; signals sent to `guardctl` are
//! forwarded; its exit status is the command's. With [`RunAs`] (root's
//! `guardctl run --user`), the child drops to that user after joining.

use std::{
    ffi::{CString, OsString},
    fs::OpenOptions,
    io,
    os::unix::{
        io::AsRawFd,
        process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::Command,
};

use nix::{
    sys::signal::{self, SigSet, SigmaskHow, Signal},
    unistd::{Gid, Uid, User},
};

/// Signals forwarded to the agent. A signal the terminal sends to the whole
/// foreground process group (Ctrl-C) already reaches the agent and is not sent
/// twice.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "cannot open {path}: {source} (guardctl run needs root, or write access to the session's cgroup)"
    )]
    Procs {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("cannot start {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("no user `{0}` in the user database")]
    NoUser(String),
    #[error("--user needs root (sudo guardctl run --user ...); without it the command runs as you")]
    NotRoot,
    #[error("cannot look up user `{user}`: {source}")]
    User { user: String, source: nix::Error },
    #[error("waiting for the agent: {0}")]
    Wait(io::Error),
}

/// The user a command runs as instead of root (`guardctl run --user`).
#[derive(Clone, Debug)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, from the group database.
    pub groups: Vec<Gid>,
    pub home: PathBuf,
}

impl RunAs {
    /// Looks `user` (a name or a numeric uid) up in the user and group
    /// databases. Only root may run a command as another user.
    pub fn lookup(user: &str) -> Result<Self, LaunchError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LaunchError::NotRoot);
        }
        let failed = |source| LaunchError::User {
            user: user.into(),
            source,
        };
        let found = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(user),
        }
        .map_err(failed)?
        .ok_or_else(|| LaunchError::NoUser(user.into()))?;
        let name =
            CString::new(found.name.as_str()).map_err(|_| LaunchError::NoUser(user.into()))?;
        let groups = nix::unistd::getgrouplist(&name, found.gid).map_err(failed)?;
        Ok(Self {
            name: found.name,
            uid: found.uid,
            gid: found.gid,
            groups,
            home: found.dir,
        })
    }

    /// Makes `cmd`'s child this user between fork and exec, after the
    /// closures registered before (joining the cgroup, which needs root):
    /// its groups, then its gid, then its uid. Leaving uid 0 clears the
    /// permitted, effective and ambient capabilities; the inheritable ones
    /// are cleared too, so none reaches a program with file capabilities.
    fn apply(&self, cmd: &mut Command) {
        cmd.env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: runs between fork and exec and makes only system calls.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                clear_capabilities()
            });
        }
    }
}

/// Clears every capability set of the calling thread (capset(2), version 3).
fn clear_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: both pointers are valid for the call; version 3 takes two
    // data structs.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a prctl without pointers.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `command` in session `session`, whose cgroup's `cgroup.procs` is
/// `procs_path`, with GUARD_SESSION and GUARD_WHY (its reasons file) set,
/// as `run_as` if given; returns the exit code to exit with.
pub fn run(
    procs_path: &Path,
    session: &str,
    why_file: Option<&Path>,
    run_as: Option<&RunAs>,
    command: &[OsString],
) -> Result<i32, LaunchError> {
    let mut forwarded = SigSet::empty();
    for sig in FORWARDED {
        forwarded.add(sig);
    }
    // Block the forwarded signals here so the forwarder thread can wait for
    // them; the child unblocks them before exec.
    signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), None)
        .map_err(|e| LaunchError::Wait(e.into()))?;

    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).env("GUARD_SESSION", session);
    if let Some(why) = why_file {
        cmd.env("GUARD_WHY", why);
    }
    join_cgroup_on_exec(&mut cmd, procs_path)?;
    if let Some(run_as) = run_as {
        run_as.apply(&mut cmd);
    }
    // SAFETY: runs between fork and exec; sigprocmask is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&forwarded), None)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        command: command[0].to_string_lossy().into_owned(),
        source,
    })?;

    let child_pid = child.id() as libc::pid_t;
    std::thread::spawn(move || forward_signals(forwarded, child_pid));

    let status = child.wait().map_err(LaunchError::Wait)?;
    if let Some(code) = status.code() {
        return Ok(code);
    }
    let sig = status.signal().unwrap_or(libc::SIGKILL);
    // Die the same way, so a caller sees the same status; 128+N otherwise.
    if let Ok(sig) = Signal::try_from(sig) {
        // SAFETY: resetting to the default action is always sound.
        let _ = unsafe { signal::signal(sig, signal::SigHandler::SigDfl) };
        let mut set = SigSet::empty();
        set.add(sig);
        let _ = signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
        let _ = signal::raise(sig);
    }
    Ok(128 + sig)
}

/// Makes `cmd`'s child join the cgroup whose `cgroup.procs` is `procs_path`
/// after fork and before exec: it writes `0` ("myself"), so the program runs
/// in the cgroup from its first instruction.
pub fn join_cgroup_on_exec(cmd: &mut Command, procs_path: &Path) -> Result<(), LaunchError> {
    let procs = OpenOptions::new()
        .write(true)
        .open(procs_path)
        .map_err(|source| LaunchError::Procs {
            path: procs_path.to_path_buf(),
            source,
        })?;
    // SAFETY: runs between fork and exec and only calls write(2). The file
    // moves into the closure, so its descriptor stays open until exec closes it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

fn forward_signals(set: SigSet, child: libc::pid_t) {
    loop {
        // SAFETY: zeroed siginfo_t is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid set and out-pointer.
        let sig = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
        if sig < 0 {
            continue;
        }
        // The terminal signals the whole foreground group itself.
        if info.si_code == libc::SI_KERNEL {
            continue;
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child, sig) };
    }
}
