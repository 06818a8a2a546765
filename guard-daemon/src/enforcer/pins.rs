//! Pinning: where the programs of a build stay attached while no guardd
//! runs, and removing them (`guardd --detach`).

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::links::{FdLink, PinnedLink},
};
use guard_common::{Counter, LsmHook, lsm, map};
use sha2::{Digest, Sha256};

use super::lane::Lane;

/// Where the programs of a build are pinned: see [`pin_root`].
pub(super) const BPFFS: &str = "/sys/fs/bpf";

/// The directory guardd pins its programs' links and maps in for Guard's
/// cgroup `cgroup_root`, so that they stay attached while no guardd runs.
/// It holds one directory per build of the programs ([`Enforcer::load`]).
pub fn pin_root(cgroup_root: &str) -> PathBuf {
    // bpffs refuses names with a dot.
    let name: String = cgroup_root
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' || c == '.' { '_' } else { c })
        .collect();
    Path::new(BPFFS).join("guard").join(name)
}

/// Removes every pin guardd left for `cgroup_root` and waits until the
/// programs are detached (unless a running guardd still holds them).
/// Returns whether there was anything to remove.
pub fn detach_pinned(cgroup_root: &str) -> io::Result<bool> {
    let dir = pin_root(cgroup_root);
    if !dir.exists() {
        return Ok(false);
    }
    let builds: Vec<PathBuf> = crate::cgroup::subdirs(&dir).collect();
    detach_builds(&builds)?;
    std::fs::remove_dir(&dir)?;
    Ok(true)
}

/// Removes the pins of `builds` (build directories below [`pin_root`]) and
/// waits until the kernel has released their programs, which it does some
/// time after the last reference goes.
pub(super) fn detach_builds(builds: &[PathBuf]) -> io::Result<()> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);
    let programs: Vec<u32> = builds
        .iter()
        .flat_map(|build| std::fs::read_dir(build).into_iter().flatten().flatten())
        // Links are pinned under their hook's name, maps under theirs.
        .filter(|pin| lsm::ALL.iter().any(|hook| pin.file_name() == hook.program))
        .filter_map(|pin| PinnedLink::from_pin(pin.path()).ok())
        .filter_map(|link| FdLink::from(link).info().ok())
        .map(|info| info.program_id())
        .collect();
    for build in builds {
        std::fs::remove_dir_all(build)?;
    }
    let started = std::time::Instant::now();
    loop {
        let held = aya::programs::loaded_programs()
            .flatten()
            .filter(|program| programs.contains(&program.id()))
            .count();
        if held == 0 {
            return Ok(());
        }
        if started.elapsed() > PATIENCE {
            return Err(io::Error::other(format!(
                "the pins are removed, but {held} of the {} programs are still loaded after {} s (does a guardd still run?)",
                programs.len(),
                PATIENCE.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Records left unread in the ring buffer pinned in `dir`, plus the losses
/// its loss lines did not report (0 if it cannot be read).
pub(super) fn unread_records(dir: &Path) -> u64 {
    let pinned = |name: &str| MapData::from_pin(dir.join(name)).and_then(Map::from_map_data);
    let mut unread = 0;
    for lane in Lane::ALL {
        if let Ok(events) = pinned(lane.map())
            && let Ok(mut ring) = RingBuf::try_from(events)
        {
            while ring.next().is_some() {
                unread += 1;
            }
        }
    }
    if let Ok(counters) = pinned(map::COUNTERS)
        && let Ok(counters) = PerCpuArray::<_, u64>::try_from(&counters)
    {
        let sum = |c: Counter| {
            counters
                .get(&(c as u32), 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        for lane in Lane::ALL {
            unread += sum(lane.lost()).saturating_sub(sum(lane.reported()));
        }
    }
    unread
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
pub(super) fn ensure_bpffs() {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let mounted =
        nix::sys::statfs::statfs(BPFFS).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if !mounted {
        // A failure shows up as the pin error that follows.
        let _ = nix::mount::mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
}

/// Names one build of the programs as loaded on this host: the `object`, the
/// values of its globals (kernel layout, Guard's cgroup), the hooks
/// attached and whether all globally. A guardd adopts pinned programs only
/// of its own build.
pub(super) fn build_id(
    object: &[u8],
    globals: &[(&str, u64)],
    hooks: &[LsmHook],
    globally: bool,
) -> String {
    let mut hash = Sha256::new();
    hash.update(object);
    for (name, value) in globals {
        hash.update(name.as_bytes());
        hash.update(value.to_le_bytes());
    }
    for hook in hooks {
        hash.update(hook.program.as_bytes());
    }
    hash.update([u8::from(globally)]);
    let digest = hash.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
