//! A real systemd, booted for one test: the host's own systemd (252 on Debian 12) as PID 1 of
//! fresh namespaces, on an overlay of the host's root whose writes land in a tmpfs of the
//! test's (`boot-systemd.sh` beside this file does the namespace side). It boots in about a
//! second; [`Machine::sh`] runs commands inside as root, [`Machine::put`] writes files into it,
//! and dropping the handle powers it off and removes every trace of it.
//!
//! It needs root, a cgroup2 hierarchy to make a child in, overlayfs, and systemd's binary.
//! Where one is missing, [`Machine::boot`] says which and returns `None`, unless
//! `KEYTURN_SYSTEMD_TIER=required` (which `scripts/test.sh` sets when it runs as root, as CI
//! does): then it fails the test, so the tier never passes by not running.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{text, wait_for_every};

const SYSTEMD: &str = "/lib/systemd/systemd";
const BOOT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/boot-systemd.sh");

/// How long a boot may take on a loaded 2-core CI before it counts as failed (about 1 s idle).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A booted machine. Dropping it powers it off.
pub struct Machine {
    /// The host tmpfs that holds the overlay's upper layer, `unshare.pid` and the console log.
    base: PathBuf,
    /// The machine's cgroup: a child of the host's cgroup2 hierarchy, removed at the end.
    cgroup: PathBuf,
    /// script(1), whose pty is the machine's console.
    console: Child,
    /// Host pid of `unshare`, the machine's parent.
    unshare: i32,
    /// Host pid of the machine's systemd.
    pub pid: i32,
}

impl Machine {
    /// Boots a machine, or says why it cannot and returns `None` (a failure when the tier is
    /// required).
    pub fn boot(name: &str) -> Option<Machine> {
        let cgroup_root = match prerequisites() {
            Ok(root) => root,
            Err(reason) => {
                let required = std::env::var("KEYTURN_SYSTEMD_TIER").is_ok_and(|v| v == "required");
                assert!(!required, "the real-systemd tier cannot run here: {reason}");
                // Straight to the process's stderr: the test harness shows it even for a pass.
                let line = format!("SKIPPED {name}: the real-systemd tier cannot run here: {reason}\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                return None;
            }
        };
        let unique = format!("keyturn-machine-{}-{}", std::process::id(), super::unique());
        let base = std::env::temp_dir().join(&unique);
        fs::create_dir_all(&base).unwrap();
        mount_tmpfs(&base);
        let cgroup = cgroup_root.join(&unique);
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("cannot create the cgroup {}: {e}", cgroup.display()));
        let console = Command::new("setsid")
            .args(["script", "-qfec"])
            .arg(format!("{BOOT_SCRIPT} outer {} {}", base.display(), cgroup.display()))
            .arg(base.join("console.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("script(1) from util-linux");
        let mut machine = Machine { base, cgroup, console, unshare: 0, pid: 0 };
        machine.wait_booted();
        Some(machine)
    }

    fn wait_booted(&mut self) {
        let started = Instant::now();
        let pid_file = self.base.join("unshare.pid");
        wait_for_every("the machine's systemd to start", BOOT_TIMEOUT, Duration::from_millis(50), || {
            let Some(unshare) = fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
                return false;
            };
            self.unshare = unshare;
            let children = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap_or_default();
            let Some(pid) = children.split_whitespace().next().and_then(|p| p.parse().ok()) else { return false };
            self.pid = pid;
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "systemd")
        });
        // Blocks until the boot transaction is done (or failed), then prints the state.
        let mut state = String::new();
        wait_for_every("the machine's boot to finish", BOOT_TIMEOUT, Duration::from_millis(100), || {
            let out = self.run(&["systemctl", "is-system-running", "--wait"]);
            state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            matches!(state.as_str(), "running" | "degraded")
        });
        eprintln!("machine booted in {:.1?}: {state}", started.elapsed());
    }

    /// The machine's root directory, as the host sees it.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    /// The overlay's upper layer: every file the machine created or changed since boot.
    pub fn upper(&self) -> PathBuf {
        self.base.join("upper")
    }

    /// The host path of `path` inside the machine.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    /// Runs `args` inside the machine as root, in every namespace of its systemd, with a clean
    /// environment.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w"])
            .args(["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["HOME=/root", "LANG=C.UTF-8", "TERM=dumb", "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter from util-linux")
    }

    /// `bash -c SCRIPT` inside the machine, with `set -euo pipefail`.
    pub fn sh(&self, script: &str) -> Output {
        self.run(&["bash", "-c", &format!("set -euo pipefail\n{script}")])
    }

    /// [`Machine::sh`], which must succeed; returns its standard output.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "in the machine: {script}\n{}\n{}", text(&out), self.journal_tail());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `bytes` to `path` inside the machine with `mode`, creating directories.
    pub fn put(&self, path: &str, bytes: &[u8], mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let target = self.path(path);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let written = fs::File::create(&target).and_then(|mut file| std::io::Write::write_all(&mut file, bytes));
        written.unwrap_or_else(|e| panic!("write {path} in the machine: {e}"));
        fs::set_permissions(&target, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Copies the host file `from` to `path` inside the machine.
    pub fn copy(&self, from: &Path, path: &str, mode: u32) {
        let bytes = fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        self.put(path, &bytes, mode);
    }

    /// What systemd printed on the console.
    pub fn console(&self) -> String {
        fs::read_to_string(self.base.join("console.log")).unwrap_or_default()
    }

    /// The last lines of the journal, for failure messages.
    pub fn journal_tail(&self) -> String {
        let out = self.run(&["journalctl", "--no-pager", "-n", "60", "-o", "short-precise"]);
        format!("--- journal (last 60 lines)\n{}", String::from_utf8_lossy(&out.stdout))
    }

    /// Waits until `check` (a shell condition run inside the machine) succeeds.
    pub fn wait_until(&self, what: &str, timeout: Duration, check: &str) {
        wait_for_every(what, timeout, Duration::from_millis(100), || self.sh(check).status.success());
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SIGRTMIN+4 asks systemd for poweroff.target: units stop in order.
            let _ = Command::new("kill").args(["-s", "RTMIN+4", &self.pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Path::new(&format!("/proc/{}", self.unshare)).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{}", self.unshare)).exists() {
                eprintln!("the machine did not power off within 30 s; killing it");
                let _ = Command::new("kill").args(["-KILL", &self.unshare.to_string()]).status();
            }
        }
        let _ = self.console.kill();
        let _ = self.console.wait();
        // The cgroup goes once it is empty: children first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cgroup.exists() && Instant::now() < deadline {
            remove_cgroup(&self.cgroup);
            if self.cgroup.exists() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = Command::new("umount").arg("-l").arg(&self.base).status();
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn remove_cgroup(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

fn mount_tmpfs(dir: &Path) {
    let out =
        Command::new("mount").args(["-t", "tmpfs", "-o", "mode=700,size=512m", "keyturn-machine"]).arg(dir).output();
    let out = out.expect("mount from util-linux");
    assert!(out.status.success(), "cannot mount a tmpfs at {}: {}", dir.display(), text(&out));
}

/// What a machine needs, or why it cannot boot here. Returns the cgroup2 hierarchy to make the
/// machine's cgroup in.
fn prerequisites() -> Result<PathBuf, String> {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().nth(1).map(String::from))
        })
        .flatten();
    if uid.as_deref() != Some("0") {
        return Err("not root (mounting an overlay root, device nodes and a cgroup for a booted systemd needs root; CI runs as root)".into());
    }
    if !Path::new(SYSTEMD).exists() {
        return Err(format!("no systemd binary at {SYSTEMD} (Debian: apt-get install systemd)"));
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.lines().any(|l| l.ends_with("\toverlay")) {
        return Err("the kernel has no overlayfs (modprobe overlay)".into());
    }
    for tool in ["unshare", "nsenter", "setpriv", "script", "setsid", "mount", "pivot_root"] {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()) {
            return Err(format!("{tool} is missing (Debian: util-linux, bsdutils)"));
        }
    }
    // The first cgroup2 mount: the whole of /sys/fs/cgroup on a unified host, or
    // /sys/fs/cgroup/unified beside cgroup v1 controllers.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup2 = mounts.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        (rest.split_whitespace().next() == Some("cgroup2"))
            .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))?
    });
    let Some(cgroup2) = cgroup2 else {
        return Err("no cgroup2 hierarchy is mounted (systemd needs one of its own; mount -t cgroup2 none /sys/fs/cgroup/unified)".into());
    };
    let probe = cgroup2.join(format!("keyturn-probe-{}", std::process::id()));
    fs::create_dir(&probe).map_err(|e| format!("cannot create a cgroup under {}: {e}", cgroup2.display()))?;
    let _ = fs::remove_dir(&probe);
    Ok(cgroup2)
}
