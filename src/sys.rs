//! The few operating-system calls keyturn makes beyond `std`, all through `rustix` so that the
//! crate stays free of `unsafe`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use rustix::fs::FlockOperation;

/// What a path's filesystem is, as far as delivery cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filesystem {
    pub magic: u64,
}

impl Filesystem {
    const TMPFS: u64 = 0x0102_1994;
    const RAMFS: u64 = 0x8584_58f6;

    /// Memory-backed: a secret written here never reaches a disk (swap aside).
    pub fn is_volatile(self) -> bool {
        matches!(self.magic, Self::TMPFS | Self::RAMFS)
    }

    /// A name an operator recognises, for error messages.
    pub fn name(self) -> String {
        let known = match self.magic {
            Self::TMPFS => "tmpfs",
            Self::RAMFS => "ramfs",
            0xEF53 => "ext2/3/4",
            0x5846_5342 => "xfs",
            0x9123_683E => "btrfs",
            0x794C_7630 => "overlayfs",
            0x6969 => "nfs",
            0x0102_1997 => "9p",
            0x6573_5546 => "fuse",
            0x2FC1_2FC1 => "zfs",
            _ => "",
        };
        if known.is_empty() { format!("filesystem type {:#x}", self.magic) } else { known.to_string() }
    }
}

pub fn filesystem(path: &Path) -> io::Result<Filesystem> {
    let stat = rustix::fs::statfs(path)?;
    // f_type is signed on some targets; the magic numbers are defined as unsigned 32-bit.
    #[allow(clippy::unnecessary_cast, reason = "the field's type differs between targets")]
    Ok(Filesystem { magic: (stat.f_type as i64 as u64) & 0xFFFF_FFFF })
}

/// Takes an exclusive `flock` on `file`, waiting at most `timeout`. Returns when the lock is
/// held; it is released when the file is closed.
///
/// Polls a non-blocking lock rather than blocking, so that a stuck peer cannot hang the
/// agent's runtime thread forever.
pub async fn lock_exclusive(file: &File, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(1);
    loop {
        match rustix::fs::flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "lock held by another process for too long"));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets owner and group on an open file; `None` leaves that id unchanged.
pub fn chown(file: &impl AsFd, owner: Option<u32>, group: Option<u32>) -> io::Result<()> {
    if owner.is_none() && group.is_none() {
        return Ok(());
    }
    let owner = owner.map(rustix::fs::Uid::from_raw);
    let group = group.map(rustix::fs::Gid::from_raw);
    Ok(rustix::fs::fchown(file, owner, group)?)
}

/// Sets permission bits on an open file, whatever the umask did at creation.
pub fn chmod(file: &impl AsFd, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode))?)
}

/// Makes a directory's entries (creates, renames, unlinks) durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Keeps the kernel from writing this process's memory (and so its secrets) to core dumps,
/// and keeps other processes of the same user from attaching to it with ptrace.
pub fn forbid_core_dumps() -> io::Result<()> {
    Ok(rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?)
}

/// Sends SIGUSR1 to `pid`: how `keyturn rotate` tells a running agent to pull at once.
pub fn nudge(pid: u32) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
    Ok(rustix::process::kill_process(pid, rustix::process::Signal::USR1)?)
}

/// Whether a process with this pid exists (signal 0 probes without sending anything).
pub fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// Replaces `path` with `bytes` atomically: a temporary file beside it gets the bytes and
/// `mode`, is flushed to disk, and is renamed over `path`; the directory is then synced. A
/// crash leaves either the old file or the new one, never a mix. Secret deliveries do not use
/// this: they go through `deliver`, which swaps whole bundles.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        chmod(&file, mode)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The process umask, read from `/proc/self/status` (setting it to read it back would race
/// with other threads creating files). None when the kernel does not say.
pub fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|line| line.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

/// Creates `path` and its missing parents; the last component gets exactly `mode`.
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shm_is_volatile_and_the_crate_dir_is_not() {
        let shm = filesystem(Path::new("/dev/shm")).unwrap();
        assert!(shm.is_volatile(), "{}", shm.name());
        assert_eq!(shm.name(), "tmpfs");
        let here = filesystem(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(!here.is_volatile(), "{}", here.name());
    }

    #[test]
    fn the_umask_is_read_without_changing_it() {
        let read = umask().expect("Linux reports the umask");
        // Setting it to what was read changes nothing for other tests, and returns the truth.
        let actual = rustix::process::umask(rustix::fs::Mode::from_raw_mode(read));
        assert_eq!(actual.bits(), read);
    }

    #[test]
    fn this_process_exists() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(u32::MAX));
    }
}
