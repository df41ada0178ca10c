//! What the agent did, in the forms people and programs read: the status behind `keyturn
//! status`, Prometheus metrics, and central event reports. [`recorder`] is the one place an
//! outcome (a delivery, a failed read, a rotation, a notification) becomes a log line, metrics,
//! a status change and an event.

pub mod events;
pub mod metrics;
pub mod recorder;
pub mod status;

pub use recorder::{Outcome, Recorder, Subject};
