//! `gcp-emulator`: run the Secret Manager emulator as a process, for scripts and manual use.
//!
//! Prints `listening on http://127.0.0.1:PORT` on stdout once it accepts connections, then
//! serves until SIGINT or SIGTERM. Faults, time and identities are driven through the admin
//! API (`/emulator/…`, see the crate README). `--print-external-account` writes a Workload
//! Identity Federation configuration and a subject token, so a person or a script can try the
//! federated flow in two commands. Exit codes: 0 after a clean stop, 1 when the
//! emulator cannot start or the key file cannot be written, 64 for bad usage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gcp_emulator::{Emulator, Role, SubjectToken};

const USAGE: &str = "\
usage: gcp-emulator [--port N] [--project-id ID] [--project-number NUM]
                    [--print-key FILE [--key-email EMAIL] [--key-role ROLE]]
                    [--print-external-account FILE --subject-token FILE
                     [--impersonate EMAIL] [--subject SUB] [--key-role ROLE]]
                    [--allow-anonymous] [--google-quotas]

  --port N             port on 127.0.0.1 (default 0: any free port)
  --project-id ID      project ID accepted in paths (default emulator-project)
  --project-number NUM project number used in every name (default 123456789012)
  --print-key FILE     write a service-account JSON key file (mode 0600) before listening
  --key-email EMAIL    its client_email (default emulator@PROJECT_ID.iam.gserviceaccount.com)
  --key-role ROLE      accessor | viewer | versionManager | admin (default admin)
  --print-external-account FILE
                       write a Workload Identity Federation credential configuration
                       (type external_account, mode 0600) that reads its subject token
                       from the --subject-token file, and grant its subject ROLE
  --subject-token FILE write a subject token (a JWT of the test OIDC issuer, valid one hour
                       on the emulator's clock) for the workload identity pool (mode 0600)
  --impersonate EMAIL  the configuration impersonates service account EMAIL, which gets
                       ROLE; the subject may only impersonate it
  --subject SUB        the token's subject (default emulator-workload)
  --allow-anonymous    requests without credentials act as admin
  --google-quotas      enforce 90,000 access / 600 read / 600 write requests per minute
";

#[derive(Debug)]
struct Options {
    port: u16,
    project_id: Option<String>,
    project_number: Option<u64>,
    key_file: Option<PathBuf>,
    key_email: Option<String>,
    key_role: Role,
    allow_anonymous: bool,
    google_quotas: bool,
    external_account: Option<PathBuf>,
    subject_token: Option<PathBuf>,
    impersonate: Option<String>,
    subject: Option<String>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        port: 0,
        project_id: None,
        project_number: None,
        key_file: None,
        key_email: None,
        key_role: Role::Admin,
        allow_anonymous: false,
        google_quotas: false,
        external_account: None,
        subject_token: None,
        impersonate: None,
        subject: None,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (flag.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value"));
        match name.as_str() {
            "--port" => {
                let text = value()?;
                options.port = text.parse().map_err(|_| format!("--port {text:?} is not a port number"))?;
            }
            "--project-id" => options.project_id = Some(value()?),
            "--project-number" => {
                let text = value()?;
                options.project_number =
                    Some(text.parse().map_err(|_| format!("--project-number {text:?} is not a number"))?);
            }
            "--print-key" => options.key_file = Some(PathBuf::from(value()?)),
            "--key-email" => options.key_email = Some(value()?),
            "--key-role" => {
                options.key_role = value()?.parse().map_err(|e| format!("--key-role: {e}"))?;
            }
            "--print-external-account" => options.external_account = Some(PathBuf::from(value()?)),
            "--subject-token" => options.subject_token = Some(PathBuf::from(value()?)),
            "--impersonate" => options.impersonate = Some(value()?),
            "--subject" => options.subject = Some(value()?),
            "--allow-anonymous" => options.allow_anonymous = true,
            "--google-quotas" => options.google_quotas = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match (&options.external_account, &options.subject_token) {
        (Some(_), None) => return Err("--print-external-account needs --subject-token FILE".into()),
        (None, Some(_)) => return Err("--subject-token goes with --print-external-account FILE".into()),
        _ => {}
    }
    if options.external_account.is_none() && (options.impersonate.is_some() || options.subject.is_some()) {
        return Err("--impersonate and --subject go with --print-external-account FILE".into());
    }
    Ok(options)
}

/// Writes the external-account configuration and its subject token, and grants the subject
/// (or the account it impersonates) the role.
fn write_external_account(emulator: &Emulator, options: &Options, config: &Path, token: &Path) -> std::io::Result<()> {
    let subject = options.subject.as_deref().unwrap_or("emulator-workload");
    let token_path = std::path::absolute(token)?;
    match &options.impersonate {
        Some(account) => emulator.allow_impersonation(subject, account, options.key_role),
        None => emulator.grant_federated(subject, options.key_role),
    }
    write_key(token, &emulator.subject_token(&SubjectToken::new(subject)))?;
    write_key(config, &emulator.external_account_config(&token_path, options.impersonate.as_deref()))
}

fn write_key(path: &Path, key: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(key.as_bytes())?;
    file.sync_all()
}

/// Registers SIGINT and SIGTERM handlers now and returns a future that completes on either.
/// Registering before announcing the URL means a script may signal as soon as it reads it.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("gcp-emulator: {message}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gcp-emulator: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut builder = Emulator::builder().port(options.port).allow_anonymous(options.allow_anonymous);
        if let Some(id) = &options.project_id {
            builder = builder.project_id(id.clone());
        }
        if let Some(number) = options.project_number {
            builder = builder.project_number(number);
        }
        if options.google_quotas {
            builder = builder.google_quotas();
        }
        let emulator = match builder.start().await {
            Ok(emulator) => emulator,
            Err(error) => {
                eprintln!("gcp-emulator: {error}: {}", source_text(&error));
                return ExitCode::FAILURE;
            }
        };
        if let Some(path) = &options.key_file {
            let email = options
                .key_email
                .clone()
                .unwrap_or_else(|| format!("emulator@{}.iam.gserviceaccount.com", emulator.project_id()));
            let key = emulator.service_account_key(&email, options.key_role);
            if let Err(error) = write_key(path, &key) {
                eprintln!("gcp-emulator: writing the key to {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        }
        if let (Some(config), Some(token)) = (&options.external_account, &options.subject_token)
            && let Err(error) = write_external_account(&emulator, &options, config, token)
        {
            eprintln!("gcp-emulator: writing the external account to {}: {error}", config.display());
            return ExitCode::FAILURE;
        }
        let stopped = match stop_signal() {
            Ok(stopped) => stopped,
            Err(error) => {
                eprintln!("gcp-emulator: cannot handle signals: {error}");
                return ExitCode::FAILURE;
            }
        };
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on {}", emulator.base_url());
        let _ = stdout.flush();
        stopped.await;
        emulator.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn source_text(error: &dyn std::error::Error) -> String {
    error.source().map(|s| s.to_string()).unwrap_or_else(|| "no further detail".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_flags_in_both_spellings() {
        let options = parse(args("--port 8085 --project-id=acme --project-number 42 --key-role viewer")).unwrap();
        assert_eq!(options.port, 8085);
        assert_eq!(options.project_id.as_deref(), Some("acme"));
        assert_eq!(options.project_number, Some(42));
        assert_eq!(options.key_role, Role::Viewer);
    }

    #[test]
    fn rejects_bad_usage() {
        assert!(parse(args("--port")).is_err());
        assert!(parse(args("--port x")).is_err());
        assert!(parse(args("--colour red")).is_err());
        assert_eq!(parse(args("--help")).unwrap_err(), "");
        assert!(parse(args("--print-external-account a.json")).unwrap_err().contains("--subject-token"));
        assert!(parse(args("--subject-token t")).is_err());
        assert!(parse(args("--impersonate a@b")).is_err());
        let options =
            parse(args("--print-external-account a.json --subject-token t --impersonate a@b --subject s")).unwrap();
        assert_eq!(options.impersonate.as_deref(), Some("a@b"));
    }
}
