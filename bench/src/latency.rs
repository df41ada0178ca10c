//! Benchmark 3, change latency: a new version is promoted in the store; how long until the
//! application is told.
//!
//! One agent on the emulator (poll 1 s, jitter 10%) delivers one policy, told to the
//! application in two ways, one after the other: `signal` (SIGHUP to `stamp --signal`, a
//! running process that stamps the time it got the signal and the version in the bundle's
//! manifest) and `exec` (`stamp FILE`, spawned per change, stamping its start and
//! KEYTURN_VERSION); bench/baseline/stamp.c is both. The suite promotes a new version through
//! the emulator's REST API (add a version, move `current`), notes the wall-clock time when the
//! promotion's response arrived, and waits for the stamp. The agent's JSON debug log gives, per
//! change, when the bundle write started (`bundle swapped` timestamp − its `micros`), which
//! splits the wait for the next poll from the part after the store read.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::emulator::Emulator;
use crate::process::{NotifySocket, Process, agent_command};
use crate::stats::{Summary, ratio};
use crate::{Bench, Error, Figures, fixture};

const CHANGES: usize = 60;
const POLICY: &str = "latency";

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146097 + day_of_era - 719468
}

/// "2026-11-28T20:10:09.882698Z" → seconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<f64> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.split(':');
    let (hour, minute) = (time.next()?.parse::<i64>().ok()?, time.next()?.parse::<i64>().ok()?);
    let second: f64 = time.next()?.parse().ok()?;
    Some((days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60) as f64 + second)
}

/// A small deterministic generator for the pauses between changes, so that promotions land at
/// every phase of the poll cycle.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn next_millis(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Stamps by version: "SECONDS.NANOS VERSION" lines.
fn stamps(file: &Path) -> BTreeMap<String, f64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(' ').and_then(|(t, v)| Some((v.to_owned(), t.parse().ok()?))))
        .collect()
}

fn wait_stamp(file: &Path, version: &str, agent: &mut Process) -> Result<f64, Error> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(at) = stamps(file).get(version) {
            return Ok(*at);
        }
        if Instant::now() > deadline {
            return Err(format!("no notification of version {version} within 15 s").into());
        }
        agent.check_running()?;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What the debug log says about each delivered (policy, version): when the bundle write
/// started, how long the swap took, when the notification finished.
#[derive(Debug, Default, Clone, Copy)]
struct Logged {
    swap_start: Option<f64>,
    swap_micros: Option<f64>,
    /// The `delivered` line: after the swap, before the notification is handed over.
    delivered: Option<f64>,
    notified: Option<f64>,
}

fn parse_log(log: &Path) -> Result<BTreeMap<(String, String), Logged>, Error> {
    let mut pending: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut logged: BTreeMap<(String, String), Logged> = BTreeMap::new();
    let text = std::fs::read_to_string(log)?;
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let field = |name: &str| match &entry[name] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let (Some(at), Some(message)) = (field("timestamp").and_then(|t| parse_timestamp(&t)), field("message")) else {
            continue;
        };
        match message.as_str() {
            "bundle swapped" => {
                if let (Some(bundle), Some(micros)) = (field("bundle"), field("micros").and_then(|m| m.parse().ok())) {
                    pending.insert(bundle, (at, micros));
                }
            }
            // Each policy here delivers into a bundle of its own name.
            "delivered" => {
                if let (Some(policy), Some(version)) = (field("policy"), field("version"))
                    && let Some((swapped, micros)) = pending.remove(&policy)
                {
                    let entry = logged.entry((policy, version)).or_default();
                    entry.swap_start = Some(swapped - micros / 1e6);
                    entry.swap_micros = Some(micros);
                    entry.delivered = Some(at);
                }
            }
            "notified" => {
                if let (Some(policy), Some(version)) = (field("policy"), field("version")) {
                    logged.entry((policy, version)).or_default().notified = Some(at);
                }
            }
            _ => {}
        }
    }
    Ok(logged)
}

#[derive(Debug)]
struct Change {
    version: String,
    promoted: f64,
    round_trip_ms: f64,
    stamp: f64,
}

/// How the application is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notifier {
    Signal,
    Exec,
}

impl Notifier {
    fn name(self) -> &'static str {
        match self {
            Notifier::Signal => "signal",
            Notifier::Exec => "exec",
        }
    }
}

/// The floor of telling the application, measured from the suite: spawning `stamp` (fork,
/// exec, its clock reading), or signalling the running `stamp --signal` (delivery, wake-up,
/// its clock reading and manifest read).
/// Each after the same random idle pause as the changes.
fn floor(bench: &Bench, notifier: Notifier, file: &Path, listener: Option<&Process>) -> Result<Summary, Error> {
    let mut samples = Vec::new();
    let mut random = XorShift(0x2545_F491_4F6C_DD1D);
    for run in 0..20 {
        // The same idle pause as before each change: on an idle machine, waking up to spawn a
        // process takes about twice as long as spawning one in a tight loop.
        std::thread::sleep(Duration::from_millis(random.next_millis(1100)));
        // Lines, not versions: every signal stamps the same delivered version.
        let before = std::fs::read_to_string(file).unwrap_or_default().lines().count();
        let started = now();
        let at = match (notifier, listener) {
            (Notifier::Signal, Some(listener)) => {
                let pid = rustix::process::Pid::from_raw(listener.pid() as i32).ok_or("no pid")?;
                rustix::process::kill_process(pid, rustix::process::Signal::HUP)?;
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let lines = std::fs::read_to_string(file).unwrap_or_default();
                    if lines.lines().count() > before {
                        let last = lines.lines().last().unwrap_or_default();
                        break last.split_once(' ').and_then(|(t, _)| t.parse::<f64>().ok()).ok_or("bad stamp")?;
                    }
                    if Instant::now() > deadline {
                        return Err("stamp --signal did not answer within 5 s".into());
                    }
                    std::thread::yield_now();
                }
            }
            _ => {
                let tag = format!("floor-{run}");
                let status =
                    Command::new(&bench.stamp).arg(file).env("KEYTURN_VERSION", &tag).stdin(Stdio::null()).status()?;
                if !status.success() {
                    return Err("stamp failed".into());
                }
                stamps(file).get(&tag).copied().ok_or("stamp wrote nothing")?
            }
        };
        samples.push((at - started) * 1000.0);
    }
    Ok(Summary::of(&samples))
}

/// One notifier's figures, ms.
#[derive(Debug)]
pub struct Measured {
    changes: usize,
    matched: usize,
    round_trip: Summary,
    raw: Summary,
    /// Bundle write start → application told: the part after the store read.
    pub after: Summary,
    swap_micros: Summary,
    handed: Summary,
    pub floor: Summary,
}

fn measure(bench: &Bench, dir: &Path, notifier: Notifier) -> Result<Measured, Error> {
    let dir = fixture::fresh_dir(&dir.join(notifier.name()))?;
    bench.progress(&format!("change latency ({} notifier): {CHANGES} changes, poll 1s", notifier.name()));
    let emulator = Emulator::start(&bench.emulator, &dir.join("emulator"), false)?;
    let policies = fixture::fresh_dir(&dir.join("policies"))?;
    emulator.create_secret(POLICY, &fixture::value(0, 1))?;
    let stamp_file = dir.join("notifier.stamps");
    let agent_dir = dir.join("agent");
    let (notify, listener) = match notifier {
        Notifier::Exec => {
            (format!("exec = {{ command = [\"{}\", \"{}\"] }}", bench.stamp.display(), stamp_file.display()), None)
        }
        Notifier::Signal => {
            let pidfile = dir.join("app.pid");
            // The agent's runtime directory is `agent/run` (fixture::agent).
            let manifest = agent_dir.join(format!("run/{POLICY}/..data/..keyturn.json"));
            let mut command = Command::new(&bench.stamp);
            command.arg("--signal").args([&stamp_file, &pidfile, &manifest]).stdin(Stdio::null());
            let listener = Process::spawn("stamp --signal", &mut command)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !pidfile.exists() {
                if Instant::now() > deadline {
                    return Err("stamp --signal wrote no pidfile".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (format!("signal = {{ pidfile = \"{}\", signal = \"HUP\" }}", pidfile.display()), Some(listener))
        }
    };
    let text = format!(
        "[secret]\nstore = \"edge\"\nid = \"{POLICY}\"\n\n[[deliver]]\npath = \"{POLICY}/value\"\n\n[notify]\n{notify}\n"
    );
    fixture::write_file(&policies.join(format!("{POLICY}.toml")), text.as_bytes(), 0o644)?;
    let stores = fixture::gcp_store_toml(emulator.port);
    let agent = fixture::agent(
        &agent_dir,
        &fixture::AgentSpec { node: "bench", policies: &policies, poll: "1s", stores: &stores },
    )?;
    let socket = NotifySocket::bind(&dir.join("notify.sock"))?;
    let log = dir.join("agent.log");
    let mut command = agent_command(&bench.keyturn, &agent.config, &socket, Some(&emulator.key_file));
    command.args(["--log", "debug", "--log-format", "json"]).stderr(std::fs::File::create(&log)?);
    let mut process = Process::spawn("keyturn agent", &mut command)?;
    socket.wait_ready(Duration::from_secs(30), || process.check_running())?;
    wait_stamp(&stamp_file, "1", &mut process)?;

    let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut changes = Vec::new();
    for index in 0..CHANGES {
        std::thread::sleep(Duration::from_millis(random.next_millis(1100)));
        let (version, round_trip) = emulator.promote(POLICY, &fixture::value(index, index as u64 + 2))?;
        let promoted = now();
        let version = version.to_string();
        let stamp = wait_stamp(&stamp_file, &version, &mut process)?;
        changes.push(Change { version, promoted, round_trip_ms: round_trip.as_secs_f64() * 1000.0, stamp });
    }
    process.stop(Duration::from_secs(10));
    // The running `stamp --signal` appends to the file it was started with.
    let floor_file = if listener.is_some() { stamp_file.clone() } else { dir.join("floor.stamps") };
    let floor = floor(bench, notifier, &floor_file, listener.as_ref())?;
    drop(listener);
    let logged = parse_log(&log)?;
    let of = |field: fn(&Logged) -> Option<f64>, change: &Change| {
        logged.get(&(POLICY.to_owned(), change.version.clone())).and_then(field).map(|at| (change.stamp - at) * 1000.0)
    };
    let records: Vec<Logged> =
        changes.iter().filter_map(|c| logged.get(&(POLICY.to_owned(), c.version.clone())).copied()).collect();
    let measured = Measured {
        changes: changes.len(),
        matched: records.len(),
        round_trip: Summary::of(&changes.iter().map(|c| c.round_trip_ms).collect::<Vec<_>>()),
        raw: Summary::of(&changes.iter().map(|c| (c.stamp - c.promoted) * 1000.0).collect::<Vec<_>>()),
        after: Summary::of(&changes.iter().filter_map(|c| of(|l| l.swap_start, c)).collect::<Vec<_>>()),
        swap_micros: Summary::of(&records.iter().filter_map(|r| r.swap_micros).collect::<Vec<_>>()),
        handed: Summary::of(&changes.iter().filter_map(|c| of(|l| l.delivered, c)).collect::<Vec<_>>()),
        floor,
    };
    fixture::remove(&dir)?;
    Ok(measured)
}

pub fn run(bench: &Bench, figures: &mut Figures) -> Result<String, Error> {
    let dir = fixture::fresh_dir(&bench.work.join("latency"))?;
    let signal = measure(bench, &dir, Notifier::Signal)?;
    let exec = measure(bench, &dir, Notifier::Exec)?;
    fixture::remove(&dir)?;

    let mut table = String::from(
        "| notifier | changes | promotion round trip (baseline), ms | promotion → app told, ms | **bundle write start → app told**, ms | of which the bundle swap, µs | of which `delivered` line → app told, ms | floor: the suite telling the app directly, ms | ratio: hand-over / floor (p50) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (notifier, m) in [(Notifier::Signal, &signal), (Notifier::Exec, &exec)] {
        table.push_str(&format!(
            "| `{}` | {} | p50 {:.2}, p99 {:.2} | p50 {:.0}, p99 {:.0}, max {:.0} | **p50 {:.2}, p99 {:.2}, max {:.2}** | p50 {:.0}, p99 {:.0} | p50 {:.2}, p99 {:.2} | p50 {:.2}, max {:.2} | {} |\n",
            notifier.name(),
            m.changes,
            m.round_trip.median,
            m.round_trip.p99,
            m.raw.median,
            m.raw.p99,
            m.raw.max,
            m.after.median,
            m.after.p99,
            m.after.max,
            m.swap_micros.median,
            m.swap_micros.p99,
            m.handed.median,
            m.handed.p99,
            m.floor.median,
            m.floor.max,
            ratio(m.handed.median, m.floor.median),
        ));
    }
    figures.notes.push(format!(
        "Change latency after the store read: p50 {:.2} ms, p99 {:.2} ms with a `signal` notifier; p50 {:.2} ms, \
         p99 {:.2} ms with `exec` (budget 1 ms). The bundle swap is {:.2} ms of it; from the `delivered` log line \
         (swap done) to the `exec` notifier running takes p50 {:.2} ms, where the suite spawns the same program in \
         {:.2} ms, and to the signalled application waking p50 {:.2} ms, where the suite's own signal takes {:.2} ms.",
        signal.after.median,
        signal.after.p99,
        exec.after.median,
        exec.after.p99,
        signal.swap_micros.median / 1000.0,
        exec.handed.median,
        exec.floor.median,
        signal.handed.median,
        signal.floor.median,
    ));
    let text = format!(
        "## 3. Change latency\n\n\
         **How measured.** One agent on the emulator, poll 1 s (jitter 10%), `--log debug \
         --log-format json`, delivering one policy, once with each notifier: `signal` (SIGHUP, \
         through a pidfile, to `bench/baseline/stamp --signal`, a running C program that on each \
         signal reads the clock, then the version from the bundle's manifest, as an application \
         reloading its files would) and `exec` (`bench/baseline/stamp` spawned per change, \
         stamping its start time and `KEYTURN_VERSION`); `coalesce` at its default (none). \
         {CHANGES} times per notifier, after a pause of 0–1.1 s from the previous notification (so \
         promotions land at every phase of the poll cycle), the suite promotes a new version \
         through the emulator's REST API: `addVersion`, then a `PATCH` moving `current` — the \
         *promotion round trip* is those two requests. *Promotion → app told* is the stamp's time \
         minus the wall-clock time at which the promotion's response arrived: mostly the wait for \
         the next poll (uniform over 0–1.1 s). **The part after the store read** comes from the \
         agent's log: the `bundle swapped` line's timestamp minus its `micros` is when the bundle \
         write started, which follows the store's response only by the comparison and rendering \
         (microseconds, not logged separately); the figure is the stamp's time minus that \
         ({}/{} and {}/{} changes matched to their log lines by policy and version). It includes \
         the swap, the hand-over to the notification task, any coalescing, and telling the \
         application; the `delivered` line, logged once the swap is done, splits the swap from \
         the rest. The budget: ≤ 1 ms beyond the store round trip.\n\n\
         **Baselines.** The store round trip itself (the promotion's two requests to the same \
         loopback emulator the agent polls), and the floor of telling the application without \
         keyturn, from the suite, 20 runs, each after the same random pause of 0–1.1 s as the \
         changes (woken from idle, this machine spawns a process in about twice the time it \
         takes in a tight loop): spawning `stamp` directly (fork + exec + its clock \
         reading), and sending SIGHUP to the running `stamp --signal` (delivery + its wake-up). \
         The after-read part is {} the floor with `signal`, {} with `exec`.\n\n{table}",
        signal.matched,
        signal.changes,
        exec.matched,
        exec.changes,
        ratio(signal.after.median, signal.floor.median),
        ratio(exec.after.median, exec.floor.median),
    );
    figures.change_latency = Some((signal, exec));
    Ok(text)
}
