//! Benchmark 6, fleet: 200 agent processes against one emulator with Google's quotas on.
//!
//! Real processes rather than a simulation: each agent has its own runtime, timers, jitter,
//! HTTP client, connections and token, so the request pattern the emulator sees is the one a
//! fleet makes, and nothing in it is the suite's model of an agent. Only the emulator and the
//! machine's cores are shared. (a) the request rate per second at steady state; (b) how long
//! until every node delivers a newly promoted version.

use std::time::{Duration, Instant};

use crate::emulator::{self, Emulator};
use crate::process::{self, NotifySocket, Process};
use crate::stats::Summary;
use crate::{Bench, Error, Figures, fixture};

const NODES: usize = 200;
const POLICIES: usize = 10;
const POLL_SECONDS: f64 = 5.0;
const STEADY: Duration = Duration::from_secs(40);
const PROMOTIONS: usize = 2;

pub fn run(bench: &Bench, figures: &mut Figures) -> Result<String, Error> {
    let dir = fixture::fresh_dir(&bench.work.join("fleet"))?;
    let emulator = Emulator::start(&bench.emulator, &dir.join("emulator"), true)?;
    for index in 0..POLICIES {
        emulator.create_secret(&format!("s{index:04}"), &fixture::value(index, 1))?;
    }
    let policies = fixture::pull_policies(&dir.join("policies"), "edge", POLICIES)?;
    let stores = fixture::gcp_store_toml(emulator.port);
    let notify = NotifySocket::bind(&dir.join("notify.sock"))?;
    let poll = format!("{POLL_SECONDS}s");
    let mut nodes = Vec::new();
    for index in 0..NODES {
        let node = format!("node-{index:03}");
        nodes.push(fixture::agent(
            &dir.join(&node),
            &fixture::AgentSpec { node: &node, policies: &policies, poll: &poll, stores: &stores },
        )?);
    }

    bench
        .progress(&format!("fleet: starting {NODES} agents ({POLICIES} policies each, poll {poll}, Google quotas on)"));
    let before_start = emulator.counts()?;
    let started = Instant::now();
    let mut agents = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let log = std::fs::File::create(node.config.with_file_name("agent.log"))?;
        let mut command = process::agent_command(&bench.keyturn, &node.config, &notify, Some(&emulator.key_file));
        command.args(["--log", "info,keyturn::store::gcp=debug"]).stderr(log);
        agents.push(Process::spawn(format!("agent node-{index:03}"), &mut command)?);
    }
    let spawned = started.elapsed();
    for _ in 0..NODES {
        notify.wait_ready(Duration::from_secs(120), || agents.iter_mut().try_for_each(Process::check_running))?;
    }
    let all_ready = started.elapsed();
    let startup = emulator::difference(&before_start, &emulator.counts()?);

    // (a) Steady state: one sample of the counts per second.
    std::thread::sleep(Duration::from_secs(3));
    bench.progress(&format!(
        "fleet: all READY after {:.1} s; {} s of steady state",
        all_ready.as_secs_f64(),
        STEADY.as_secs()
    ));
    let cpu_before: f64 = agents.iter().map(|a| process::cpu_seconds(a.pid()).unwrap_or(0.0)).sum();
    let window_start = emulator.counts()?;
    let mut previous = (Instant::now(), window_start.clone());
    let mut rates = Vec::new();
    let window_started = Instant::now();
    while window_started.elapsed() < STEADY {
        std::thread::sleep(Duration::from_secs(1).saturating_sub(previous.0.elapsed()));
        let now = (Instant::now(), emulator.counts()?);
        let access = now.1.get("access").unwrap_or(&0) - previous.1.get("access").unwrap_or(&0);
        rates.push(access as f64 / now.0.duration_since(previous.0).as_secs_f64());
        previous = now;
    }
    let window = window_started.elapsed().as_secs_f64();
    let steady = emulator::difference(&window_start, &previous.1);
    let cpu_after: f64 = agents.iter().map(|a| process::cpu_seconds(a.pid()).unwrap_or(0.0)).sum();
    let resident = Summary::of(
        &agents.iter().filter_map(|a| process::memory(a.pid()).ok()).map(|m| m.rss as f64 / 1024.0).collect::<Vec<_>>(),
    );
    for agent in &mut agents {
        agent.check_running()?;
    }

    // (b) Propagation: promote, then watch every node's delivered file.
    let mut spread = Vec::new();
    for promotion in 0..PROMOTIONS {
        std::thread::sleep(Duration::from_millis(1300 * promotion as u64 + 700));
        let value = fixture::value(0, promotion as u64 + 2);
        emulator.promote("s0000", &value)?;
        let promoted = Instant::now();
        bench.progress(&format!("fleet: promotion {} of {PROMOTIONS}, watching {NODES} nodes", promotion + 1));
        let mut pending: Vec<usize> = (0..NODES).collect();
        while !pending.is_empty() {
            if promoted.elapsed() > Duration::from_secs(60) {
                return Err(format!("{} nodes still without the new version after 60 s", pending.len()).into());
            }
            pending.retain(|&node| {
                let file = nodes[node].runtime_dir.join("b0000/value");
                if std::fs::read(file).is_ok_and(|held| held == value) {
                    spread.push(promoted.elapsed().as_secs_f64());
                    false
                } else {
                    true
                }
            });
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for agent in &agents {
        agent.signal_stop();
    }
    drop(agents);

    let (mut exhausted, mut retried, mut unwatched) = (0, 0, 0);
    for node in &nodes {
        let log = std::fs::read_to_string(node.config.with_file_name("agent.log")).unwrap_or_default();
        exhausted += log
            .lines()
            .filter(|l| l.contains("RESOURCE_EXHAUSTED") || l.contains("Quota exceeded") || l.contains("HTTP 429"))
            .count();
        retried += log.lines().filter(|l| l.contains("access retried")).count();
        unwatched += usize::from(log.contains("cannot watch configuration files"));
    }
    let inotify_limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances").unwrap_or_default();
    let inotify = inotify_limit.trim();
    drop(emulator);
    fixture::remove(&dir)?;

    let expected = (NODES * POLICIES) as f64 / POLL_SECONDS;
    let rate = Summary::of(&rates);
    let propagation = Summary::of(&spread);
    figures.fleet = Some(crate::Compared {
        measured: format!(
            "{:.0} access/s, peak/mean {:.2}, {exhausted} quota errors; new version on every node: p50 {:.2} s, max {:.2} s",
            rate.mean,
            rate.max / rate.mean,
            propagation.median,
            propagation.max
        ),
        baseline: format!(
            "the README's arithmetic: {expected:.0} access/s; a change seen within a poll ({POLL_SECONDS} s)"
        ),
        ratio: rate.mean / expected,
    });
    let half = rates.len() / 2;
    let peak_to_mean = |part: &[f64]| {
        let summary = Summary::of(part);
        summary.max / summary.mean
    };
    let (early, late) = (peak_to_mean(&rates[..half]), peak_to_mean(&rates[half..]));
    if early.max(late) > 1.5 {
        figures.notes.push(format!(
            "Jitter does not spread a fleet that starts together: {NODES} agents, all READY within {:.1} s of the \
             first spawn, still poll in waves of period P = {POLL_SECONDS} s {:.0} s later (peak-to-mean \
             {early:.2} in the first half of the window, {late:.2} in the second; 1.0 is even). ±10% per wait \
             only drifts the phases apart slowly; a random first delay (0 to P) would spread them at once.",
            all_ready.as_secs_f64(),
            all_ready.as_secs_f64() + 3.0 + STEADY.as_secs_f64()
        ));
    }
    let series = rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" ");
    let others: Vec<String> =
        steady.iter().filter(|(m, n)| *m != "access" && **n > 0).map(|(m, n)| format!("{m} {n}")).collect();
    let cpu = cpu_after - cpu_before;
    let steady_access = *steady.get("access").unwrap_or(&0) as f64;
    Ok(format!(
        "## 6. Fleet\n\n\
         **How measured.** {NODES} `keyturn agent` processes (node-000 … node-{:03}), each with its \
         own agent file, runtime and state directories on tmpfs, node name, `[admin] listen = \
         \"off\"`, {POLICIES} policies (the same {POLICIES} secrets on every node, as a fleet shares \
         them), poll {POLL_SECONDS} s, jitter 10%, against one emulator started with \
         `--google-quotas` (90,000 access, 600 read, 600 write requests per minute). They are \
         processes, not a simulation: each has its own timers, jitter, HTTP client, connections \
         and token, so the emulator sees what a fleet sends; only the emulator and the machine's \
         {} cores are shared. All {NODES} are spawned at once ({:.2} s to spawn, every READY=1 \
         after {:.1} s; start-up requests: {}). (a) After 3 s more, the emulator's access count is \
         sampled once a second for {window:.0} s. (b) Then secret `s0000` gets a new version \
         (REST promotion), {PROMOTIONS} times, and the suite reads every node's delivered \
         `b0000/value` every 20 ms until all {NODES} hold it; the time is from the promotion's \
         response. Quota errors are counted from the agents' logs (lines with \
         RESOURCE_EXHAUSTED or a quota message), retries from their `access retried` debug lines. \
         {unwatched} of the {NODES} agents logged `cannot watch configuration files … Too many open \
         files`: all agents run as one user here, and the kernel allows {inotify} inotify instances per \
         user (fs.inotify.max_user_instances); they still poll and deliver (only live reload on a \
         file change is off), and a real node runs one agent.\n\n\
         **Baseline.** (a) The README's arithmetic, nodes × N / P = {expected:.0} access requests \
         per second ({:.0} per minute, {:.0}% of the access quota). (b) The poll interval: a \
         node sees a change at its next poll, so the slowest node should take at most P × 1.1 = \
         {:.1} s plus one access and a bundle write.\n\n\
         | (a) steady state | measured | expected | ratio |\n|---|---:|---:|---:|\n\
         | access requests per second, mean | {:.1} | {expected:.0} | {:.3}× |\n\
         | per-second rate, median (min–max) | {} | – | – |\n\
         | peak-to-mean (highest 1 s / mean) | {:.2} (first half {early:.2}, second half {late:.2}) | 1.0 is perfectly even | {:.2}× |\n\
         | quota errors (429 RESOURCE_EXHAUSTED) / access retries | {exhausted} / {retried} | 0 | – |\n\
         | other Secret Manager requests in the window | {} | none | – |\n\
         | agent CPU, all {NODES} nodes | {:.1} s in {window:.0} s = {:.0} µs per access | – | – |\n\
         | agent VmRSS, median (min–max) MiB | {} | – | – |\n\n\
         Access requests per second, one sample per second:\n\n```text\n{series}\n```\n\n\
         | (b) new version on every node | p50 | p99 | max | poll P | max / P |\n|---|---:|---:|---:|---:|---:|\n\
         | seconds from promotion ({} node-deliveries) | {:.2} | {:.2} | {:.2} | {POLL_SECONDS} | {:.2} |\n",
        NODES - 1,
        std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        spawned.as_secs_f64(),
        all_ready.as_secs_f64(),
        startup.iter().filter(|(_, n)| **n > 0).map(|(m, n)| format!("{m} {n}")).collect::<Vec<_>>().join(", "),
        expected * 60.0,
        expected * 60.0 / 90_000.0 * 100.0,
        POLL_SECONDS * 1.1,
        rate.mean,
        rate.mean / expected,
        rate.median_range(0),
        rate.max / rate.mean,
        rate.max / rate.mean,
        if others.is_empty() { "none".into() } else { others.join(", ") },
        cpu,
        cpu / steady_access.max(1.0) * 1e6,
        resident.median_range(2),
        spread.len(),
        propagation.median,
        propagation.p99,
        propagation.max,
        propagation.max / POLL_SECONDS,
    ))
}
