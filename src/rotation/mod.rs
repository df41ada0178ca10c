//! Rotation: making new versions and promoting them through the staged aliases.
//!
//! - [`schedule`]: when a secret is due, derived from the store so every node agrees.
//! - [`lease`]: the annotation that lets one node rotate a shared secret at a time.
//! - [`protocol`]: the staged rotation itself — lease, add as `pending`, check, promote,
//!   disable what is past its grace — generic over the store trait.

pub mod lease;
pub mod protocol;
pub mod schedule;
