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
/// and keeps other processes of the same user from attaching to it with ptrace; and sets the
/// core size limit to 0, soft and hard, so that no signal (the watchdog's SIGABRT included)
/// and no later change of credentials can make one. Under the systemd unit the limit call is
/// filtered (`~@resources`) and `LimitCORE=0` sets it instead: that refusal is not an error.
pub fn forbid_core_dumps() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    let none = rustix::process::Rlimit { current: Some(0), maximum: Some(0) };
    match rustix::process::setrlimit(rustix::process::Resource::Core, none) {
        Ok(()) | Err(rustix::io::Errno::PERM) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Raises the soft limit on open files to the hard limit: a connection flood must hit the
/// admin listener's own bound, never the descriptors store reads and bundle writes need.
/// Returns the limit in force.
pub fn raise_open_files_limit() -> io::Result<Option<u64>> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, raised)?;
    }
    Ok(limit.maximum)
}

/// A process as this boot knows it: its pid, the boot, and when it started. A later process
/// that is given the same pid has another start time, so a stored identity is never mistaken
/// for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity(String);

impl ProcessIdentity {
    /// This process.
    pub fn own() -> Option<ProcessIdentity> {
        Self::of(std::process::id())
    }

    /// `BOOT_ID/START_TICKS` of `pid`; `None` when it does not exist or cannot be read.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold anything but the last ")".
        let after_name = &stat[stat.rfind(')')? + 1..];
        // Field 22, `starttime`: the 20th after the name.
        let start = after_name.split_whitespace().nth(19)?;
        start.parse::<u64>().ok()?;
        Some(ProcessIdentity(format!("{}/{start}", boot.trim())))
    }

    pub fn from_stored(text: &str) -> ProcessIdentity {
        ProcessIdentity(text.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `pid` is still the process `identity` was taken of.
pub fn is_same_process(pid: u32, identity: &str) -> bool {
    pid != 0 && ProcessIdentity::of(pid).is_some_and(|now| now.as_str() == identity)
}

/// Sends SIGUSR1 to `pid`: how `keyturn rotate` tells a running agent to pull at once. Only
/// if `pid` is still the process `identity` names: a pid left in a status file by an agent
/// that has stopped may belong to any process by now.
pub fn nudge(pid: u32, identity: &str) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
    // A pidfd pins the process checked: if it ends and its pid is reused after the check,
    // the signal fails instead of reaching the newcomer.
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    if !is_same_process(pid.as_raw_nonzero().get() as u32, identity) {
        return Err(io::Error::new(io::ErrorKind::NotFound, "the process is not the agent that wrote the status"));
    }
    Ok(rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::USR1)?)
}

/// Whether a process with this pid exists (signal 0 probes without sending anything).
pub fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// What [`read_small_file`] found.
#[derive(Debug)]
pub struct SmallFile {
    /// Zeroized on drop: token files are read this way.
    pub bytes: zeroize::Zeroizing<Vec<u8>>,
    /// The file's owner.
    pub owner: u32,
}

/// Whether [`read_small_file`] follows a symbolic link in the last component of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// A file whose owner vouches for what it says (a pidfile): a link would lend it the
    /// owner of the link, not of what it names.
    Refuse,
    /// A file an operator names (a token, a key, a seed): Kubernetes mounts Secrets and
    /// projected tokens as links into `..data`, so links are followed; what they lead to is
    /// checked all the same.
    Follow,
}

/// Reads a file that someone else writes (a pidfile, a token file) without trusting it:
/// opening never waits (a FIFO), only a regular file of at most `max` bytes is read, and a
/// symbolic link in the last component is followed only with [`Links::Follow`]. The errors
/// say which of these failed, never what the file holds.
pub fn read_small_file(path: &Path, max: u64, links: Links) -> io::Result<SmallFile> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    let mut flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    if links == Links::Refuse {
        flags |= rustix::fs::OFlags::NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            io::Error::new(io::ErrorKind::InvalidInput, "it is a symbolic link, which is not followed")
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "it is not a regular file"));
    }
    if meta.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("it is larger than {max} bytes")));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("it is larger than {max} bytes")));
    }
    Ok(SmallFile { bytes, owner: meta.uid() })
}

/// [`read_small_file`] on the blocking pool, within `timeout`: a file on a hung network
/// filesystem costs a waiting notification, never the agent's runtime thread.
pub async fn read_small_file_async(path: &Path, max: u64, links: Links, timeout: Duration) -> io::Result<SmallFile> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || read_small_file(&owned, max, links));
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(result)) => result,
        Ok(Err(joined)) => Err(io::Error::other(joined)),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("reading it took longer than {timeout:?}"))),
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

    #[test]
    fn a_process_identity_tells_a_reused_pid_from_the_original() {
        let own = ProcessIdentity::own().expect("this process has an identity");
        assert!(is_same_process(std::process::id(), own.as_str()));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(!is_same_process(child.id(), own.as_str()), "another process, another identity");
        let err = nudge(child.id(), own.as_str()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(child.try_wait().unwrap().is_none(), "not signalled");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn small_files_are_read_without_following_links_or_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        replace_file(&file, b"42\n", 0o600).unwrap();
        assert_eq!(&read_small_file(&file, 64, Links::Refuse).unwrap().bytes[..], b"42\n");
        assert!(read_small_file(&file, 2, Links::Refuse).unwrap_err().to_string().contains("larger than 2 bytes"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_small_file(&link, 64, Links::Refuse).unwrap_err().to_string().contains("symbolic link"));
        // Followed, a link still leads only to a regular file.
        assert!(read_small_file(&link, 64, Links::Follow).unwrap_err().to_string().contains("not a regular file"));
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        for links in [Links::Refuse, Links::Follow] {
            assert!(read_small_file(&fifo, 64, links).unwrap_err().to_string().contains("not a regular file"));
            assert!(read_small_file(dir.path(), 64, links).unwrap_err().to_string().contains("not a regular file"));
        }
    }

    /// Kubernetes mounts a Secret as links into `..data`: a token or key named that way is read.
    #[test]
    fn an_operators_file_behind_a_kubernetes_style_link_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("..2026_12_07")).unwrap();
        replace_file(&dir.path().join("..2026_12_07/token"), b"abc", 0o600).unwrap();
        std::os::unix::fs::symlink("..2026_12_07", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.path().join("token")).unwrap();
        assert_eq!(&read_small_file(&dir.path().join("token"), 64, Links::Follow).unwrap().bytes[..], b"abc");
        assert!(read_small_file(&dir.path().join("token"), 64, Links::Refuse).is_err());
    }
}
