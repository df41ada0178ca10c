//! Benchmark 1, cold start: process start → every bundle delivered.
//!
//! `keyturn sync --once` is timed from spawn to exit (it exits once every policy is
//! delivered), and `keyturn agent` from spawn to the `READY=1` it sends to `NOTIFY_SOCKET`.
//! Every run starts from an empty runtime directory on tmpfs (and an empty state directory,
//! also on tmpfs), so every bundle is written. Runs of keyturn and of its baseline alternate,
//! after one warm-up run of each that is not counted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::emulator::Emulator;
use crate::process::{self, NotifySocket, Process, agent_command};
use crate::setup::{SIZES, Setup};
use crate::stats::{Summary, ratio};
use crate::{Bench, Error, Figures, fixture};

fn runs(size: usize, gcp: bool) -> usize {
    match (size, gcp) {
        (1000, _) => 5,
        (_, false) => 10,
        (_, true) => 7,
    }
}

fn millis(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn check(status: std::process::ExitStatus, what: &str) -> Result<(), Error> {
    if status.success() { Ok(()) } else { Err(format!("{what} failed: {status}").into()) }
}

/// `keyturn sync --once` from spawn to exit, in ms.
pub fn sync_once(bench: &Bench, agent: &fixture::Agent, credentials: Option<&Path>) -> Result<f64, Error> {
    agent.clear()?;
    let mut command = Command::new(&bench.keyturn);
    command.args(["sync", "--once", "--config"]).arg(&agent.config);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(key) = credentials {
        command.env("GOOGLE_APPLICATION_CREDENTIALS", key);
    }
    let started = Instant::now();
    let status = command.status()?;
    let elapsed = millis(started);
    check(status, "keyturn sync --once")?;
    Ok(elapsed)
}

/// `keyturn agent` from spawn to READY=1, in ms; the agent is stopped afterwards.
pub fn agent_ready(bench: &Bench, agent: &fixture::Agent, credentials: Option<&Path>) -> Result<f64, Error> {
    agent.clear()?;
    time_to_ready(bench, agent, credentials)
}

/// `keyturn agent` from spawn to READY=1 on whatever the agent's directories hold, in ms.
fn time_to_ready(bench: &Bench, agent: &fixture::Agent, credentials: Option<&Path>) -> Result<f64, Error> {
    let socket = NotifySocket::bind(&agent.config.with_file_name("notify.sock"))?;
    let mut command = agent_command(&bench.keyturn, &agent.config, &socket, credentials);
    let mut process = Process::spawn("keyturn agent", &mut command)?;
    let ready = socket.wait_ready(Duration::from_secs(60), || process.check_running())?;
    let elapsed = ready.duration_since(process.spawned).as_secs_f64() * 1000.0;
    process.stop(Duration::from_secs(10));
    Ok(elapsed)
}

/// The C program doing the same file I/O, from spawn to exit, in ms.
fn baseline_io(bench: &Bench, store: &Path, runtime_dir: &Path, size: usize) -> Result<f64, Error> {
    let mut command = Command::new(&bench.baseline_io);
    command.arg(store);
    time_io(command, runtime_dir, size)
}

/// The C program opening the same sealed entries and writing the same bundles, in ms.
fn baseline_sealed(bench: &Bench, key: &Path, cache: &Path, runtime_dir: &Path, size: usize) -> Result<f64, Error> {
    let mut command = Command::new(&bench.baseline_io);
    command.arg("--sealed").arg(key).arg(cache);
    time_io(command, runtime_dir, size)
}

fn time_io(mut command: Command, runtime_dir: &Path, size: usize) -> Result<f64, Error> {
    fixture::remove(runtime_dir)?;
    command.arg(runtime_dir).arg(size.to_string()).stdin(Stdio::null()).stdout(Stdio::null());
    let started = Instant::now();
    let status = command.status()?;
    let elapsed = millis(started);
    check(status, "baseline io")?;
    Ok(elapsed)
}

/// `baseline-http` making the same `size` access requests, from spawn to exit, in ms.
pub fn baseline_http(bench: &Bench, emulator: &Emulator, size: usize) -> Result<f64, Error> {
    let mut command = http_command(bench, emulator, size);
    command.stdin(Stdio::null()).stdout(Stdio::null());
    let started = Instant::now();
    let status = command.status()?;
    let elapsed = millis(started);
    check(status, "baseline-http")?;
    Ok(elapsed)
}

pub fn http_command(bench: &Bench, emulator: &Emulator, size: usize) -> Command {
    let mut command = Command::new(&bench.baseline_http);
    command
        .arg("--key")
        .arg(&emulator.key_file)
        .args(["--endpoint", &format!("http://127.0.0.1:{}", emulator.port), "--project", "acme-edge"])
        .args(["--prefix", "s", "--count", &size.to_string(), "--concurrency", "32"]);
    command
}

/// A node that reboots during a partition: the agent delivered from the emulator once (sealing
/// each value into its cache), then starts with its runtime directory empty and its store
/// unreachable (the endpoint and the token URI a closed port), and is timed to READY=1.
fn from_cache(bench: &Bench, setup: &Setup, dir: &Path, size: usize) -> Result<(Summary, Summary), Error> {
    fixture::fresh_dir(dir)?;
    let key = dir.join("cache.key");
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no random cache key")?;
    fixture::write_file(&key, &bytes, 0o400)?;
    let cache = format!("\n[cache]\nkey_file = \"{}\"\n", key.display());
    let online = setup.gcp_stores() + &cache;
    let spec = fixture::AgentSpec { node: "bench", policies: &setup.gcp_policies[&size], poll: "60s", stores: &online };
    let agent = fixture::agent(&dir.join("agent"), &spec)?;
    sync_once(bench, &agent, Some(&setup.emulator.key_file))?;

    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let offline = online.replace(&format!("127.0.0.1:{}", setup.emulator.port), &format!("127.0.0.1:{closed}"));
    let text = std::fs::read_to_string(&agent.config)?;
    if !text.contains(&online) {
        return Err(format!("{} does not hold the store written into it", agent.config.display()).into());
    }
    let text = text.replace(&online, &offline);
    fixture::write_file(&agent.config, text.as_bytes(), 0o644)?;
    let mut credentials: serde_json::Value = serde_json::from_slice(&std::fs::read(&setup.emulator.key_file)?)?;
    credentials["token_uri"] = format!("http://127.0.0.1:{closed}/token").into();
    let unreachable = dir.join("service-account.json");
    fixture::write_file(&unreachable, &serde_json::to_vec(&credentials)?, 0o600)?;

    let io_dir = dir.join("io");
    let sealed = agent.state_dir.join("cache");
    alternate(
        if size == 1 { 10 } else { 7 },
        || {
            fixture::remove(&agent.runtime_dir)?;
            time_to_ready(bench, &agent, Some(&unreachable))
        },
        || baseline_sealed(bench, &key, &sealed, &io_dir, size),
    )
}

/// Runs per CPU-time sample: the kernel counts children's CPU time in ticks of 10 ms, so a
/// sample is the mean over this many runs (good to about 0.5 ms).
const CPU_BATCH: usize = 20;

/// The user plus system CPU time, in ms, of one run of the process `run` spawns and waits
/// for: the mean over [`CPU_BATCH`] runs.
fn cpu_millis(mut run: impl FnMut() -> Result<f64, Error>) -> Result<f64, Error> {
    let before = process::children_cpu_seconds()?;
    for _ in 0..CPU_BATCH {
        run()?;
    }
    Ok((process::children_cpu_seconds()? - before) * 1000.0 / CPU_BATCH as f64)
}

/// Alternates `measure` and `baseline` `runs` times after one warm-up of each.
fn alternate(
    runs: usize,
    mut measure: impl FnMut() -> Result<f64, Error>,
    mut baseline: impl FnMut() -> Result<f64, Error>,
) -> Result<(Summary, Summary), Error> {
    measure()?;
    baseline()?;
    let (mut measured, mut base) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        measured.push(measure()?);
        base.push(baseline()?);
    }
    Ok((Summary::of(&measured), Summary::of(&base)))
}

fn row(store: &str, what: &str, size: usize, measured: &Summary, baseline: &Summary, baseline_name: &str) -> String {
    format!(
        "| {store} | {what} | {size} | {} | {baseline_name}: {} | **{}** |\n",
        measured.median_range(1),
        baseline.median_range(1),
        ratio(measured.median, baseline.median)
    )
}

pub fn run(bench: &Bench, setup: &Setup, figures: &mut Figures) -> Result<String, Error> {
    let dir = bench.work.join("cold");
    let mut table = String::from(
        "| store | what is timed | policies | keyturn, ms: median (min–max) | baseline, ms: median (min–max) | ratio |\n|---|---|---:|---:|---:|---:|\n",
    );
    let mut cpu = String::from(
        "| store | process | policies | keyturn, CPU ms: median (min–max) | baseline, CPU ms: median (min–max) | ratio |\n|---|---|---:|---:|---:|---:|\n",
    );
    let mut local_100 = None;
    let mut local = Vec::new();
    for size in SIZES {
        bench.progress(&format!("cold start: file store, {size} policies"));
        let spec = fixture::AgentSpec {
            node: "bench",
            policies: &setup.local_policies[&size],
            poll: "60s",
            stores: &setup.local_stores(),
        };
        let agent = fixture::agent(&dir.join(format!("local-{size}")), &spec)?;
        let io_dir = dir.join(format!("local-{size}-io"));
        let (keyturn, c) = alternate(
            runs(size, false),
            || sync_once(bench, &agent, None),
            || baseline_io(bench, &setup.store_dir, &io_dir, size),
        )?;
        table.push_str(&row("file", "`sync --once`", size, &keyturn, &c, "C io"));
        local.push((size, keyturn.median, c.median));
        if size == 100 {
            figures.cold_start_local_100 = Some((keyturn, c));
            local_100 = Some((agent, c));
        }
    }
    if let Some((agent, c)) = &local_100 {
        bench.progress("cold start: file store, 100 policies, agent to READY=1");
        let ready: Vec<f64> = (0..7).map(|_| agent_ready(bench, agent, None)).collect::<Result<_, _>>()?;
        table.push_str(&row("file", "`agent` → READY=1", 100, &Summary::of(&ready), c, "C io"));
    }
    let key = setup.emulator.key_file.clone();
    for size in SIZES {
        bench.progress(&format!("cold start: emulator, {size} policies"));
        let spec = fixture::AgentSpec {
            node: "bench",
            policies: &setup.gcp_policies[&size],
            poll: "60s",
            stores: &setup.gcp_stores(),
        };
        let agent = fixture::agent(&dir.join(format!("gcp-{size}")), &spec)?;
        let (keyturn, http) = alternate(
            runs(size, true),
            || sync_once(bench, &agent, Some(&key)),
            || baseline_http(bench, &setup.emulator, size),
        )?;
        table.push_str(&row("emulator", "`sync --once`", size, &keyturn, &http, "HTTP"));
        if size == 1 {
            // What a process start costs the machine, apart from how long it waits for the
            // emulator: the CPU time of the process, from its waited-for exit.
            bench.progress("cold start: emulator, 1 policy, CPU time");
            let (keyturn, http) = alternate(
                runs(size, true),
                || cpu_millis(|| sync_once(bench, &agent, Some(&key))),
                || cpu_millis(|| baseline_http(bench, &setup.emulator, size)),
            )?;
            cpu.push_str(&row("emulator, service-account key", "`sync --once`", size, &keyturn, &http, "HTTP"));
        }
        if size == 100 {
            bench.progress("cold start: emulator, 100 policies, agent to READY=1");
            let ready: Vec<f64> = (0..7).map(|_| agent_ready(bench, &agent, Some(&key))).collect::<Result<_, _>>()?;
            table.push_str(&row("emulator", "`agent` → READY=1", 100, &Summary::of(&ready), &http, "HTTP"));
        }
    }
    // The same with a federated identity: a subject token read from a file and exchanged at
    // STS, where the key file's RS256 assertion was signed.
    let federated = setup.emulator.external_account.clone();
    for size in [1, 100] {
        bench.progress(&format!("cold start: emulator, external account, {size} policies"));
        let spec = fixture::AgentSpec {
            node: "bench",
            policies: &setup.gcp_policies[&size],
            poll: "60s",
            stores: &setup.gcp_stores(),
        };
        let agent = fixture::agent(&dir.join(format!("gcp-wif-{size}")), &spec)?;
        let (keyturn, http) = alternate(
            runs(size, true),
            || sync_once(bench, &agent, Some(&federated)),
            || baseline_http(bench, &setup.emulator, size),
        )?;
        table.push_str(&row("emulator, external account", "`sync --once`", size, &keyturn, &http, "HTTP"));
        if size == 100 {
            bench.progress("cold start: emulator, external account, 100 policies, agent to READY=1");
            let ready: Vec<f64> =
                (0..7).map(|_| agent_ready(bench, &agent, Some(&federated))).collect::<Result<_, _>>()?;
            table.push_str(&row(
                "emulator, external account",
                "`agent` → READY=1",
                100,
                &Summary::of(&ready),
                &http,
                "HTTP",
            ));
        }
    }
    for size in [1, 100] {
        bench.progress(&format!("cold start: store unreachable, {size} policies, agent to READY=1 from the cache"));
        let (keyturn, c) = from_cache(bench, setup, &dir.join(format!("cache-{size}")), size)?;
        table.push_str(&row("unreachable", "`agent` → READY=1 from the cache", size, &keyturn, &c, "C unseal"));
    }
    fixture::remove(&dir)?;
    // The cost of one more policy: the slope between the smallest and the largest run.
    let marginal = match (local.first(), local.last()) {
        (Some(&(n0, k0, c0)), Some(&(n1, k1, c1))) if n1 > n0 => {
            let (keyturn, c) = ((k1 - k0) / (n1 - n0) as f64 * 1000.0, (c1 - c0) / (n1 - n0) as f64 * 1000.0);
            let fixed = (local[0].1, local[0].2);
            let missed = keyturn > 1.5 * c || fixed.0 > 1.5 * fixed.1;
            figures.notes.extend(missed.then(|| format!(
                "Cold start on the file store: each additional policy costs keyturn {keyturn:.0} µs against {c:.0} µs for \
                 the C program doing the same file I/O ({}), and a one-policy start costs {:.1} ms against {:.1} ms \
                 ({}).",
                ratio(keyturn, c),
                fixed.0,
                fixed.1,
                ratio(fixed.0, fixed.1)
            )));
            format!(
                "\n\nMarginal cost per policy on the file store (slope from {n0} to {n1} policies): keyturn \
                 {keyturn:.0} µs, C baseline {c:.0} µs ({}).",
                ratio(keyturn, c)
            )
        }
        _ => String::new(),
    };
    Ok(format!(
        "## 1. Cold start\n\n\
         **How measured.** From spawn to exit of `keyturn sync --once` (which exits once every policy \
         is delivered), and from spawn to the `READY=1` datagram of `keyturn agent` on a \
         `NOTIFY_SOCKET` the suite listens on. Policy i reads its own secret and delivers it raw as \
         the one file of its own bundle (N policies: N bundles, N files). Each run starts with an \
         empty runtime directory and state directory on /dev/shm (tmpfs); the file store is on disk \
         and read-only, so page-cached after a warm-up run. Runs of keyturn and of the baseline \
         alternate after one uncounted warm-up of each; 10 runs (file store, 1 and 100 policies), \
         7 (emulator, 1 and 100, and READY) or 5 (1,000).\n\n\
         **Baselines.** *File store*: `bench/baseline/io.c` (gcc -O2), timed the same way, process \
         start included: per policy it reads `secret.json`, finds the `current` version, reads \
         `versions/N` and checks its CRC32C, then writes the bundle as keyturn does (mkdir version \
         dir; create the file 0400 with O_EXCL, write, fsync; same for `..keyturn.json`; fsync the \
         version dir; visible symlink; `..data_tmp` symlink renamed over `..data`; fsync the bundle \
         dir), and fsyncs the runtime directory once. It does none of keyturn's other work: no \
         configuration parsing and validation, no tmpfs check, no reading of what is already on \
         disk, no log line, no status file. *Emulator*: `baseline-http` (tokio current-thread, \
         reqwest + rustls + aws-lc-rs) does one JWT-bearer token exchange with the same key file \
         (RS256, as gcp_auth does) and the same number of `versions/current:access` requests with \
         32 in flight, parsing each response and checking its CRC32C, and writes nothing; the \
         emulator runs with authentication on for both (the agent cannot go without \
         credentials). That ratio is the cost of everything keyturn does beyond reading the \
         values over HTTP: configuration, delivery to tmpfs, logging, status. In both programs \
         the token exchange costs tens of milliseconds of CPU before the first request (loading \
         the RSA key from the key file and signing the assertion with aws-lc-rs), which is most \
         of a one-policy start. *External account* rows: keyturn authenticates with the emulator's \
         `--print-external-account` configuration instead (Workload Identity Federation: the \
         subject token read from a file, one STS exchange, no RSA signing); the baseline is the \
         same key-file `baseline-http`. *Store unreachable* (a node that reboots during a partition): the \
         agent, with a cache key, delivers from the emulator once (sealing each value into \
         `STATE_DIR/cache`), then starts with its runtime directory empty and the store's endpoint \
         and token URI on a closed port, and is timed from spawn to `READY=1`, which it sends once \
         every bundle is rebuilt from the cache (its store reads fail afterwards). The baseline is \
         `io --sealed` (same C program, linked with OpenSSL's libcrypto): per policy it reads the \
         sealed entry, parses its header, decrypts it with AES-256-GCM (the header as associated \
         data), checks the value's CRC32C, and writes the same bundle as above; 10 runs (1 policy) \
         or 7 (100).\n\n{table}{marginal}\n\n\
         **CPU time of a process start.** The same `sync --once` against the emulator, one policy, \
         and the same `baseline-http`, alternated the same way: the user plus system CPU time of \
         each process from its waited-for exit (`cutime` + `cstime` of the suite, counted in clock \
         ticks of 10 ms, so each sample is the mean of 20 runs, good to about 0.5 ms; the median \
         and spread are over the samples). This is what a start costs the machine apart from \
         waiting for the emulator.\n\n{cpu}"
    ))
}
