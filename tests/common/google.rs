//! The Secret Manager emulator as the Google-facing tests use it: project `acme-edge` (number
//! 435468002770), a `[stores.edge]` on it, and service-account key files in a world's scratch
//! directory.

use std::path::PathBuf;

use gcp_emulator::{Emulator, Role, blocking};

use super::{World, write};

/// A running emulator for project `acme-edge`; stopped when dropped.
pub fn emulator() -> blocking::Emulator {
    blocking::Emulator::start(Emulator::builder().project_id("acme-edge").project_number(435468002770)).unwrap()
}

/// Adds `[stores.edge]` on `emu` to `world`'s agent file, with `extra` settings of its own.
pub fn add_edge_store(world: &World, emu: &blocking::Emulator, extra: &str) {
    world.add_stores(&format!(
        "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{}\"\nretry_backoff = \"50ms\"\n{extra}",
        emu.base_url()
    ));
}

/// A key file for service account `NAME@acme-edge.iam.gserviceaccount.com` with `role`, in
/// `world`'s scratch directory as `NAME.json`.
pub fn key_file(world: &World, emu: &blocking::Emulator, name: &str, role: Role) -> PathBuf {
    let path = world.disk.path().join(format!("{name}.json"));
    write(&path, &emu.service_account_key(&format!("{name}@acme-edge.iam.gserviceaccount.com"), role));
    path
}
