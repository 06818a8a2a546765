//! `guardctl run`: start a command as an agent.
//!
//! The child joins the agent's cgroup between fork and exec (it writes `0`,
//! meaning "myself", to the cgroup's `cgroup.procs`), so the command runs
//! tagged from its first instruction and everything it starts inherits the
//! tag. Standard streams are inherited; signals sent to `guardctl` are
//! forwarded; its exit status is the command's.

use std::{
    ffi::OsString,
    fs::OpenOptions,
    io,
    os::unix::{
        io::AsRawFd,
        process::{CommandExt, ExitStatusExt},
    },
    path::Path,
    process::Command,
};

use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};

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
    #[error("waiting for the agent: {0}")]
    Wait(io::Error),
}

/// Runs `command` in session `session`, whose cgroup's `cgroup.procs` is
/// `procs_path`, with GUARD_SESSION and GUARD_WHY (its reasons file) set;
/// returns the exit code to exit with.
pub fn run(
    procs_path: &Path,
    session: &str,
    why_file: Option<&Path>,
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
