//! keyturn-bench: measures keyturn against the performance budget in ARCHITECTURE.md and writes
//! BENCHMARKS.md. Run it through `scripts/bench.sh`, which builds everything it needs first.
//!
//! # Layout
//!
//! Every figure is measured beside a baseline in the same run and reported as a ratio, with the
//! median and spread of several runs. Each benchmark is one module, one section of the report:
//!
//! - [`cold_start`]: spawn → every bundle delivered (`sync --once`, and the agent's READY=1),
//!   against a C program doing the same file I/O and a bare HTTP client making the same reads.
//! - [`memory`]: idle resident memory and stripped binary size, against the bare HTTP client.
//! - [`latency`]: store promotion → application notified, and the part after the store read.
//! - [`rotation`]: rotations per second per generator, against key generation alone.
//! - [`traffic`]: store requests per node per hour, against the README's arithmetic.
//! - [`fleet`]: 200 agents on one emulator with Google's quotas: request rate, propagation.
//!
//! The rest is plumbing: [`process`] (children, /proc, the sd_notify socket), [`emulator`]
//! (the Secret Manager emulator as a process), [`fixture`] (agent files, policies, a file
//! store), [`setup`] (the fixture the first two benchmarks share), [`http`], [`stats`],
//! [`machine`].
//!
//! Everything listens on 127.0.0.1, lives under /dev/shm/keyturn-bench-PID (tmpfs) and
//! /var/tmp/keyturn-bench-PID (the file store, on disk), and is removed at the end.

mod cold_start;
mod emulator;
mod fixture;
mod fleet;
mod http;
mod latency;
mod machine;
mod memory;
mod process;
mod rotation;
mod setup;
mod stats;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::stats::{Summary, ratio};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage: keyturn-bench --bin-dir DIR --c-dir DIR [--out FILE] [--build-seconds N] [--only LIST]

  --bin-dir DIR        where keyturn, gcp-emulator and baseline-http were built (release)
  --c-dir DIR          where bench/baseline/io.c and stamp.c were compiled
  --out FILE           the report (default BENCHMARKS.md)
  --build-seconds N    how long the build took, for the report
  --only LIST          comma-separated subset: cold,memory,latency,rotation,traffic,fleet
";

const BENCHMARKS: [&str; 6] = ["cold", "memory", "latency", "rotation", "traffic", "fleet"];

/// The binaries under test and the directories the suite works in.
#[derive(Debug)]
pub struct Bench {
    pub keyturn: PathBuf,
    pub emulator: PathBuf,
    pub baseline_http: PathBuf,
    pub baseline_io: PathBuf,
    pub stamp: PathBuf,
    /// On tmpfs: runtime and state directories, agent files, logs.
    pub work: PathBuf,
    /// On disk: the local file store.
    pub disk: PathBuf,
    started: Instant,
}

impl Bench {
    pub fn progress(&self, message: &str) {
        eprintln!("[bench {:>6.1}s] {message}", self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = fixture::remove(&self.work);
        let _ = fixture::remove(&self.disk);
    }
}

/// The figures the summary table at the top of the report needs, filled in by the benchmarks.
#[derive(Debug, Default)]
pub struct Figures {
    /// Idle VmRSS (MiB), 100 policies on the file store, and the baseline's.
    pub idle_rss_100: Option<(Summary, Summary)>,
    /// Stripped sizes in MB (10^6 bytes): keyturn, baseline-http.
    pub binary: Option<(f64, f64)>,
    /// `sync --once` with 100 policies on the file store, and the C baseline, ms.
    pub cold_start_local_100: Option<(Summary, Summary)>,
    /// The part after the store read (coalesce 0s), with a `signal` and with an `exec` notifier.
    pub change_latency: Option<(latency::Measured, latency::Measured)>,
    /// What was measured, the baseline it is compared with, and their ratio.
    pub traffic: Option<Compared>,
    pub fleet: Option<Compared>,
    /// Observations worth the agent developer's attention, derived from the measurements.
    pub notes: Vec<String>,
}

#[derive(Debug)]
struct Options {
    bin_dir: PathBuf,
    c_dir: PathBuf,
    out: PathBuf,
    build_seconds: Option<f64>,
    only: Vec<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let (mut bin_dir, mut c_dir, mut out, mut build_seconds) = (None, None, PathBuf::from("BENCHMARKS.md"), None);
    let mut only: Vec<String> = BENCHMARKS.iter().map(|s| s.to_string()).collect();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bin-dir" => bin_dir = Some(PathBuf::from(value()?)),
            "--c-dir" => c_dir = Some(PathBuf::from(value()?)),
            "--out" => out = PathBuf::from(value()?),
            "--build-seconds" => build_seconds = Some(value()?.parse().map_err(|_| "--build-seconds: not a number")?),
            "--only" => {
                only = value()?.split(',').map(str::to_owned).collect();
                if let Some(unknown) = only.iter().find(|b| !BENCHMARKS.contains(&b.as_str())) {
                    return Err(format!("--only: unknown benchmark {unknown:?}"));
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Options {
        bin_dir: bin_dir.ok_or("--bin-dir is required")?,
        c_dir: c_dir.ok_or("--c-dir is required")?,
        out,
        build_seconds,
        only,
    })
}

/// A figure beside its baseline.
#[derive(Debug)]
pub struct Compared {
    pub measured: String,
    pub baseline: String,
    pub ratio: f64,
}

fn verdict(within: bool, miss: String) -> String {
    if within { "within budget".into() } else { format!("**MISSED**: {miss}") }
}

fn summary_table(figures: &Figures) -> String {
    let mut table = String::from(
        "| budget (ARCHITECTURE.md) | target | measured | baseline, same run | ratio | verdict |\n|---|---|---|---|---:|---|\n",
    );
    let missing = "| not measured (see below) | | | |\n";
    table.push_str("| idle resident memory, 100 policies (file store) | ≤ 8 MiB | ");
    match &figures.idle_rss_100 {
        Some((keyturn, baseline)) => table.push_str(&format!(
            "{} MiB | baseline-http after 100 requests: {:.2} MiB | {} | {} |\n",
            keyturn.median_range(2),
            baseline.median,
            ratio(keyturn.median, baseline.median),
            verdict(keyturn.median <= 8.0, format!("{:.2} MiB over", keyturn.median - 8.0))
        )),
        None => table.push_str(missing),
    }
    table.push_str("| stripped release binary | ≤ 10 MB | ");
    match figures.binary {
        Some((keyturn, baseline)) => table.push_str(&format!(
            "{keyturn:.2} MB | baseline-http: {baseline:.2} MB | {} | {} |\n",
            ratio(keyturn, baseline),
            verdict(keyturn <= 10.0, format!("{:.2} MB over", keyturn - 10.0))
        )),
        None => table.push_str(missing),
    }
    table.push_str("| cold start (`sync --once`), 100 policies, file store | ≤ 1.5 × baseline | ");
    match &figures.cold_start_local_100 {
        Some((keyturn, baseline)) => table.push_str(&format!(
            "{} ms | C program, same file I/O: {} ms | **{}** | {} |\n",
            keyturn.median_range(1),
            baseline.median_range(1),
            ratio(keyturn.median, baseline.median),
            verdict(
                keyturn.median <= 1.5 * baseline.median,
                format!("{:.1}× the baseline, budget 1.5×", keyturn.median / baseline.median)
            )
        )),
        None => table.push_str(missing),
    }
    table.push_str(
        "\nThe other two budgets of ARCHITECTURE.md, measured below:\n\n\
         | budget | target | measured | baseline, same run | ratio | verdict |\n|---|---|---|---|---:|---|\n",
    );
    match &figures.traffic {
        Some(traffic) => table.push_str(&format!(
            "| store traffic at steady state | one access per policy per poll; no metadata reads | {} | {} | {:.3}× | see §5 |\n",
            traffic.measured, traffic.baseline, traffic.ratio
        )),
        None => table.push_str(
            "| store traffic at steady state | one access per policy per poll; no metadata reads | not measured | | | |\n",
        ),
    }
    match &figures.change_latency {
        Some((signal, exec)) => table.push_str(&format!(
            "| change seen → bundle swapped → app notified | ≤ 1 ms beyond the store round trip | `signal` notifier: p50 {:.2} ms, p99 {:.2} ms after the store read; `exec`: p50 {:.2} ms, p99 {:.2} ms | the suite telling the app itself: `signal` {:.2} ms, `exec` (spawning the program) {:.2} ms | `signal` {}, `exec` {} (p50) | {} |\n",
            signal.after.median,
            signal.after.p99,
            exec.after.median,
            exec.after.p99,
            signal.floor.median,
            exec.floor.median,
            ratio(signal.after.median, signal.floor.median),
            ratio(exec.after.median, exec.floor.median),
            if signal.after.p99 <= 1.0 {
                format!(
                    "within budget with `signal`; `exec` adds the program's own start ({:.2} ms beyond its floor at p50)",
                    exec.after.median - exec.floor.median
                )
            } else {
                verdict(false, format!("`signal` p50 {:.2} ms, p99 {:.2} ms", signal.after.median, signal.after.p99))
            }
        )),
        None => table.push_str(
            "| change seen → bundle swapped → app notified | ≤ 1 ms beyond the store round trip | not measured | | | |\n",
        ),
    }
    if let Some(fleet) = &figures.fleet {
        table.push_str(&format!(
            "| fleet of 200 (not budgeted) | – | {} | {} | {:.3}× | see §6 |\n",
            fleet.measured, fleet.baseline, fleet.ratio
        ));
    }
    table
}

fn header(machine: &machine::Machine, build_seconds: Option<f64>, run_seconds: f64, others: Option<f64>) -> String {
    let dirty = if machine.dirty.is_empty() {
        "clean tree".to_owned()
    } else {
        let shown: Vec<&str> = machine.dirty.iter().take(8).map(String::as_str).collect();
        format!(
            "**dirty tree**: {} uncommitted path(s): {}{}",
            machine.dirty.len(),
            shown.join(", "),
            if machine.dirty.len() > shown.len() { ", …" } else { "" }
        )
    };
    let build = build_seconds.map(|s| format!("release build {s:.0} s + ")).unwrap_or_default();
    let others = others
        .map(|cpu| {
            format!(
                "{cpu:.1} CPU-seconds, {:.0}% of the machine's {} cores",
                cpu / run_seconds / machine.cores as f64 * 100.0,
                machine.cores
            )
        })
        .unwrap_or_else(|| "unknown".into());
    format!(
        "# keyturn benchmarks\n\n\
         Generated by `scripts/bench.sh` (the `keyturn-bench` crate in `bench/`); do not edit by \
         hand. Every figure is measured beside a baseline in the same run and given as a ratio, \
         as the median of several runs with its spread.\n\n\
         - **Machine**: {} — {} cores, Linux {}, {:.1} GiB memory\n\
         - **Commit**: `{}` ({dirty})\n\
         - **Date**: {}\n\
         - **Run time**: {build}benchmarks {run_seconds:.0} s\n\
         - **Other work on the machine** while the benchmarks ran (CPU time used by anything but \
         the suite and the processes it started; it skews timings): {others}\n\n",
        machine.cpu, machine.cores, machine.kernel, machine.memory_gib, machine.commit, machine.date,
    )
}

fn section(bench: &Bench, title: &str, result: Result<String, Error>, failures: &mut usize) -> String {
    match result {
        Ok(text) => text,
        Err(error) => {
            *failures += 1;
            bench.progress(&format!("{title} FAILED: {error}"));
            format!("## {title}\n\n**Failed**: {error}\n")
        }
    }
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("keyturn-bench: {message}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let id = std::process::id();
    let bench = Bench {
        keyturn: options.bin_dir.join("keyturn"),
        emulator: options.bin_dir.join("gcp-emulator"),
        baseline_http: options.bin_dir.join("baseline-http"),
        baseline_io: options.c_dir.join("io"),
        stamp: options.c_dir.join("stamp"),
        work: PathBuf::from(format!("/dev/shm/keyturn-bench-{id}")),
        disk: PathBuf::from(format!("/var/tmp/keyturn-bench-{id}")),
        started: Instant::now(),
    };
    for binary in [&bench.keyturn, &bench.emulator, &bench.baseline_http, &bench.baseline_io, &bench.stamp] {
        if !binary.is_file() {
            eprintln!("keyturn-bench: {} is missing; run scripts/bench.sh, which builds it", binary.display());
            return ExitCode::FAILURE;
        }
    }
    let cpu_before = process::machine_and_own_cpu().ok();
    let selected = |name: &str| options.only.iter().any(|b| b == name);
    let machine = machine::describe(Path::new("."));
    let mut figures = Figures::default();
    let mut failures = 0;
    let mut sections = Vec::new();

    if selected("cold") || selected("memory") {
        match setup::Setup::prepare(&bench) {
            Ok(setup) => {
                if selected("cold") {
                    let result = cold_start::run(&bench, &setup, &mut figures);
                    sections.push(section(&bench, "1. Cold start", result, &mut failures));
                }
                if selected("memory") {
                    let result = memory::run(&bench, &setup, &mut figures);
                    sections.push(section(&bench, "2. Memory and size", result, &mut failures));
                }
            }
            Err(error) => {
                sections.push(section(&bench, "1. Cold start and 2. Memory and size", Err(error), &mut failures))
            }
        }
    }
    if selected("latency") {
        let result = latency::run(&bench, &mut figures);
        sections.push(section(&bench, "3. Change latency", result, &mut failures));
    }
    let traffic = if selected("traffic") { Some(traffic::start(&bench)) } else { None };
    if selected("rotation") {
        let result = rotation::run(&bench, &mut figures);
        sections.push(section(&bench, "4. Rotation cost", result, &mut failures));
    }
    if let Some(started) = traffic {
        let result = started.and_then(|running| traffic::finish(&bench, running, &mut figures));
        sections.push(section(&bench, "5. Store traffic", result, &mut failures));
    }
    if selected("fleet") {
        let result = fleet::run(&bench, &mut figures);
        sections.push(section(&bench, "6. Fleet", result, &mut failures));
    }

    let run_seconds = bench.started.elapsed().as_secs_f64();
    let others = match (cpu_before, process::machine_and_own_cpu().ok()) {
        (Some((busy0, own0)), Some((busy1, own1))) => Some(((busy1 - busy0) - (own1 - own0)).max(0.0)),
        _ => None,
    };
    let notes = if figures.notes.is_empty() {
        String::new()
    } else {
        format!(
            "\n## What stands out\n\n{}\n",
            figures.notes.iter().map(|n| format!("- {n}\n")).collect::<String>().trim_end()
        )
    };
    let report = format!(
        "{}## Budget vs measured\n\n{}{notes}\n{}",
        header(&machine, options.build_seconds, run_seconds, others),
        summary_table(&figures),
        sections.iter().map(|s| format!("\n{}\n", s.trim_end())).collect::<String>()
    );
    if let Err(error) = fixture::write_file(&options.out, report.as_bytes(), 0o644) {
        eprintln!("keyturn-bench: writing {}: {error}", options.out.display());
        return ExitCode::FAILURE;
    }
    bench.progress(&format!("wrote {} ({failures} benchmark(s) failed)", options.out.display()));
    if failures > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
