//! What the agents under test read: agent files, policy files, and a local file store written
//! directly in its documented layout (README, "The local file store"), which is much faster
//! than one `keyturn store put` process per secret.
//!
//! Naming, shared with the baselines: policy `pIIII` reads secret `sIIII` and delivers it raw as
//! the one file `bIIII/value`, so N policies make N bundles of one file each.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// Writes a new file (replacing one), with `mode`. Not `std::fs::write`, which the workspace's
/// clippy.toml refuses so that secrets are never written with the umask's mode.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.write_all(contents)?;
    Ok(())
}

/// An empty directory at `path`, whatever was there.
pub fn fresh_dir(path: &Path) -> Result<PathBuf, Error> {
    remove(path)?;
    std::fs::create_dir_all(path)?;
    Ok(path.to_owned())
}

pub fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("removing {}: {e}", path.display()).into()),
        _ => Ok(()),
    }
}

/// The value of secret `index`: 32 printable bytes, different for every secret and version.
pub fn value(index: usize, version: u64) -> Vec<u8> {
    format!("value-{index:04}-v{version:04}-{}", "x".repeat(32)).into_bytes()[..32].to_vec()
}

/// A file store under `dir` with secrets `s0000` … holding one version each, `current` = 1.
pub fn file_store(dir: &Path, count: usize) -> Result<(), Error> {
    fresh_dir(dir)?;
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(0o700);
    for index in 0..count {
        let secret = dir.join(format!("s{index:04}"));
        builder.create(&secret)?;
        builder.create(secret.join("versions"))?;
        let value = value(index, 1);
        write_file(&secret.join("versions/1"), &value, 0o600)?;
        let meta = serde_json::json!({
            "etag": 1,
            "next_version": 2,
            "aliases": {"current": "1"},
            "annotations": {},
            "versions": {"1": {"state": "enabled", "created": "2026-01-01T00:00:00.000000Z", "crc32c": crc32c::crc32c(&value)}},
        });
        write_file(&secret.join("secret.json"), serde_json::to_string_pretty(&meta)?.as_bytes(), 0o600)?;
        write_file(&secret.join("lock"), b"", 0o600)?;
    }
    Ok(())
}

/// `[stores.dev]`, a local file store.
pub fn file_store_toml(dir: &Path) -> String {
    format!("[stores.dev]\nkind = \"file\"\ndir = \"{}\"\n", dir.display())
}

/// `[stores.edge]`, the emulator.
pub fn gcp_store_toml(port: u16) -> String {
    format!(
        "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"http://127.0.0.1:{port}\"\nretry_backoff = \"50ms\"\n"
    )
}

/// A directory of `count` pull-only policies `p0000` … on `store`.
pub fn pull_policies(dir: &Path, store: &str, count: usize) -> Result<PathBuf, Error> {
    fresh_dir(dir)?;
    for index in 0..count {
        let policy = format!(
            "[secret]\nstore = \"{store}\"\nid = \"s{index:04}\"\n\n[[deliver]]\npath = \"b{index:04}/value\"\n"
        );
        write_file(&dir.join(format!("p{index:04}.toml")), policy.as_bytes(), 0o644)?;
    }
    Ok(dir.to_owned())
}

/// One agent's own files: its agent file, runtime directory (tmpfs) and state directory.
#[derive(Debug, Clone)]
pub struct Agent {
    pub config: PathBuf,
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
}

#[derive(Debug)]
pub struct AgentSpec<'a> {
    pub node: &'a str,
    pub policies: &'a Path,
    pub poll: &'a str,
    pub stores: &'a str,
}

/// Writes `dir/keyturn.toml` with the runtime and state directories under `dir` (which must be
/// on tmpfs), the admin listener off so that many agents can run at once, and jitter 10%.
pub fn agent(dir: &Path, spec: &AgentSpec) -> Result<Agent, Error> {
    fresh_dir(dir)?;
    let agent = Agent { config: dir.join("keyturn.toml"), runtime_dir: dir.join("run"), state_dir: dir.join("state") };
    let text = format!(
        "[agent]\nnode = \"{}\"\nruntime_dir = \"{}\"\nstate_dir = \"{}\"\npolicies = \"{}\"\npoll = \"{}\"\njitter = \"10%\"\n\n{}\n[admin]\nlisten = \"off\"\n",
        spec.node,
        agent.runtime_dir.display(),
        agent.state_dir.display(),
        spec.policies.display(),
        spec.poll,
        spec.stores,
    );
    write_file(&agent.config, text.as_bytes(), 0o644)?;
    Ok(agent)
}

impl Agent {
    /// Removes what a previous run delivered, so that the next one starts cold.
    pub fn clear(&self) -> Result<(), Error> {
        remove(&self.runtime_dir)?;
        remove(&self.state_dir)
    }
}
