//! Self-protection hooks: actions no agent may take, whatever its profile
//! and in every mode. Each would switch Guard off, step out of its cgroup,
//! or change the kernel beneath every rule. Denied and recorded with rule
//! `SELF_PROTECTION`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{Event, LsmHook, hook, lsm};

use crate::{
    agent::guard_root,
    decision::{Attach, Decision, Global, decide_hook, decided, per_cgroup_too, set_target_path},
    kernel::{self, Kptr, ReadError},
};

/// `decide_hook` for a self-protection hook: deny and record when
/// `applies` says the action is one of those.
#[inline(always)]
fn protect<A: Attach>(
    ctx: &LsmContext,
    lsm_hook: LsmHook,
    hook_id: u32,
    applies: impl FnOnce() -> Result<bool, ReadError>,
    fill: impl FnOnce(&mut Event),
) -> i32 {
    decide_hook::<A>(ctx, lsm_hook, |agent| {
        Ok(applies()? && decided(agent, hook_id, &Decision::SELF_PROTECTION, fill))
    })
}

/// Records a process target (signal, ptrace) as its pid, in `ino`.
fn set_target_pid(event: &mut Event, task: Kptr) {
    event.ino = kernel::task_tgid(task).unwrap_or(0) as u64;
}

/// Denies every bpf(2) command: loading programs, reading or writing maps
/// (Guard's policy), detaching links.
#[lsm(hook = "bpf")]
#[inline(always)]
fn bpf(ctx: LsmContext) -> i32 {
    protect::<Global>(&ctx, lsm::BPF, hook::BPF, || Ok(true), |_| {})
}

/// Denies a signal to any process outside Guard's cgroup (guardd, the
/// collector, the rest of the host). Signal 0 only probes and is allowed.
#[lsm(hook = "task_kill")]
#[inline(always)]
fn task_kill(ctx: LsmContext) -> i32 {
    let target: Kptr = ctx.arg(0);
    let signal: i32 = ctx.arg(2);
    protect::<Global>(
        &ctx,
        lsm::TASK_KILL,
        hook::SIGNAL,
        || Ok(signal != 0 && !kernel::task_in_cgroup(target, guard_root())?),
        |event| set_target_pid(event, target),
    )
}

/// `PTRACE_MODE_ATTACH`: ptrace attach, /proc/PID/mem, process_vm_writev,
/// pidfd_getfd. Read access (`ps`, /proc/PID/stat) stays allowed.
const PTRACE_MODE_ATTACH: u32 = 0x02;

/// Denies attaching to (or writing the memory of) a process outside Guard's
/// cgroup.
#[lsm(hook = "ptrace_access_check")]
#[inline(always)]
fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let target: Kptr = ctx.arg(0);
    let mode: u32 = ctx.arg(1);
    protect::<Global>(
        &ctx,
        lsm::PTRACE_ACCESS_CHECK,
        hook::PTRACE,
        || Ok(mode & PTRACE_MODE_ATTACH != 0 && !kernel::task_in_cgroup(target, guard_root())?),
        |event| set_target_pid(event, target),
    )
}

/// Denies mount(2) (new mounts, binds, remounts, moves).
#[lsm(hook = "sb_mount")]
#[inline(always)]
fn sb_mount(ctx: LsmContext) -> i32 {
    let at: Kptr = ctx.arg(1);
    protect::<Global>(
        &ctx,
        lsm::SB_MOUNT,
        hook::MOUNT,
        || Ok(true),
        |event| set_target_path(event, at),
    )
}

/// Denies umount(2).
#[lsm(hook = "sb_umount")]
#[inline(always)]
fn sb_umount(ctx: LsmContext) -> i32 {
    protect::<Global>(&ctx, lsm::SB_UMOUNT, hook::UMOUNT, || Ok(true), |_| {})
}

/// Denies reconfiguring a mounted filesystem (fsconfig, remount).
#[lsm(hook = "sb_remount")]
#[inline(always)]
fn sb_remount(ctx: LsmContext) -> i32 {
    protect::<Global>(&ctx, lsm::SB_REMOUNT, hook::REMOUNT, || Ok(true), |_| {})
}

/// Denies move_mount(2), which attaches a mount made with fsmount(2).
#[lsm(hook = "move_mount")]
#[inline(always)]
fn move_mount(ctx: LsmContext) -> i32 {
    let to: Kptr = ctx.arg(1);
    protect::<Global>(
        &ctx,
        lsm::MOVE_MOUNT,
        hook::MOVE_MOUNT,
        || Ok(true),
        |event| set_target_path(event, to),
    )
}

/// Denies the kernel reading a file on an agent's behalf: finit_module(2),
/// kexec_file_load(2), firmware.
#[lsm(hook = "kernel_read_file")]
#[inline(always)]
fn kernel_read_file(ctx: LsmContext) -> i32 {
    let file: Kptr = ctx.arg(0);
    protect::<Global>(
        &ctx,
        lsm::KERNEL_READ_FILE,
        hook::KERNEL_READ_FILE,
        || Ok(true),
        |event| {
            if !file.is_null() {
                set_target_path(event, kernel::file_path(file));
            }
        },
    )
}

/// Denies init_module(2) and kexec_load(2) from memory.
#[lsm(hook = "kernel_load_data")]
#[inline(always)]
fn kernel_load_data(ctx: LsmContext) -> i32 {
    protect::<Global>(
        &ctx,
        lsm::KERNEL_LOAD_DATA,
        hook::KERNEL_LOAD_DATA,
        || Ok(true),
        |_| {},
    )
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Denies clone3(2) with CLONE_INTO_CGROUP: a child born in another cgroup
/// would not be an agent.
#[inline(always)]
fn alloc<A: Attach>(ctx: &LsmContext) -> i32 {
    let flags: u64 = ctx.arg(1);
    protect::<A>(
        ctx,
        lsm::TASK_ALLOC,
        hook::CLONE_INTO_CGROUP,
        || Ok(flags & CLONE_INTO_CGROUP != 0),
        |_| {},
    )
}
per_cgroup_too!("task_alloc", task_alloc, cg_task_alloc, alloc);
