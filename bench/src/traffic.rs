//! Benchmark 5, store traffic: requests per node per hour, by type, at steady state.
//!
//! One agent with 20 policies at poll 2 s against an emulator of its own; the emulator's
//! `/emulator/requests` is read when the agent is READY and again at least 60 s later. The
//! window runs while the rotation benchmark does (it uses a different emulator), which does
//! not change what is counted: the agent's requests are paced by its own timers.

use std::time::{Duration, Instant};

use crate::emulator::{self, Counts, Emulator, METHODS};
use crate::process::{NotifySocket, Process, agent_command};
use crate::{Bench, Error, Figures, fixture};

const POLICIES: usize = 20;
const POLL_SECONDS: f64 = 2.0;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Running {
    emulator: Emulator,
    agent: Process,
    seeded: Counts,
    start: Counts,
    started: Instant,
    _notify: NotifySocket,
}

pub fn start(bench: &Bench) -> Result<Running, Error> {
    let dir = fixture::fresh_dir(&bench.work.join("traffic"))?;
    bench.progress(&format!("store traffic: {POLICIES} policies, poll {POLL_SECONDS}s, window starts"));
    let emulator = Emulator::start(&bench.emulator, &dir.join("emulator"), false)?;
    for index in 0..POLICIES {
        emulator.create_secret(&format!("s{index:04}"), &fixture::value(index, 1))?;
    }
    let policies = fixture::pull_policies(&dir.join("policies"), "edge", POLICIES)?;
    let stores = fixture::gcp_store_toml(emulator.port);
    let agent = fixture::agent(
        &dir.join("agent"),
        &fixture::AgentSpec { node: "bench", policies: &policies, poll: &format!("{POLL_SECONDS}s"), stores: &stores },
    )?;
    let notify = NotifySocket::bind(&dir.join("notify.sock"))?;
    let seeded = emulator.counts()?;
    let mut process = Process::spawn(
        "keyturn agent",
        &mut agent_command(&bench.keyturn, &agent.config, &notify, Some(&emulator.key_file)),
    )?;
    notify.wait_ready(Duration::from_secs(30), || process.check_running())?;
    let start = emulator.counts()?;
    Ok(Running { emulator, agent: process, seeded, start, started: Instant::now(), _notify: notify })
}

pub fn finish(bench: &Bench, mut running: Running, figures: &mut Figures) -> Result<String, Error> {
    if let Some(left) = WINDOW.checked_sub(running.started.elapsed()) {
        bench.progress(&format!("store traffic: {:.0} s left in the window", left.as_secs_f64()));
        std::thread::sleep(left);
    }
    running.agent.check_running()?;
    let end = running.emulator.counts()?;
    let window = running.started.elapsed().as_secs_f64();
    running.agent.stop(Duration::from_secs(10));
    let startup = emulator::difference(&running.seeded, &running.start);
    let steady = emulator::difference(&running.start, &end);
    let per_hour = |n: u64| n as f64 * 3600.0 / window;
    let expected_access = POLICIES as f64 * 3600.0 / POLL_SECONDS;
    let mut table = String::from(
        "| request | start-up (spawn → READY) | in the window | per node per hour | README's arithmetic, per hour | ratio |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for method in METHODS {
        let (first, counted) = (*startup.get(method).unwrap_or(&0), *steady.get(method).unwrap_or(&0));
        let expected = match method {
            "access" => Some(expected_access),
            "token" => None,
            _ => Some(0.0),
        };
        if first == 0 && counted == 0 && method != "access" && method != "token" {
            continue;
        }
        let (expected_text, ratio) = match expected {
            Some(e) if e > 0.0 => (format!("{e:.0} (N × 3600 / P)"), format!("{:.3}×", per_hour(counted) / e)),
            Some(_) => ("0".into(), if counted == 0 { "–".into() } else { "**not 0**".into() }),
            None => ("~1 (tokens live 1 h: none expected in the window)".into(), "–".into()),
        };
        table.push_str(&format!(
            "| {method} | {first} | {counted} | {:.0} | {expected_text} | {ratio} |\n",
            per_hour(counted)
        ));
    }
    let metadata = |counts: &Counts| -> u64 {
        counts.iter().filter(|(m, _)| *m != "access" && *m != "token").map(|(_, n)| n).sum()
    };
    table.push_str(&format!(
        "| every other method (metadata reads, writes) | {} | {} | {:.0} | 0 | {} |\n",
        metadata(&startup),
        metadata(&steady),
        per_hour(metadata(&steady)),
        if metadata(&steady) == 0 { "–" } else { "**not 0**" }
    ));
    let others: u64 = steady.iter().filter(|(m, _)| *m != "access" && *m != "token").map(|(_, n)| n).sum();
    let access = per_hour(*steady.get("access").unwrap_or(&0));
    figures.traffic = Some(crate::Compared {
        measured: format!("{access:.0} access/h; {others} other Secret Manager requests in {window:.0} s"),
        baseline: format!("the README's arithmetic: {expected_access:.0} access/h, nothing else"),
        ratio: access / expected_access,
    });
    drop(running);
    fixture::remove(&bench.work.join("traffic"))?;
    Ok(format!(
        "## 5. Store traffic\n\n\
         **How measured.** One agent, N = {POLICIES} policies (one secret each), poll P = \
         {POLL_SECONDS} s with jitter 10%, against an emulator of its own. The emulator's request \
         counts (`/emulator/requests`, every request received, by method) are read after seeding, \
         at the agent's READY=1, and {window:.1} s later; the window's counts are scaled to one \
         hour. The window overlaps the rotation benchmark (another emulator and agent), which \
         changes no count here: the agent's requests are paced by its own timers.\n\n\
         **Baseline.** The README's arithmetic: N × 3600 / P access requests per node per hour, \
         about one token request per hour (tokens live 1 h, so a {window:.0} s window should see \
         none after start-up), and no metadata reads or writes at steady state.\n\n{table}"
    ))
}
