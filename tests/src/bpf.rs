//! The kernel's statistics of a process's BPF programs
//! (`kernel.bpf_stats_enabled`): how often each ran and for how long.

use std::{fs, os::unix::ffi::OsStrExt as _};

/// One BPF program a process holds.
#[derive(Clone, Debug)]
pub struct Program {
    /// The kernel's name for it: the program's, cut to 15 bytes.
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// Turns the kernel's BPF statistics on or off (they cost time themselves).
pub fn stats(on: bool) {
    fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    )
    .expect("switch BPF statistics");
}

/// Every BPF program process `pid` holds a descriptor of, with its run
/// count and time so far (from the descriptor's fdinfo).
pub fn programs(pid: u32) -> Vec<Program> {
    let fds = format!("/proc/{pid}/fd");
    let mut programs = Vec::new();
    for entry in fs::read_dir(&fds).into_iter().flatten().flatten() {
        let is_prog = fs::read_link(entry.path())
            .is_ok_and(|l| l.as_os_str().as_bytes() == b"anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        programs.push(Program {
            name: name(pid, fd),
            runs: field("run_cnt:"),
            run_ns: field("run_time_ns:"),
        });
    }
    programs
}

/// The runs so far of `pid`'s program named `name` (0 if it holds none).
pub fn runs(pid: u32, name: &str) -> u64 {
    programs(pid)
        .iter()
        .filter(|p| p.name == name)
        .map(|p| p.runs)
        .sum()
}

/// The name of the BPF program behind descriptor `fd` of process `pid`: a
/// copy of the descriptor (pidfd_getfd), then BPF_OBJ_GET_INFO_BY_FD.
fn name(pid: u32, fd: i32) -> String {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// Offset of `name` in `struct bpf_prog_info` (stable UAPI).
    const NAME: usize = 64;
    // SAFETY: plain system calls on descriptors this function owns; the
    // kernel writes at most `info.len()` bytes into `info`.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        let mut info = [0u8; 256];
        #[repr(C)]
        struct InfoAttr {
            bpf_fd: u32,
            info_len: u32,
            info: u64,
        }
        let attr = InfoAttr {
            bpf_fd: copy as u32,
            info_len: info.len() as u32,
            info: info.as_mut_ptr() as u64,
        };
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            size_of::<InfoAttr>(),
        );
        libc::close(copy);
        if rc < 0 {
            return format!("fd-{fd}");
        }
        let name = &info[NAME..NAME + 16];
        let end = name.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&name[..end]).into_owned()
    }
}
