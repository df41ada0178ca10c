//! The `keyturn` binary: parse the command line, start tracing, run, map errors to exit codes.
//! This file is the only place that knows about the process's exit: 0 ok, 1 a runtime failure
//! (something that may pass: a store down, a policy that failed), 64 bad usage or
//! configuration (something the operator must fix).

use std::io::Write;
use std::process::ExitCode;

use keyturn::app::{self, AppError, Seams};
use keyturn::cli::{Cli, LogFormat};
use keyturn::deliver::DeliverError;
use keyturn::error_chain;
use tracing::Level;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 64;

/// The one map from errors to exit codes.
fn exit_code(error: &AppError) -> u8 {
    match error {
        AppError::Config(_)
        | AppError::Invalid { .. }
        | AppError::Usage(_)
        | AppError::Deliver(DeliverError::NotVolatile { .. } | DeliverError::UnsafeRuntimeDir { .. }) => EXIT_USAGE,
        AppError::Rotation { .. }
        | AppError::Busy { .. }
        | AppError::Agent(_)
        | AppError::Store(_)
        | AppError::Deliver(_)
        | AppError::Cache(_)
        | AppError::Fleet(_)
        | AppError::Lagging { .. }
        | AppError::PoliciesFailed { .. }
        | AppError::Failing { .. }
        | AppError::ProbeFailed { .. }
        | AppError::Io { .. } => EXIT_FAILURE,
    }
}

fn main() -> ExitCode {
    let cli = match keyturn::cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    let stderr = Stderr { journal: stderr_is_the_journal() };
    if let Err(message) = start_tracing(&cli, stderr) {
        stderr.error(&message);
        return ExitCode::from(EXIT_USAGE);
    }
    // An agent does one thing at a time and mostly waits: one thread is all it needs, and
    // every thread costs resident memory on every node of the fleet.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            stderr.error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let seams = Seams::from_process();
    let json = cli.log_format == LogFormat::Json;
    let code = match runtime.block_on(app::run(cli, seams)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e, json, stderr);
            ExitCode::from(exit_code(&e))
        }
    };
    // Dropping the runtime would wait, without limit, for blocking work still running (a DNS
    // lookup of an HTTP client, say); the agent's own shutdown is done by now.
    runtime.shutdown_timeout(SHUTDOWN_LEFTOVERS);
    code
}

/// Says why the command failed, on standard error: `keyturn: ...` for people, or (with
/// `--log-format json`) JSON lines like every other, a configuration's problems one per line
/// with file, line and key as fields.
fn report(error: &AppError, json: bool, stderr: Stderr) {
    if !json {
        stderr.error(&error_chain(error));
        return;
    }
    if let AppError::Config(keyturn::config::ConfigErrors(problems)) = error {
        for problem in problems {
            let line = problem.line.map(|l| l as u64);
            tracing::error!(file = %problem.file.display(), line, key = %problem.key, problem = %problem.message, "configuration problem");
        }
        let n = problems.len();
        tracing::error!("configuration has {n} problem{}", if n == 1 { "" } else { "s" });
        return;
    }
    tracing::error!("{}", error_chain(error));
}

/// How long an exiting process waits for blocking work it no longer needs.
const SHUTDOWN_LEFTOVERS: std::time::Duration = std::time::Duration::from_secs(1);

/// `--log` as tracing targets. A bare level (`debug`) applies to keyturn; other crates stay at
/// `info` or quieter unless named (`debug,h2=trace`): their debug output is noise to an
/// operator, and keyturn cannot vouch for what it contains.
fn log_filter(spec: &str) -> Result<Targets, String> {
    let targets: Targets = spec.parse().map_err(|e| format!("--log {spec:?}: {e}"))?;
    if spec.contains('=') {
        return Ok(targets);
    }
    let level = targets.default_level().unwrap_or(LevelFilter::INFO);
    Ok(Targets::new().with_target("keyturn", level).with_default(level.min(LevelFilter::INFO)))
}

fn start_tracing(cli: &Cli, stderr: Stderr) -> Result<(), String> {
    let filter = log_filter(&cli.log)?;
    let layer = tracing_subscriber::fmt::layer().with_writer(stderr);
    match cli.log_format {
        LogFormat::Human => {
            let ansi = !stderr.journal && std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::registry().with(layer.with_ansi(ansi).with_filter(filter)).init();
        }
        LogFormat::Json => {
            let layer = layer.json().flatten_event(true).with_current_span(false).with_span_list(false);
            tracing_subscriber::registry().with(layer.with_filter(filter)).init();
        }
    }
    Ok(())
}

/// Standard error, where log lines and the final error go. When it is the journal (systemd
/// started keyturn with `StandardError=journal`, the default, and says so in
/// `JOURNAL_STREAM`), each line starts with its syslog priority (`<3>` error, `<4>` warning,
/// `<6>` info, `<7>` debug), which journald takes as the entry's `PRIORITY` and strips: so
/// `journalctl -u keyturn -p warning` finds the agent's warnings and errors. Anywhere else
/// (a terminal, a file, a pipe, Kubernetes) the lines are plain.
#[derive(Debug, Clone, Copy)]
struct Stderr {
    journal: bool,
}

impl Stderr {
    /// The last words of a failing command, at priority "err" in the journal.
    fn error(self, message: &str) {
        let line = format!("keyturn: {message}\n");
        let _ = self.writer(Some(Level::ERROR)).write_all(line.as_bytes());
    }

    fn writer(self, level: Option<Level>) -> EventWriter {
        let priority = match level {
            _ if !self.journal => None,
            Some(Level::ERROR) => Some("<3>"),
            Some(Level::WARN) => Some("<4>"),
            Some(Level::INFO) | None => Some("<6>"),
            Some(Level::DEBUG | Level::TRACE) => Some("<7>"),
        };
        EventWriter { priority }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        self.writer(None)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventWriter {
        self.writer(Some(*meta.level()))
    }
}

/// Writes one formatted event (tracing-subscriber hands over each event whole, in one call)
/// to standard error, with `priority` before each of its lines.
#[derive(Debug)]
struct EventWriter {
    priority: Option<&'static str>,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(priority) = self.priority else {
            std::io::stderr().lock().write_all(buf)?;
            return Ok(buf.len());
        };
        let mut prefixed = Vec::with_capacity(buf.len() + 2 * priority.len());
        for line in buf.split_inclusive(|&b| b == b'\n') {
            prefixed.extend_from_slice(priority.as_bytes());
            prefixed.extend_from_slice(line);
        }
        // One write per event, so lines from two events never interleave.
        std::io::stderr().lock().write_all(&prefixed)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Whether standard error is the journal's stream: systemd sets `JOURNAL_STREAM` to its
/// `DEVICE:INODE`, and it must still be that file (a child whose stderr was redirected keeps
/// the variable but not the stream).
fn stderr_is_the_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else { return false };
    device.parse::<u64>().is_ok_and(|d| d == stat.st_dev) && inode.parse::<u64>().is_ok_and(|i| i == stat.st_ino)
}
