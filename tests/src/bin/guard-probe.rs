//! `guard-probe`: makes exactly one system call and reports the outcome as
//! one JSON line, `{"pid":N,"ok":true}` or `{"pid":N,"errno":E}`, then exits 0.
//! The tests run it tagged (through `guardctl run`) and untagged, and match
//! its pid against Guard's records.
//!
//! Usage: guard-probe [--child-cgroup NAME] OP ARGS...
//!   true                      do nothing (the target of exec tests)
//!   exec PATH [ARG...]        execv(2); on success the new image reports
//!   unlink PATH | rmdir PATH | rename FROM TO
//!   truncate PATH             truncate(2) to 0 bytes
//!   open-trunc PATH           open(2) with O_WRONLY|O_TRUNC
//!   ftruncate PATH            open(2) O_WRONLY, then ftruncate(2) to 0
//!   open-write PATH           open(2) with O_WRONLY
//!   read PATH                 open(2) with O_RDONLY
//!   create PATH               open(2) with O_WRONLY|O_CREAT|O_EXCL
//!   mkdir PATH | symlink TARGET PATH | link FROM TO
//!   connect-tcp ADDR | connect-udp ADDR | sendto-udp ADDR   (ADDR: ip:port, [v6]:port)
//!   connect-udp-loop ADDR STOP  connect(2) a UDP socket to ADDR once a
//!                             millisecond until file STOP exists; reports
//!                             `{"pid":N,"ok":true,"allowed":A,"denied":D}`
//!   connect-udp-flood ADDR N  the same N times as fast as it can
//!   bpf                       bpf(BPF_PROG_GET_NEXT_ID) (ENOENT counts as ok)
//!   kill PID SIG | ptrace PID (PTRACE_SEIZE, then detach)
//!   pidfd-getfd PID FD        copy a descriptor of another process
//!   mount-tmpfs DIR | umount DIR
//!   finit-module FILE | init-module   load a (bogus) kernel module
//!   clone-into-cgroup DIR     clone3(2) with CLONE_INTO_CGROUP; the child exits
//!   join-cgroup DIR           write this process's pid to DIR/cgroup.procs
//!   exec-fd PATH              execveat(open(PATH), "", AT_EMPTY_PATH)
//!   exec-proc-fd PATH         execv("/proc/self/fd/N") of open(PATH)
//!   exec-memfd PATH           copy PATH into a memfd, then fexecve it
//!   rename-exchange A B       renameat2(RENAME_EXCHANGE)
//!   sendto-fastopen ADDR      TCP sendto(2) with MSG_FASTOPEN
//!   sendmmsg-udp ADDR         UDP sendmmsg(2) of two datagrams
//!   connect-nonblock ADDR     TCP connect(2) on a non-blocking socket
//!   connect-fd FD ADDR        UDP connect(2) of inherited socket FD
//!   uring-unlink PATH | uring-rename FROM TO | uring-open-write PATH |
//!   uring-connect ADDR        the same through io_uring (TCP connect)
//!
//! --escape HOW first tries to leave the agent's confinement, ignoring the
//! outcome, then does OP:
//!   cgroup:DIR     write its pid to DIR/cgroup.procs
//!   child-cgroup   create a child of its own cgroup and move into it
//!   unshare        unshare every namespace it can (mount, cgroup, UTS, IPC, net)
//!   daemonize      fork, setsid, fork again and let the middle process exit,
//!                  so that OP runs re-parented to init (the grandchild reports)

use io_uring::{opcode, types};
use std::{
    ffi::CString,
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::ffi::OsStrExt,
    path::Path,
};

fn report(result: io::Result<()>) -> ! {
    let pid = std::process::id();
    match result {
        Ok(()) => println!(r#"{{"pid":{pid},"ok":true}}"#),
        Err(e) => println!(
            r#"{{"pid":{pid},"errno":{}}}"#,
            e.raw_os_error().unwrap_or(-1)
        ),
    }
    std::process::exit(0)
}

fn cstr(path: &str) -> CString {
    CString::new(Path::new(path).as_os_str().as_bytes()).expect("no NUL in path")
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| panic!("bad address {text}"))
}

fn unspecified_for(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
}

/// Tries to leave the agent's confinement `how` (see the usage).
fn escape(how: &str) {
    match how.split_once(':') {
        Some(("cgroup", dir)) => drop(join_cgroup(dir)),
        _ if how == "child-cgroup" => drop(enter_child_cgroup("escape")),
        _ if how == "unshare" => {
            let flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWCGROUP
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWNET;
            // SAFETY: plain flags.
            unsafe { libc::unshare(flags) };
        }
        _ if how == "daemonize" => {
            // SAFETY: the children only make system calls before going on
            // with the single-threaded probe.
            unsafe {
                let child = libc::fork();
                if child > 0 {
                    let mut status = 0;
                    libc::waitpid(child, &mut status, 0);
                    // The grandchild reports, on the same stdout.
                    libc::_exit(0);
                }
                libc::setsid();
                let middle = libc::getpid();
                if libc::fork() > 0 {
                    libc::_exit(0);
                }
                // Wait until re-parented (to init or the nearest subreaper).
                while libc::getppid() == middle {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
        _ => panic!("unknown escape {how}"),
    }
}

enum ExecVia {
    EmptyPath,
    ProcFd,
    Memfd,
}

/// Executes `path` through a descriptor instead of its name.
fn exec_variant(path: &str, via: ExecVia) -> io::Result<()> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let file = std::fs::File::open(path)?;
    let fd = match via {
        ExecVia::Memfd => {
            // SAFETY: a plain system call; the descriptor is owned below.
            let memfd = unsafe { libc::memfd_create(c"guard-probe".as_ptr(), 0) };
            check(memfd)?;
            let mut copy = unsafe { std::fs::File::from_raw_fd(memfd) };
            io::copy(&mut &file, &mut copy)?;
            copy.into_raw_fd()
        }
        _ => file.into_raw_fd(),
    };
    let argv = [c"guard-probe".as_ptr(), c"true".as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    match via {
        ExecVia::ProcFd => {
            let proc_path = cstr(&format!("/proc/self/fd/{fd}"));
            unsafe { libc::execv(proc_path.as_ptr(), argv.as_ptr()) };
        }
        _ => unsafe {
            libc::execveat(
                fd,
                c"".as_ptr(),
                argv.as_ptr() as *const *mut libc::c_char,
                envp.as_ptr() as *const *mut libc::c_char,
                libc::AT_EMPTY_PATH,
            );
        },
    }
    Err(io::Error::last_os_error())
}

/// A TCP Fast Open sendto(2): connect and send in one call.
fn sendto_fastopen(to: SocketAddr) -> io::Result<()> {
    let socket = socket_for(&to, libc::SOCK_STREAM)?;
    let (sockaddr, len) = raw_addr(&to);
    // SAFETY: a valid socket, buffer and address.
    let rc = unsafe {
        libc::sendto(
            socket,
            c"guard-probe".as_ptr().cast(),
            11,
            libc::MSG_FASTOPEN,
            (&raw const sockaddr).cast(),
            len,
        )
    };
    unsafe { libc::close(socket) };
    check(rc as i32)
}

/// sendmmsg(2) of two UDP datagrams to `to`; fails if either is refused.
fn sendmmsg_udp(to: SocketAddr) -> io::Result<()> {
    let socket = socket_for(&to, libc::SOCK_DGRAM)?;
    let (mut sockaddr, len) = raw_addr(&to);
    let mut payload = *b"guard-probe";
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: zeroed msghdrs are valid; the pointers outlive the call.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    for m in &mut msgs {
        m.msg_hdr.msg_name = (&raw mut sockaddr).cast();
        m.msg_hdr.msg_namelen = len;
        m.msg_hdr.msg_iov = &raw mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let sent = unsafe { libc::sendmmsg(socket, msgs.as_mut_ptr(), 2, 0) };
    let result = match sent {
        2 => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        // The first went out and the second was refused: report why.
        _ => Err(io::Error::from_raw_os_error(libc::EPERM)),
    };
    unsafe { libc::close(socket) };
    result
}

/// connect(2) on a non-blocking TCP socket; EINPROGRESS counts as ok.
fn connect_nonblock(to: SocketAddr) -> io::Result<()> {
    let socket = socket_for(&to, libc::SOCK_STREAM | libc::SOCK_NONBLOCK)?;
    let (sockaddr, len) = raw_addr(&to);
    // SAFETY: a valid socket and address.
    let rc = unsafe { libc::connect(socket, (&raw const sockaddr).cast(), len) };
    let result = match check(rc) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        other => other,
    };
    unsafe { libc::close(socket) };
    result
}

fn socket_for(to: &SocketAddr, kind: libc::c_int) -> io::Result<libc::c_int> {
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: a plain system call.
    let fd = unsafe { libc::socket(family, kind, 0) };
    check(fd).map(|()| fd)
}

/// `to` as a `sockaddr_storage` and its length.
fn raw_addr(to: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: a zeroed sockaddr_storage is valid and large enough for both.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Submits one io_uring request and waits for it; its result as errno.
fn uring(entry: io_uring::squeue::Entry) -> io::Result<()> {
    let mut ring = io_uring::IoUring::new(4)?;
    // SAFETY: every pointer the entry holds outlives the wait below.
    unsafe { ring.submission().push(&entry) }.map_err(io::Error::other)?;
    ring.submit_and_wait(1)?;
    let completion = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("no completion"))?;
    match completion.result() {
        res if res < 0 => Err(io::Error::from_raw_os_error(-res)),
        _ => Ok(()),
    }
}

/// Moves this process into cgroup `dir`.
fn join_cgroup(dir: &str) -> io::Result<()> {
    std::fs::write(format!("{dir}/cgroup.procs"), "0")
}

fn enter_child_cgroup(name: &str) -> io::Result<()> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("cgroup v2 entry")
        .trim()
        .to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = info
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("cgroup2 mounted")
        .to_string();
    let child = format!("{mount}{path}/{name}");
    match std::fs::create_dir(&child) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    join_cgroup(&child)
}

fn bpf_next_program_id() -> io::Result<()> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    let mut attr = [0u32; 4];
    // SAFETY: the kernel reads and writes at most `size_of_val(&attr)` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_NEXT_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    match io::Error::last_os_error() {
        _ if rc == 0 => Ok(()),
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        e => Err(e),
    }
}

fn syscall_result(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// clone3(2) with CLONE_INTO_CGROUP into `dir`; the child exits at once.
fn clone_into_cgroup(dir: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let cgroup = std::fs::File::open(dir)?;
    // struct clone_args (CLONE_ARGS_SIZE_VER2).
    let mut args = [0u64; 11];
    args[0] = CLONE_INTO_CGROUP;
    args[4] = libc::SIGCHLD as u64; // exit_signal
    args[10] = cgroup.as_raw_fd() as u64;
    // SAFETY: like fork(2): the child only exits.
    let pid = syscall_result(unsafe {
        libc::syscall(libc::SYS_clone3, args.as_ptr(), size_of_val(&args))
    })?;
    if pid == 0 {
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    Ok(())
}

/// Connects one UDP socket to `to` over and over until `stop` exists, and
/// reports how many connects were allowed and denied.
/// When a connect loop ends.
enum Until<'a> {
    /// This file exists; one connect a millisecond.
    File(&'a Path),
    /// This many connects, back to back.
    Count(u64),
}

fn connect_udp_loop(to: SocketAddr, until: Until) -> io::Result<()> {
    let socket = UdpSocket::bind(unspecified_for(&to))?;
    let (mut allowed, mut denied) = (0u64, 0u64);
    for i in 0u64.. {
        let done = match until {
            Until::File(stop) => i % 100 == 0 && stop.exists(),
            Until::Count(n) => i == n,
        };
        if done {
            break;
        }
        match socket.connect(to) {
            Ok(()) => allowed += 1,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => denied += 1,
            Err(e) => return Err(e),
        }
        if let Until::File(_) = until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let pid = std::process::id();
    println!(r#"{{"pid":{pid},"ok":true,"allowed":{allowed},"denied":{denied}}}"#);
    std::process::exit(0);
}

/// `each STEP...`: one process doing several actions in order, e.g. to
/// spend a session's budget. A step is `unlink:PATH`, `truncate:PATH`,
/// `create:PATH`, `connect-udp:ADDR`, `@MS` (sleep) or `@wait:PATH` (until PATH exists).
/// Prints the errno of each action (0 when it succeeded).
fn each(steps: &[String]) -> ! {
    let mut errnos = Vec::new();
    for step in steps {
        let (op, arg) = step.split_once(':').unwrap_or((step.as_str(), ""));
        let result = match op {
            "@wait" => {
                while !Path::new(arg).exists() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                continue;
            }
            _ if op.starts_with('@') => {
                let ms: u64 = op[1..].parse().expect("@MS");
                std::thread::sleep(std::time::Duration::from_millis(ms));
                continue;
            }
            "unlink" => check(unsafe { libc::unlink(cstr(arg).as_ptr()) }),
            "truncate" => check(unsafe { libc::truncate(cstr(arg).as_ptr(), 0) }),
            "create" => check(unsafe {
                libc::open(
                    cstr(arg).as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o644,
                )
            }),
            "connect-udp" => {
                let a = addr(arg);
                UdpSocket::bind(unspecified_for(&a)).and_then(|s| s.connect(a))
            }
            other => panic!("unknown step {other}"),
        };
        errnos.push(result.err().map_or(0, |e| e.raw_os_error().unwrap_or(-1)));
    }
    let pid = std::process::id();
    println!(r#"{{"pid":{pid},"ok":true,"errnos":{errnos:?}}}"#);
    std::process::exit(0);
}

/// Writes zeros to a new file at PATH until the filesystem is full; ok when
/// the write that fails fails with ENOSPC.
fn fill(path: &str) -> io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Becomes UID and serves a unix socket at PATH (accepting and closing
/// connections) until killed: a socket that is not guardd's.
fn serve_unix_as(uid: u32, path: &str) -> io::Result<()> {
    check(unsafe { libc::setgid(uid) })?;
    check(unsafe { libc::setuid(uid) })?;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    for stream in listener.incoming() {
        drop(stream?);
    }
    Ok(())
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--escape") {
        escape(args.get(1).expect("--escape HOW"));
        args.drain(..2);
    }
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("missing argument {i}"))
    };
    let result = match arg(0) {
        "true" => Ok(()),
        "exec" => {
            let argv: Vec<CString> = args[1..].iter().map(|a| cstr(a)).collect();
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            // SAFETY: NUL-terminated argv of valid C strings.
            unsafe { libc::execv(argv[0].as_ptr(), ptrs.as_ptr()) };
            Err(io::Error::last_os_error())
        }
        // SAFETY (all below): valid C strings and plain values.
        "unlink" => check(unsafe { libc::unlink(cstr(arg(1)).as_ptr()) }),
        "rmdir" => check(unsafe { libc::rmdir(cstr(arg(1)).as_ptr()) }),
        "rename" => check(unsafe { libc::rename(cstr(arg(1)).as_ptr(), cstr(arg(2)).as_ptr()) }),
        "truncate" => check(unsafe { libc::truncate(cstr(arg(1)).as_ptr(), 0) }),
        "open-trunc" => {
            check(unsafe { libc::open(cstr(arg(1)).as_ptr(), libc::O_WRONLY | libc::O_TRUNC) })
        }
        "ftruncate" => {
            let fd = unsafe { libc::open(cstr(arg(1)).as_ptr(), libc::O_WRONLY) };
            check(fd).and_then(|()| check(unsafe { libc::ftruncate(fd, 0) }))
        }
        "open-write" => check(unsafe { libc::open(cstr(arg(1)).as_ptr(), libc::O_WRONLY) }),
        "read" => check(unsafe { libc::open(cstr(arg(1)).as_ptr(), libc::O_RDONLY) }),
        "create" => check(unsafe {
            libc::open(
                cstr(arg(1)).as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o644,
            )
        }),
        "open-create-write" => check(unsafe {
            libc::open(
                cstr(arg(1)).as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
            )
        }),
        "mkdir" => check(unsafe { libc::mkdir(cstr(arg(1)).as_ptr(), 0o755) }),
        "symlink" => check(unsafe { libc::symlink(cstr(arg(1)).as_ptr(), cstr(arg(2)).as_ptr()) }),
        "link" => check(unsafe { libc::link(cstr(arg(1)).as_ptr(), cstr(arg(2)).as_ptr()) }),
        "connect-udp-loop" => connect_udp_loop(addr(arg(1)), Until::File(Path::new(arg(2)))),
        "connect-udp-flood" => {
            connect_udp_loop(addr(arg(1)), Until::Count(arg(2).parse().expect("a count")))
        }
        "connect-tcp" => TcpStream::connect(addr(arg(1))).map(drop),
        "connect-udp" => {
            let a = addr(arg(1));
            UdpSocket::bind(unspecified_for(&a)).and_then(|s| s.connect(a))
        }
        "sendto-udp" => {
            let a = addr(arg(1));
            UdpSocket::bind(unspecified_for(&a))
                .and_then(|s| s.send_to(b"guard-probe", a))
                .map(drop)
        }
        "bpf" => bpf_next_program_id(),
        "kill" => check(unsafe {
            libc::kill(
                arg(1).parse().expect("a pid"),
                arg(2).parse().expect("a signal"),
            )
        }),
        "ptrace" => {
            let pid: libc::pid_t = arg(1).parse().expect("a pid");
            syscall_result(unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) }).map(|_| unsafe {
                libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
            })
        }
        "pidfd-getfd" => {
            let pid: libc::pid_t = arg(1).parse().expect("a pid");
            let fd: libc::c_int = arg(2).parse().expect("a descriptor");
            syscall_result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }).and_then(
                |pidfd| {
                    syscall_result(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) })
                        .map(drop)
                },
            )
        }
        "mount-tmpfs" => check(unsafe {
            libc::mount(
                cstr("none").as_ptr(),
                cstr(arg(1)).as_ptr(),
                cstr("tmpfs").as_ptr(),
                0,
                std::ptr::null(),
            )
        }),
        "umount" => check(unsafe { libc::umount2(cstr(arg(1)).as_ptr(), 0) }),
        "finit-module" => std::fs::File::open(arg(1)).and_then(|file| {
            use std::os::fd::AsRawFd;
            syscall_result(unsafe {
                libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0)
            })
            .map(drop)
        }),
        "init-module" => {
            let image = [0u8; 64];
            syscall_result(unsafe {
                libc::syscall(
                    libc::SYS_init_module,
                    image.as_ptr(),
                    image.len(),
                    c"".as_ptr(),
                )
            })
            .map(drop)
        }
        "clone-into-cgroup" => clone_into_cgroup(arg(1)),
        "exec-fd" => exec_variant(arg(1), ExecVia::EmptyPath),
        "exec-proc-fd" => exec_variant(arg(1), ExecVia::ProcFd),
        "exec-memfd" => exec_variant(arg(1), ExecVia::Memfd),
        "uring-unlink" => {
            let path = cstr(arg(1));
            uring(opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build())
        }
        "uring-rename" => {
            let (from, to) = (cstr(arg(1)), cstr(arg(2)));
            let at = types::Fd(libc::AT_FDCWD);
            uring(opcode::RenameAt::new(at, from.as_ptr(), at, to.as_ptr()).build())
        }
        "uring-open-write" => {
            let path = cstr(arg(1));
            uring(
                opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
                    .flags(libc::O_WRONLY)
                    .build(),
            )
        }
        "uring-connect" => {
            let to = addr(arg(1));
            let (sockaddr, len) = raw_addr(&to);
            socket_for(&to, libc::SOCK_STREAM).and_then(|socket| {
                let result = uring(
                    opcode::Connect::new(types::Fd(socket), (&raw const sockaddr).cast(), len)
                        .build(),
                );
                unsafe { libc::close(socket) };
                result
            })
        }
        "rename-exchange" => check(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cstr(arg(1)).as_ptr(),
                libc::AT_FDCWD,
                cstr(arg(2)).as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        }),
        "sendto-fastopen" => sendto_fastopen(addr(arg(1))),
        "sendmmsg-udp" => sendmmsg_udp(addr(arg(1))),
        "connect-nonblock" => connect_nonblock(addr(arg(1))),
        "connect-fd" => {
            use std::os::fd::FromRawFd;
            let fd: i32 = arg(1).parse().expect("a descriptor");
            // SAFETY: the caller passes an open UDP socket as FD.
            let socket = unsafe { UdpSocket::from_raw_fd(fd) };
            socket.connect(addr(arg(2)))
        }
        "join-cgroup" => join_cgroup(arg(1)),
        "each" => each(&args[1..]),
        "fill" => fill(arg(1)),
        "serve-unix-as" => serve_unix_as(arg(1).parse().expect("a uid"), arg(2)),
        op => panic!("unknown op {op}"),
    };
    report(result)
}
