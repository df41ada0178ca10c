//! The fixture the cold-start and memory benchmarks share: a local file store and an emulator,
//! each with 1,000 secrets, and policy directories of 1, 100 and 1,000 policies on each.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::emulator::Emulator;
use crate::{Bench, Error, fixture};

pub const SIZES: [usize; 3] = [1, 100, 1000];

#[derive(Debug)]
pub struct Setup {
    pub store_dir: PathBuf,
    pub emulator: Emulator,
    /// Policy directories by size, on the file store and on the emulator.
    pub local_policies: BTreeMap<usize, PathBuf>,
    pub gcp_policies: BTreeMap<usize, PathBuf>,
}

impl Setup {
    pub fn prepare(bench: &Bench) -> Result<Setup, Error> {
        let largest = SIZES[SIZES.len() - 1];
        bench.progress(&format!("setup: a file store and an emulator with {largest} secrets each"));
        // The store lives on disk, as /var/lib/keyturn/store would; it is read-only here, so
        // after the warm-up runs every read comes from the page cache, for keyturn and the
        // baseline alike.
        let store_dir = bench.disk.join("store");
        fixture::file_store(&store_dir, largest)?;
        let emulator = Emulator::start(&bench.emulator, &bench.work.join("emulator"), false)?;
        for index in 0..largest {
            emulator.create_secret(&format!("s{index:04}"), &fixture::value(index, 1))?;
        }
        let mut local_policies = BTreeMap::new();
        let mut gcp_policies = BTreeMap::new();
        for size in SIZES {
            local_policies
                .insert(size, fixture::pull_policies(&bench.work.join(format!("policies-local-{size}")), "dev", size)?);
            gcp_policies
                .insert(size, fixture::pull_policies(&bench.work.join(format!("policies-gcp-{size}")), "edge", size)?);
        }
        Ok(Setup { store_dir, emulator, local_policies, gcp_policies })
    }

    pub fn local_stores(&self) -> String {
        fixture::file_store_toml(&self.store_dir)
    }

    pub fn gcp_stores(&self) -> String {
        fixture::gcp_store_toml(self.emulator.port)
    }
}
