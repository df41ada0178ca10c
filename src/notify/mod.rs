//! Telling applications that their files changed.
//!
//! Each policy with a `[notify]` section gets a dispatcher task of its own. The engine hands
//! it a [`Change`] after a bundle is in place; the dispatcher waits `coalesce` (by default not
//! at all) for more changes (a burst of store updates), then runs every configured notifier
//! once for the latest change, each with its own attempts and backoff; changes that queued up
//! while a notification ran fold into the next one, which names the newest version. A
//! slow or hung notifier holds up only its own policy's notifications, never delivery or
//! another policy. Outcomes are reported back through a callback (status file, logs).
//!
//! One file per notifier, each a type implementing [`Kind`] that owns its settings (the key
//! it is written under in `[notify]`, their validation), its construction and its sending;
//! the `notifiers!` list below is the one place they are registered. None of them ever passes
//! a value: they get the policy, the version, and the bundle paths.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::backoff::{retry_delay_from, unit_random};
use crate::config::{Notify, Section};
use crate::secret::VersionId;

/// The first wait between attempts of one notifier; it doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What changed: enough for an application to act on, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub policy: String,
    pub version: VersionId,
    /// The bundle directories the change touched.
    pub bundles: Vec<PathBuf>,
}

/// What a notifier did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Done,
    /// Nothing to tell: no process behind the pidfile, say. Not a failure: an application
    /// that is not running reads fresh files when it starts.
    Skipped(String),
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Run(#[from] crate::process::RunError),
    #[error("{program} exited with {status}: {stderr}")]
    Exit { program: String, status: std::process::ExitStatus, stderr: String },
    #[error("{0}")]
    Failed(String),
}

/// One kind of notifier.
pub trait Kind: Sized + fmt::Debug + Send + Sync + 'static {
    /// Its key in a policy's `[notify]`: `signal = { ... }`.
    const NAME: &'static str;
    /// Its validated settings.
    type Config: Clone + PartialEq + fmt::Debug + Send + Sync;

    /// Checks its settings (the table under its key).
    fn configure(section: &mut Section<'_, '_>) -> Option<Self::Config>;

    fn new(config: &Self::Config, resources: &Resources) -> Self;

    /// Tells the application once; the dispatcher retries.
    fn notify(&self, change: &Change) -> impl Future<Output = Result<Sent, NotifyError>> + Send;
}

/// What the notifiers of one configuration share, made on first use: memory on every node of
/// the fleet is not spent on what a node does not use.
#[derive(Debug, Default)]
pub struct Resources {
    /// For loopback URLs: no proxy.
    loopback: OnceLock<reqwest::Client>,
    /// For the rest: https only, the environment's proxies.
    remote: OnceLock<reqwest::Client>,
}

impl Resources {
    /// One HTTP client (and one set of TLS roots) for every notifier that speaks HTTP to the
    /// same side of loopback, under [`crate::http`]'s policy.
    pub fn http_client(&self, url: &str) -> reqwest::Client {
        let loopback = url::Url::parse(url).is_ok_and(|u| crate::config::units::is_loopback(&u));
        let (cell, example) =
            if loopback { (&self.loopback, "http://127.0.0.1/") } else { (&self.remote, "https://example.com/") };
        cell.get_or_init(|| crate::http::builder(example).build().unwrap_or_default()).clone()
    }
}

/// Declares the notifiers: one line each, `Variant => module::Type`, in the order they run.
/// Makes [`NotifierConfig`], [`Notifier`] and their dispatch, and [`KINDS`].
macro_rules! notifiers {
    ($($variant:ident => $module:ident :: $kind:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// One notifier's settings. One variant per kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum NotifierConfig {
            $($variant(<$module::$kind as Kind>::Config),)*
        }

        /// One configured notifier, ready to send. One variant per kind.
        #[derive(Debug)]
        pub enum Notifier {
            $($variant($module::$kind),)*
        }

        /// Every notifier's key, in the order they run.
        pub const KINDS: &[&str] = &[$(<$module::$kind as Kind>::NAME),*];

        impl NotifierConfig {
            pub fn kind(&self) -> &'static str {
                match self {
                    $(NotifierConfig::$variant(_) => <$module::$kind as Kind>::NAME,)*
                }
            }

            /// The settings of the notifier `name`; `None` when no notifier has that name,
            /// `Some(None)` when its settings are wrong (the section has the problems).
            pub fn configure(name: &str, section: &mut Section<'_, '_>) -> Option<Option<NotifierConfig>> {
                match name {
                    $(<$module::$kind as Kind>::NAME => Some(<$module::$kind>::configure(section).map(NotifierConfig::$variant)),)*
                    _ => None,
                }
            }
        }

        impl Notifier {
            pub fn new(config: &NotifierConfig, resources: &Resources) -> Notifier {
                match config {
                    $(NotifierConfig::$variant(config) => Notifier::$variant(<$module::$kind>::new(config, resources)),)*
                }
            }

            pub fn kind(&self) -> &'static str {
                match self {
                    $(Notifier::$variant(_) => <$module::$kind as Kind>::NAME,)*
                }
            }

            pub async fn notify(&self, change: &Change) -> Result<Sent, NotifyError> {
                match self {
                    $(Notifier::$variant(notifier) => notifier.notify(change).await,)*
                }
            }
        }
    };
}

notifiers! {
    Signal => signal::Signal,
    Systemd => systemd::Systemd,
    Exec => exec::Exec,
    Http => http::Http,
}

impl Notifier {
    /// The notifiers a `[notify]` section configures, in the order they run.
    pub fn from_config(notify: &Notify, resources: &Resources) -> Vec<Notifier> {
        notify.notifiers.iter().map(|config| Notifier::new(config, resources)).collect()
    }
}

/// What the dispatcher reports after each notification: which policy, and per notifier kind
/// either what was sent or why it failed after its last attempt.
pub type Report = Arc<dyn Fn(&Change, &[(&'static str, Result<Sent, String>)]) + Send + Sync>;

enum Message {
    Changed(Change),
    Flush(oneshot::Sender<()>),
}

/// The engine's end of a policy's dispatcher. Cheap to clone; the dispatcher stops when every
/// handle is dropped.
#[derive(Debug, Clone)]
pub struct Handle {
    messages: mpsc::UnboundedSender<Message>,
}

impl Handle {
    /// Queues a notification for `change`; returns at once.
    pub fn changed(&self, change: Change) {
        let _ = self.messages.send(Message::Changed(change));
    }

    /// Sends what is waiting for its coalescing window now, and waits until it has been sent.
    pub async fn flush(&self) {
        if let Some(sent) = self.flush_soon() {
            let _ = sent.await;
        }
    }

    /// Asks for [`Handle::flush`] without waiting: the answer comes when it has been sent. Lets
    /// a caller ask every dispatcher at once, so that one slow notifier holds up no other.
    pub fn flush_soon(&self) -> Option<oneshot::Receiver<()>> {
        let (done, sent) = oneshot::channel();
        self.messages.send(Message::Flush(done)).is_ok().then_some(sent)
    }
}

/// Starts the dispatcher of one policy. The task ends when every [`Handle`] is dropped.
pub fn spawn(notify: &Notify, notifiers: Vec<Notifier>, report: Report) -> (Handle, tokio::task::JoinHandle<()>) {
    let (messages, inbox) = mpsc::unbounded_channel();
    let task = tokio::spawn(dispatch(inbox, notifiers, notify.coalesce, notify.attempts, report));
    (Handle { messages }, task)
}

async fn dispatch(
    mut inbox: mpsc::UnboundedReceiver<Message>,
    notifiers: Vec<Notifier>,
    coalesce: Duration,
    attempts: u32,
    report: Report,
) {
    while let Some(message) = inbox.recv().await {
        let mut change = match message {
            Message::Changed(change) => change,
            Message::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let mut flushed = Vec::new();
        let deadline = tokio::time::Instant::now() + coalesce;
        // No window, no wait: even a zero sleep would go through the timer, a millisecond late.
        while !coalesce.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                message = inbox.recv() => match message {
                    Some(Message::Changed(later)) => merge(&mut change, later),
                    Some(Message::Flush(done)) => {
                        flushed.push(done);
                        break;
                    }
                    None => break,
                },
            }
        }
        // Changes that queued up while the previous notification ran are on disk already: this
        // one covers them, rather than telling the application about versions it has passed.
        while let Ok(message) = inbox.try_recv() {
            match message {
                Message::Changed(later) => merge(&mut change, later),
                Message::Flush(done) => flushed.push(done),
            }
        }
        let mut outcomes = Vec::with_capacity(notifiers.len());
        for notifier in &notifiers {
            outcomes.push((notifier.kind(), send(notifier, &change, attempts).await));
        }
        report(&change, &outcomes);
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Folds a later change into one not yet sent: the newest version, every bundle touched.
fn merge(change: &mut Change, later: Change) {
    tracing::debug!(policy = %later.policy, version = %later.version, "changes coalesced into one notification");
    for bundle in later.bundles {
        if !change.bundles.contains(&bundle) {
            change.bundles.push(bundle);
        }
    }
    change.version = later.version;
}

/// One notifier, up to `attempts` times with backoff.
async fn send(notifier: &Notifier, change: &Change, attempts: u32) -> Result<Sent, String> {
    let mut attempt = 1;
    loop {
        match notifier.notify(change).await {
            Ok(sent) => return Ok(sent),
            Err(e) if attempt < attempts => {
                let wait = retry_delay_from(FIRST_BACKOFF, attempt, MAX_BACKOFF, unit_random());
                tracing::warn!(policy = %change.policy, notifier = notifier.kind(), attempt, error = %crate::error_chain(&e), retry_in_ms = wait.as_millis() as u64, "notification failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(crate::error_chain(&e)),
        }
    }
}

/// The environment a program started for `change` gets: names, never values.
pub fn change_env(change: &Change) -> Vec<(&'static str, String)> {
    let bundles: Vec<String> = change.bundles.iter().map(|b| b.display().to_string()).collect();
    vec![
        ("KEYTURN_POLICY", change.policy.clone()),
        ("KEYTURN_VERSION", change.version.to_string()),
        ("KEYTURN_BUNDLE", bundles.first().cloned().unwrap_or_default()),
        ("KEYTURN_BUNDLES", bundles.join(":")),
    ]
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn change(version: &str) -> Change {
        Change {
            policy: "api".into(),
            version: VersionId::new(version),
            bundles: vec![PathBuf::from("/run/keyturn/api")],
        }
    }

    /// With no coalescing window, changes that arrive while a slow notifier runs are not
    /// announced one by one, oldest last: the next notification names the newest version.
    #[tokio::test]
    async fn changes_queued_behind_a_slow_notifier_make_one_notification_for_the_newest() {
        let exec = exec::ExecConfig { command: vec!["sleep".into(), "0.3".into()], timeout: Duration::from_secs(10) };
        let notify = Notify { notifiers: vec![NotifierConfig::Exec(exec)], coalesce: Duration::ZERO, attempts: 1 };
        let sent: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = sent.clone();
        let report: Report = Arc::new(move |change, _| seen.lock().unwrap().push(change.version.to_string()));
        let (handle, task) = spawn(&notify, Notifier::from_config(&notify, &Resources::default()), report);
        handle.changed(change("1"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        for version in ["2", "3", "4"] {
            handle.changed(change(version));
        }
        handle.flush().await;
        handle.flush().await;
        assert_eq!(*sent.lock().unwrap(), ["1", "4"]);
        drop(handle);
        task.await.unwrap();
    }
}
