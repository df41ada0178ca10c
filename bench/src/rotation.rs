//! Benchmark 4, rotation cost: rotations per second for each generator, end to end through the
//! staged protocol (lease, add as `pending`, check, promote, clean up) on the emulator.
//!
//! Twice: `keyturn rotate POLICY --now` as a process (no agent running, so the command does the
//! rotation itself: process start, configuration and a token exchange included), and through a
//! running agent's control socket (the request `keyturn rotate` sends when an agent runs,
//! spoken directly, so no process starts). The baseline is key generation alone, from the
//! keyturn library in this process.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyturn::generate::Generator;

use crate::emulator::{self, Counts, Emulator, METHODS};
use crate::process::{NotifySocket, Process, agent_command};
use crate::stats::{Summary, ratio};
use crate::{Bench, Error, Figures, fixture};

pub const GENERATORS: [&str; 10] = [
    "random:32",
    "password:32",
    "hmac-sha256",
    "aes-256",
    "ed25519",
    "ecdsa-p256",
    "ecdsa-p384",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
];

fn policy_name(generator: &str) -> String {
    format!("rot-{}", generator.replace(':', "-"))
}

/// Runs `once` at least `min` times and until `budget` has passed (at most `max` times);
/// returns each run's duration in ms.
fn repeat(
    min: usize,
    max: usize,
    budget: Duration,
    mut once: impl FnMut() -> Result<(), Error>,
) -> Result<Vec<f64>, Error> {
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < min || (started.elapsed() < budget && samples.len() < max) {
        let run = Instant::now();
        once()?;
        samples.push(run.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

fn rotate_command(bench: &Bench, config: &Path, key: &Path, policy: &str) -> Result<(), Error> {
    let status = Command::new(&bench.keyturn)
        .args(["rotate", policy, "--now", "--config"])
        .arg(config)
        .env("GOOGLE_APPLICATION_CREDENTIALS", key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() { Ok(()) } else { Err(format!("keyturn rotate {policy} --now: {status}").into()) }
}

/// One rotation through the control socket: a request line, then progress lines, then `ok`.
fn rotate_socket(socket: &Path, policy: &str) -> Result<(), Error> {
    let mut stream = UnixStream::connect(socket)?;
    let request = serde_json::json!({"command": "rotate", "policy": policy, "revoke": false});
    stream.write_all(format!("{request}\n").as_bytes())?;
    for line in BufReader::new(stream).lines() {
        let answer: serde_json::Value = serde_json::from_str(&line?)?;
        if answer.get("ok").is_some() {
            return Ok(());
        }
        if let Some(error) = answer.get("error") {
            return Err(format!("rotate {policy} over the control socket: {error}").into());
        }
    }
    Err(format!("rotate {policy}: the control socket closed without an answer").into())
}

fn per_rotation(counts: &Counts, rotations: usize) -> String {
    METHODS
        .iter()
        .filter_map(|method| {
            let n = *counts.get(*method).unwrap_or(&0);
            (n > 0).then(|| format!("{method} {:.1}", n as f64 / rotations as f64))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug)]
struct Row {
    keygen: Summary,
    command: Summary,
    socket: Summary,
}

fn rate(summary: &Summary) -> f64 {
    1000.0 / summary.median
}

pub fn run(bench: &Bench, figures: &mut Figures) -> Result<String, Error> {
    let dir = fixture::fresh_dir(&bench.work.join("rotation"))?;
    let emulator = Emulator::start(&bench.emulator, &dir.join("emulator"), false)?;
    let policies = fixture::fresh_dir(&dir.join("policies"))?;
    for generator in GENERATORS {
        let name = policy_name(generator);
        let format = if Generator::parse(generator)?.is_asymmetric() { "pem" } else { "raw" };
        let text = format!(
            "[secret]\nstore = \"edge\"\nid = \"{name}\"\n\n[rotate]\nevery = \"30d\"\ngenerate = \"{generator}\"\n\n\
             [[deliver]]\npath = \"{name}/value\"\nformat = \"{format}\"\n"
        );
        fixture::write_file(&policies.join(format!("{name}.toml")), text.as_bytes(), 0o644)?;
    }
    let stores = fixture::gcp_store_toml(emulator.port);
    let agent = fixture::agent(
        &dir.join("agent"),
        &fixture::AgentSpec { node: "bench", policies: &policies, poll: "60s", stores: &stores },
    )?;
    let key = emulator.key_file.clone();

    let mut keygen = Vec::new();
    for generator in GENERATORS {
        bench.progress(&format!("rotation: key generation alone, {generator}"));
        let parsed = Generator::parse(generator)?;
        parsed.generate()?;
        keygen.push(Summary::of(&repeat(8, 2000, Duration::from_millis(2000), || {
            parsed.generate()?;
            Ok(())
        })?));
    }

    let mut command = Vec::new();
    let mut command_counts = Counts::new();
    let mut command_rotations = 0;
    for generator in GENERATORS {
        bench.progress(&format!("rotation: `keyturn rotate --now` processes, {generator}"));
        let policy = policy_name(generator);
        rotate_command(bench, &agent.config, &key, &policy)?; // creates the secret; not counted
        let before = emulator.counts()?;
        let samples =
            repeat(8, 40, Duration::from_millis(2000), || rotate_command(bench, &agent.config, &key, &policy))?;
        for (method, n) in emulator::difference(&before, &emulator.counts()?) {
            *command_counts.entry(method).or_default() += n;
        }
        command_rotations += samples.len();
        command.push(Summary::of(&samples));
    }

    bench.progress("rotation: through a running agent's control socket");
    let notify = NotifySocket::bind(&dir.join("notify.sock"))?;
    let mut process =
        Process::spawn("keyturn agent", &mut agent_command(&bench.keyturn, &agent.config, &notify, Some(&key)))?;
    notify.wait_ready(Duration::from_secs(30), || process.check_running())?;
    let control = agent.runtime_dir.join(".keyturn.sock");
    let mut socket = Vec::new();
    let mut socket_counts = Counts::new();
    let mut socket_rotations = 0;
    for generator in GENERATORS {
        let policy = policy_name(generator);
        rotate_socket(&control, &policy)?;
        let before = emulator.counts()?;
        let samples = repeat(8, 100, Duration::from_millis(2000), || rotate_socket(&control, &policy))?;
        for (method, n) in emulator::difference(&before, &emulator.counts()?) {
            *socket_counts.entry(method).or_default() += n;
        }
        socket_rotations += samples.len();
        socket.push(Summary::of(&samples));
        process.check_running()?;
    }
    process.stop(Duration::from_secs(10));
    drop(emulator);
    fixture::remove(&dir)?;

    let accesses = *socket_counts.get("access").unwrap_or(&0) as f64 / socket_rotations.max(1) as f64;
    if accesses > 1.5 {
        figures.notes.push(format!(
            "A rotation through the running agent makes {accesses:.1} `access` requests on average with \
             {} policies configured: after rotating one policy the agent pulls every policy again, \
             so on a node with N policies each rotation costs N reads instead of one.",
            GENERATORS.len()
        ));
    }
    let rows: Vec<Row> = keygen
        .into_iter()
        .zip(command)
        .zip(socket)
        .map(|((keygen, command), socket)| Row { keygen, command, socket })
        .collect();
    let mut table = String::from(
        "| generator | key generation alone, ms: median (p10–p90) | via agent socket, ms: median (p10–p90) | rotations per s | protocol overhead, ms | ratio to keygen | `keyturn rotate --now` process, ms: median (p10–p90) | rotations per s | ratio to keygen |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (generator, row) in GENERATORS.iter().zip(&rows) {
        table.push_str(&format!(
            "| `{generator}` | {} | {} | {:.0} | {:.2} | {} | {} | {:.1} | {} |\n",
            row.keygen.median_p10_p90(3),
            row.socket.median_p10_p90(1),
            rate(&row.socket),
            row.socket.median - row.keygen.median,
            ratio(row.socket.median, row.keygen.median),
            row.command.median_p10_p90(1),
            rate(&row.command),
            ratio(row.command.median, row.keygen.median),
        ));
    }
    Ok(format!(
        "## 4. Rotation cost\n\n\
         **How measured.** Ten policies on the emulator, one per generator, each `[rotate] every = \
         \"30d\"` (never due on its own) delivering its secret (`pem` for asymmetric keys, `raw` \
         otherwise). Each rotation runs the whole staged protocol: lease (etag compare-and-swap), \
         add as `pending`, check (keys sign and verify), promote, clean up. *Process*: `keyturn \
         rotate POLICY --now` with no agent running, timed from spawn to exit — process start, \
         configuration loading and a token exchange (RS256 signature) are included in every \
         rotation. *Agent socket*: a running agent's control socket, spoken to directly \
         (`{{\"command\":\"rotate\",…}}`, then progress lines until `ok`), so no process starts and \
         the agent's token is reused; the agent also delivers each new version. Each is repeated \
         at least 8 times and for about 2 s, after one uncounted warm-up; rotations per s = 1000 / median ms; protocol overhead = median via the socket − \
         median key generation.\n\n\
         **Baseline.** Key generation alone: `keyturn::generate::Generator::parse(..).generate()` \
         in the suite's own process (the same aws-lc-rs code, release build). The ratio is the \
         protocol's overhead: store round trips, the check, and (for the process) start-up. RSA \
         key generation time varies widely from key to key (prime search), hence the p10–p90: \
         for RSA the protocol's overhead is within that noise, and a negative difference only \
         means the rotations happened to draw faster keys.\n\n\
         Store requests per rotation (emulator counts): process {}; agent socket {}.\n\n{table}",
        per_rotation(&command_counts, command_rotations),
        per_rotation(&socket_counts, socket_rotations),
    ))
}
