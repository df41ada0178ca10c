//! Where and on what the suite ran: the machine, the commit, the date.

use std::path::Path;
use std::process::Command;

#[derive(Debug)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_gib: f64,
    pub commit: String,
    /// Paths with uncommitted changes (BENCHMARKS.md itself left out).
    pub dirty: Vec<String>,
    pub date: String,
}

fn output(command: &mut Command) -> String {
    // Only the end is trimmed: `git status --porcelain` lines start with a meaningful space.
    command.output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_owned()).unwrap_or_default()
}

pub fn describe(repository: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name").map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let status = output(Command::new("git").arg("-C").arg(repository).args(["status", "--porcelain"]));
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        commit: output(Command::new("git").arg("-C").arg(repository).args(["rev-parse", "--short", "HEAD"])),
        dirty: status
            .lines()
            .filter_map(|line| line.get(3..))
            .filter(|path| *path != "BENCHMARKS.md")
            .map(str::to_owned)
            .collect(),
        date: output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
    }
}
