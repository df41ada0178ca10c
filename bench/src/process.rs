//! The processes the suite starts (agents, emulators, baselines), what it reads about them from
//! /proc, and the sd_notify socket it listens on for READY.
//!
//! Every process is owned by a [`Process`], which stops it (SIGTERM, then SIGKILL after a few
//! seconds) when dropped, so that a failing benchmark leaves nothing running.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Error;

#[derive(Debug)]
pub struct Process {
    pub name: String,
    pub child: Child,
    /// Taken just before `spawn`, so durations include the exec.
    pub spawned: Instant,
}

impl Process {
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<Process, Error> {
        let name = name.into();
        let spawned = Instant::now();
        let child = command.spawn().map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Process { name, child, spawned })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited; an error naming its status if it has.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!("{} exited early: {status}", self.name).into()),
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_stop(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// SIGTERM, then up to `grace` for it to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal_stop();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Resident memory as /proc/PID/status reports it, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
}

pub fn memory(pid: u32) -> Result<Memory, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory { rss: field("VmRSS:"), anon: field("RssAnon:"), file: field("RssFile:") })
}

/// User plus system CPU time consumed so far, in seconds (/proc/PID/stat, clock ticks of 1/100 s).
pub fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are fixed.
    let rest = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// User plus system CPU time of this process's waited-for children so far, in seconds
/// (/proc/self/stat `cutime` + `cstime`).
pub fn children_cpu_seconds() -> Result<f64, Error> {
    let own = std::fs::read_to_string("/proc/self/stat")?;
    let rest = &own[own.rfind(')').ok_or("bad /proc stat")? + 2..];
    let ticks: f64 = rest.split(' ').skip(13).take(2).map(|f| f.parse::<f64>().unwrap_or(0.0)).sum();
    Ok(ticks / 100.0)
}

/// CPU seconds used so far by the whole machine, and by this process with its waited-for
/// children; the difference over a run is what other work took from the benchmarks.
pub fn machine_and_own_cpu() -> Result<(f64, f64), Error> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .ok_or("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal …: busy is all but idle and iowait.
    let busy: f64 = fields.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4 && *i < 8).map(|(_, v)| v).sum();
    let own = std::fs::read_to_string("/proc/self/stat")?;
    let rest = &own[own.rfind(')').ok_or("bad /proc stat")? + 2..];
    let own: f64 = rest.split(' ').skip(11).take(4).map(|f| f.parse::<f64>().unwrap_or(0.0)).sum();
    Ok((busy / 100.0, own / 100.0))
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
///
/// A thread reads it all the time, as systemd does: agents send more than READY=1 (STATUS=,
/// STOPPING=1), and a socket nobody reads fills its queue and blocks the senders.
#[derive(Debug)]
pub struct NotifySocket {
    pub path: PathBuf,
    /// Each datagram with the time it arrived.
    datagrams: Receiver<(Instant, String)>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl NotifySocket {
    pub fn bind(path: &Path) -> Result<NotifySocket, Error> {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let (sender, datagrams) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buffer) {
                    let _ = sender.send((Instant::now(), String::from_utf8_lossy(&buffer[..n]).into_owned()));
                }
            }
        });
        Ok(NotifySocket { path: path.to_owned(), datagrams, stop, reader: Some(reader) })
    }

    /// Waits for a datagram containing `READY=1`; returns when it arrived. `alive` is asked
    /// between waits so that an agent that dies is reported instead of waited for.
    pub fn wait_ready(
        &self,
        timeout: Duration,
        mut alive: impl FnMut() -> Result<(), Error>,
    ) -> Result<Instant, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no READY=1 within {timeout:?}").into());
            }
            match self.datagrams.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((at, text)) if text.lines().any(|line| line == "READY=1") => return Ok(at),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => alive()?,
                Err(RecvTimeoutError::Disconnected) => return Err("the notify socket's reader stopped".into()),
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `keyturn agent --config CONFIG`, telling `notify` its READY=1, with Google credentials from
/// `key` if given, and no standard streams; callers add arguments or a log file.
pub fn agent_command(keyturn: &Path, config: &Path, notify: &NotifySocket, key: Option<&Path>) -> Command {
    let mut command = Command::new(keyturn);
    command.args(["agent", "--config"]).arg(config).env("NOTIFY_SOCKET", &notify.path);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(key) = key {
        command.env("GOOGLE_APPLICATION_CREDENTIALS", key);
    }
    command
}
