//! What the agent did, in a form people and programs read: for now the status file behind
//! `keyturn status`. Metrics and central event reports land here later.

pub mod events;
pub mod metrics;
pub mod status;
