//! The emulator for plain `#[test]` functions: it owns a small tokio runtime whose worker
//! thread runs the server, so callers need no async runtime of their own.
//!
//! It dereferences to [`crate::Emulator`] for every synchronous method (`base_url`,
//! `service_account_key`, `faults`, `request_counts`, …); only starting and stopping differ.

use std::ops::Deref;
use std::time::Duration;

use crate::emulator::{EmulatorBuilder, StartError};

/// A running emulator with its own runtime. Stops on drop.
#[derive(Debug)]
pub struct Emulator {
    // `inner` is declared first so it drops (stopping the server) before the runtime.
    inner: Option<crate::Emulator>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Emulator {
    /// Starts `builder` on a fresh one-worker runtime.
    ///
    /// Must not be called from inside an async runtime (it blocks while binding).
    pub fn start(builder: EmulatorBuilder) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gcp-emulator")
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let inner = runtime.block_on(builder.start())?;
        Ok(Emulator { inner: Some(inner), runtime: Some(runtime) })
    }

    /// Stops the server and its runtime, waiting (briefly) for both.
    pub fn shutdown(mut self) {
        if let (Some(inner), Some(runtime)) = (self.inner.take(), self.runtime.take()) {
            runtime.block_on(inner.shutdown());
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Deref for Emulator {
    type Target = crate::Emulator;

    fn deref(&self) -> &crate::Emulator {
        self.inner.as_ref().expect("the emulator is only taken by shutdown, which consumes self")
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        drop(self.inner.take());
        if let Some(runtime) = self.runtime.take() {
            // Safe even inside another runtime, where a blocking shutdown would panic.
            runtime.shutdown_background();
        }
    }
}
