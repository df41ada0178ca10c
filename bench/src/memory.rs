//! Benchmark 2, memory and size: the resident memory of an idle agent, and the stripped binary.
//!
//! Five agents per configuration run at once (each with its own runtime and state directory);
//! each is read from /proc/PID/status 2 s after its READY=1, when everything is delivered and
//! nothing is due (poll 60 s). The baseline, `baseline-http`, is read 2 s after its 100
//! requests, with its client, connections and runtime still alive.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{Memory, NotifySocket, Process, agent_command, memory};
use crate::setup::{SIZES, Setup};
use crate::stats::{Summary, ratio};
use crate::{Bench, Error, Figures, cold_start, fixture};

const INSTANCES: usize = 5;
const SETTLE: Duration = Duration::from_secs(2);

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Median VmRSS, RssAnon and RssFile in MiB, and the spread of VmRSS.
#[derive(Debug)]
struct Resident {
    rss: Summary,
    anon: f64,
    file: f64,
}

impl Resident {
    fn of(samples: &[Memory]) -> Resident {
        let median = |f: fn(&Memory) -> u64| Summary::of(&samples.iter().map(|m| mib(f(m))).collect::<Vec<_>>()).median;
        Resident {
            rss: Summary::of(&samples.iter().map(|m| mib(m.rss)).collect::<Vec<_>>()),
            anon: median(|m| m.anon),
            file: median(|m| m.file),
        }
    }
}

fn idle_agents(bench: &Bench, dir: &Path, spec: &fixture::AgentSpec, key: Option<&Path>) -> Result<Resident, Error> {
    let mut agents = Vec::new();
    for instance in 0..INSTANCES {
        let files = fixture::agent(&dir.join(format!("agent-{instance}")), spec)?;
        let socket = NotifySocket::bind(&files.config.with_file_name("notify.sock"))?;
        let mut command = agent_command(&bench.keyturn, &files.config, &socket, key);
        agents.push((Process::spawn("keyturn agent", &mut command)?, socket));
    }
    let mut samples = Vec::new();
    let mut ready = Vec::new();
    for (process, socket) in &mut agents {
        ready.push(socket.wait_ready(Duration::from_secs(60), || process.check_running())?);
    }
    for ((process, _), at) in agents.iter_mut().zip(ready) {
        if let Some(wait) = (at + SETTLE).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        process.check_running()?;
        samples.push(memory(process.pid())?);
    }
    for (process, _) in &agents {
        process.signal_stop();
    }
    drop(agents);
    fixture::remove(dir)?;
    Ok(Resident::of(&samples))
}

fn idle_baseline(bench: &Bench, setup: &Setup) -> Result<Resident, Error> {
    let mut processes = Vec::new();
    for _ in 0..INSTANCES {
        let mut command = cold_start::http_command(bench, &setup.emulator, 100);
        command.arg("--hold").stdin(Stdio::piped()).stdout(Stdio::piped());
        processes.push(Process::spawn("baseline-http", &mut command)?);
    }
    let mut samples = Vec::new();
    for process in &mut processes {
        let stdout = process.child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // "micros=…", then "holding" once the requests are done.
        while let Some(line) = lines.next().transpose()? {
            if line == "holding" {
                break;
            }
        }
    }
    std::thread::sleep(SETTLE);
    for process in &mut processes {
        process.check_running()?;
        samples.push(memory(process.pid())?);
        drop(process.child.stdin.take());
    }
    Ok(Resident::of(&samples))
}

/// The size in bytes of `binary` as built, and of a copy run through `strip` (when there is one).
fn sizes(binary: &Path, scratch: &Path) -> Result<(u64, Option<u64>), Error> {
    let built = std::fs::metadata(binary)?.len();
    let copy = scratch.join(binary.file_name().ok_or("no file name")?);
    let status = Command::new("strip").arg("-o").arg(&copy).arg(binary).stderr(Stdio::null()).status();
    let stripped = match status {
        Ok(s) if s.success() => Some(std::fs::metadata(&copy)?.len()),
        _ => None,
    };
    let _ = std::fs::remove_file(&copy);
    Ok((built, stripped))
}

fn size_row(name: &str, (built, stripped): (u64, Option<u64>), baseline: Option<u64>) -> String {
    let size = stripped.unwrap_or(built);
    format!(
        "| `{name}` | {:.2} MB ({:.2} MiB) | {built} | {} | {} |\n",
        size as f64 / 1e6,
        size as f64 / 1048576.0,
        stripped.map(|s| s.to_string()).unwrap_or_else(|| "no `strip` here".into()),
        baseline.map(|b| ratio(size as f64, b as f64)).unwrap_or_else(|| "–".into()),
    )
}

pub fn run(bench: &Bench, setup: &Setup, figures: &mut Figures) -> Result<String, Error> {
    let dir = bench.work.join("memory");
    let mut table = String::from(
        "| agent | policies | VmRSS MiB: median (min–max) | RssAnon MiB | RssFile MiB | baseline VmRSS MiB | ratio |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    bench.progress("memory: baseline-http after 100 requests");
    let baseline = idle_baseline(bench, setup)?;
    let local = setup.local_stores();
    let gcp = setup.gcp_stores();
    let mut configurations: Vec<(&str, usize, &Path, &str, Option<&Path>)> = SIZES
        .iter()
        .map(|&size| ("file store", size, setup.local_policies[&size].as_path(), local.as_str(), None))
        .collect();
    configurations.push(("emulator", 100, &setup.gcp_policies[&100], &gcp, Some(&setup.emulator.key_file)));
    configurations.push((
        "emulator, external account",
        100,
        &setup.gcp_policies[&100],
        &gcp,
        Some(&setup.emulator.external_account),
    ));
    let mut anon = Vec::new();
    for (store, size, policies, stores, key) in configurations {
        bench.progress(&format!("memory: {INSTANCES} idle agents, {store}, {size} policies"));
        let spec = fixture::AgentSpec { node: "bench", policies, poll: "60s", stores };
        let resident = idle_agents(bench, &dir.join(format!("{store}-{size}").replace(' ', "-")), &spec, key)?;
        table.push_str(&format!(
            "| {store} | {size} | {} | {:.2} | {:.2} | {:.2} | {} |\n",
            resident.rss.median_range(2),
            resident.anon,
            resident.file,
            baseline.rss.median,
            ratio(resident.rss.median, baseline.rss.median)
        ));
        if store == "file store" {
            anon.push((size, resident.anon, resident.rss.median));
        }
        if store == "file store" && size == 100 {
            figures.idle_rss_100 = Some((resident.rss, baseline.rss));
        }
    }
    table.push_str(&format!(
        "| *baseline-http* | *100 requests* | {} | {:.2} | {:.2} | – | – |\n",
        baseline.rss.median_range(2),
        baseline.anon,
        baseline.file
    ));

    bench.progress("size: stripped binaries");
    let keyturn = sizes(&bench.keyturn, &bench.work)?;
    let http = sizes(&bench.baseline_http, &bench.work)?;
    let (keyturn_size, http_size) = (keyturn.1.unwrap_or(keyturn.0), http.1.unwrap_or(http.0));
    figures.binary = Some((keyturn_size as f64 / 1e6, http_size as f64 / 1e6));
    let sizes = format!(
        "| binary | stripped size | bytes as built (profile has `strip = true`) | bytes after `strip` | ratio |\n|---|---:|---:|---:|---:|\n{}{}",
        size_row("keyturn", keyturn, Some(http_size)),
        size_row("baseline-http", http, None),
    );
    fixture::remove(&dir)?;
    let per_policy = match (anon.first(), anon.last()) {
        (Some(&(n0, a0, r0)), Some(&(n1, a1, r1))) if n1 > n0 => {
            let kib = (a1 - a0) * 1024.0 / (n1 - n0) as f64;
            figures.notes.push(format!(
                "Idle memory grows by about {kib:.1} KiB of anonymous memory per policy ({r0:.2} MiB with {n0}, \
                 {r1:.2} MiB with {n1} on the file store); file-backed pages of the binary are about \
                 {:.1} MiB of every figure.",
                anon.iter().map(|a| a.2 - a.1).sum::<f64>() / anon.len() as f64
            ));
            format!(
                "\n\nPer policy, idle RssAnon grows by about {kib:.1} KiB (slope from {n0} to {n1} policies on \
                 the file store)."
            )
        }
        _ => String::new(),
    };
    Ok(format!(
        "## 2. Memory and size\n\n\
         **How measured.** Resident memory from /proc/PID/status of an idle `keyturn agent`: {INSTANCES} \
         agents per configuration run side by side (own runtime and state directories on tmpfs, \
         poll 60 s, admin listener off); each is read {}s after its READY=1, when every policy is \
         delivered and nothing is due. VmRSS = RssAnon + RssFile + RssShmem. RssFile is the \
         file-backed pages mapped in, mostly the binary itself; compare it with the binary's size \
         below: nearly all of a page-cached binary ends up mapped, so each MB of binary is about \
         a MiB of resident memory. The ratio is keyturn's median VmRSS over the baseline's.\n\n\
         **Baseline.** `baseline-http` (bare tokio current-thread + reqwest + rustls + aws-lc-rs; \
         one token exchange, then 100 `access` requests, 32 in flight), read {}s after its last \
         request with its client, pooled connections and runtime still alive; {INSTANCES} instances. \
         Its binary is built with the same release profile as keyturn (LTO, codegen-units = 1, \
         strip, panic = abort) and gets the same reqwest features (cargo unifies them).\n\n{table}{per_policy}\n\n{sizes}",
        SETTLE.as_secs(),
        SETTLE.as_secs(),
    ))
}
