//! `guardctl run`: start a command as an agent.
//!
//! The child waits between fork and exec until guardd has moved it into the
//! session's cgroup (it sends guardd its pid through the launcher and waits
//! for the go-ahead), so the command runs tagged from its first instruction,
//! everything it starts inherits the tag, and the launcher needs no write
//! access to Guard's cgroups. Standard streams are inherited; signals sent
//! to `guardctl` are forwarded; its exit status is the command's. With
//! [`RunAs`] (root's `guardctl run --user`), the child drops to that user
//! after it was placed.

use std::{
    ffi::{CString, OsString},
    fs::OpenOptions,
    io::{self, Read, Write},
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
    #[error("cannot open {path}: {source}")]
    Procs {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("cannot start {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("guardd did not place the command in its session: {0}")]
    Place(String),
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
    /// closures registered before (being placed in the session: guardd
    /// places only a process with the launcher's uid): its groups, then its
    /// gid, then its uid. Leaving uid 0 clears the permitted, effective and
    /// ambient capabilities; the inheritable ones are cleared too, so none
    /// reaches a program with file capabilities.
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

/// Runs `command` in session `session`, with GUARD_SESSION and GUARD_WHY
/// (its reasons file) set, as `run_as` if given; `place` asks guardd to move
/// the command's process (its pid) into the session. Returns the exit code
/// to exit with.
pub fn run(
    session: &str,
    why_file: Option<&Path>,
    run_as: Option<&RunAs>,
    command: &[OsString],
    place: impl FnOnce(u32) -> Result<(), String> + Send + 'static,
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
    let placing = hold_until_placed(&mut cmd, place).map_err(LaunchError::Wait)?;
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
    let spawned = cmd.spawn();
    // The launcher's ends of the pipes close with `cmd`, so that the placing
    // thread sees the end of a child that never sent its pid.
    drop(cmd);
    let placed = placing
        .join()
        .unwrap_or_else(|_| Err("the placing thread failed".into()));
    let mut child = match (spawned, placed) {
        (Ok(mut child), Err(reason)) => {
            // It ended without running the command.
            let _ = child.wait();
            return Err(LaunchError::Place(reason));
        }
        // No child (a failed fork), so nothing was placed either.
        (Err(source), _) => {
            return Err(LaunchError::Spawn {
                command: command[0].to_string_lossy().into_owned(),
                source,
            });
        }
        (Ok(child), Ok(())) => child,
    };

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

/// Makes `cmd`'s child wait between fork and exec until `place` has moved
/// it into its session: the child writes its pid to one pipe and reads one
/// byte from another; a thread (`spawn` itself waits for the exec) reads
/// the pid, calls `place` and writes the byte. When `place` fails the byte
/// never comes, the child exits (126) without executing the command, and
/// the thread returns why.
fn hold_until_placed(
    cmd: &mut Command,
    place: impl FnOnce(u32) -> Result<(), String> + Send + 'static,
) -> io::Result<std::thread::JoinHandle<Result<(), String>>> {
    let (mut pid_reader, pid_writer) = io::pipe()?;
    let (go_reader, mut go_writer) = io::pipe()?;
    let (launcher_ends, child_ends) = (
        [pid_reader.as_raw_fd(), go_writer.as_raw_fd()],
        (pid_writer, go_reader),
    );
    let placing = std::thread::spawn(move || {
        let mut pid = [0; 4];
        pid_reader
            .read_exact(&mut pid)
            .map_err(|_| "the command's process ended before it was placed".to_string())?;
        place(u32::from_ne_bytes(pid))?;
        go_writer
            .write_all(&[1])
            .map_err(|e| format!("the command's process is gone: {e}"))
    });
    // SAFETY: runs between fork and exec and only calls close, getpid,
    // write, read and _exit. The pipes are close-on-exec. The child closes its
    // copies of the launcher's ends first, so that a failed placement
    // reaches it as the end of the pipe. The child's ends move into the
    // closure: the launcher's copies stay open until `cmd` is dropped.
    unsafe {
        cmd.pre_exec(move || {
            let (pid_writer, go_reader) = (&child_ends.0, &child_ends.1);
            for fd in launcher_ends {
                libc::close(fd);
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(pid_writer.as_raw_fd(), pid.as_ptr().cast(), pid.len())
                != pid.len() as isize
            {
                return Err(io::Error::last_os_error());
            }
            let mut go = 0u8;
            if libc::read(go_reader.as_raw_fd(), (&raw mut go).cast(), 1) != 1 {
                // Not placed (the thread says why), or the launcher is
                // gone: end without running the command.
                libc::_exit(126);
            }
            Ok(())
        });
    }
    Ok(placing)
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
