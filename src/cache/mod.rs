//! The sealed last-known-good cache: what a node needs to rebuild each policy's bundle when it
//! starts without its store (an edge site that reboots during a partition), sealed with
//! AES-256-GCM under a key that never lives beside it.
//!
//! After each delivery the engine seals the policy's inputs (the store's value and version,
//! the previous public key a JWK set lists, the template secrets) into
//! `STATE_DIR/cache/POLICY.sealed`, written atomically and fsync'd (it is on disk, unlike the
//! bundles). On start, a required policy whose bundle is missing is rebuilt from its entry
//! before the store is read, if the entry is younger than `max_stale`.
//!
//! An entry is refused, and nothing from it delivered, when it was sealed with another key,
//! when a bit of it changed, when it was sealed for another node, policy, store or secret (the
//! associated data binds the ciphertext to all of them, so an entry cannot be swapped for
//! another), or when it is older than `max_stale`. A version the store says is disabled or
//! revoked is purged. Values stay in zeroized buffers; the file format is versioned.
//!
//! ```text
//! "KEYTURN-CACHE\n" | u16 format | key id, node, policy, store, secret, version | u64 sealed at
//!   (all of it the associated data) | 12-byte nonce | AES-256-GCM(contents) + tag
//! ```

mod key;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

pub use key::{CREDENTIAL, KeySource};

use crate::clock::SharedClock;
use crate::deliver::Previous;
use crate::generate::PublicKey;
use crate::secret::{SecretBytes, Version, VersionId};

const MAGIC: &[u8] = b"KEYTURN-CACHE\n";
/// The format this keyturn writes and reads.
const FORMAT: u16 = 1;
/// An entry is never larger than this: values are at most 64 KiB at Google, and a policy has
/// few template secrets.
const MAX_ENTRY: u64 = 4 << 20;
const SUFFIX: &str = "sealed";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Key(String),
    #[error("cache entry {}: {reason}; nothing from it is delivered", path.display())]
    Refused { path: PathBuf, reason: String },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whose bundle an entry rebuilds: it is sealed for exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    pub policy: &'a str,
    pub store: &'a str,
    pub secret: &'a str,
}

/// What a policy's bundle is rebuilt from.
#[derive(Debug)]
pub struct Contents {
    pub version: Version,
    /// The previous version's public key, while a JWK set lists it.
    pub previous: Option<Previous>,
    /// The current versions of the policy's `[secrets.NAME]`.
    pub extras: BTreeMap<String, Version>,
}

impl Contents {
    /// Every version the contents are made from, by name: what [`Header::inputs`] records.
    pub fn inputs(&self) -> String {
        let mut inputs = self.version.id.to_string();
        if let Some(previous) = &self.previous {
            inputs.push_str(&format!(" previous {}", previous.version));
        }
        for (name, extra) in &self.extras {
            inputs.push_str(&format!(" {name} {}", extra.id));
        }
        inputs
    }
}

/// An entry's plain part: what it is, never what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub format: u16,
    /// The first 8 bytes of HMAC-SHA256(key, "keyturn cache key id"), in hex: which key sealed
    /// it, without saying anything about the key.
    pub key_id: String,
    pub node: String,
    pub policy: String,
    pub store: String,
    pub secret: String,
    pub version: VersionId,
    /// Every version the contents hold, by name (`4`, `4 previous 3 db 9`): not secret, and
    /// enough to tell whether an entry is up to date without opening it.
    pub inputs: String,
    #[serde(serialize_with = "as_rfc3339")]
    pub sealed_at: SystemTime,
}

fn as_rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::clock::rfc3339(*time))
}

/// A restored entry: its header and contents.
#[derive(Debug)]
pub struct Restored {
    pub header: Header,
    pub contents: Contents,
}

/// The cache of one node.
pub struct Cache {
    dir: PathBuf,
    key: LessSafeKey,
    key_id: String,
    source: KeySource,
    node: String,
    clock: SharedClock,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.dir).field("key", &self.source.to_string()).finish_non_exhaustive()
    }
}

impl Cache {
    /// The cache in `dir` (created 0700), with the key from `source`.
    pub fn open(dir: &Path, source: KeySource, node: &str, clock: SharedClock) -> Result<Cache, CacheError> {
        let secret = source.read().map_err(CacheError::Key)?;
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, secret.as_ref())
                .map_err(|_| CacheError::Key("the cache key is unusable".into()))?,
        );
        let key_id = key_id(secret.as_ref());
        crate::sys::create_dir(dir, 0o700).map_err(|source| CacheError::Io {
            action: "create",
            path: dir.into(),
            source,
        })?;
        Ok(Cache { dir: dir.to_path_buf(), key, key_id, source, node: node.to_string(), clock })
    }

    /// Where the key came from, for messages and `keyturn cache status`.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn path(&self, policy: &str) -> PathBuf {
        entry_path(&self.dir, policy)
    }

    /// Seals `contents` for `binding`, replacing the policy's entry atomically.
    pub fn seal(&self, binding: Binding<'_>, contents: &Contents) -> Result<(), CacheError> {
        let header = Header {
            format: FORMAT,
            key_id: self.key_id.clone(),
            node: self.node.clone(),
            policy: binding.policy.to_string(),
            store: binding.store.to_string(),
            secret: binding.secret.to_string(),
            version: contents.version.id.clone(),
            inputs: contents.inputs(),
            sealed_at: self.clock.now(),
        };
        let aad = encode_header(&header);
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| CacheError::Key("no random nonce".into()))?;
        let mut sealed = encode_contents(contents);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut *sealed)
            .map_err(|_| CacheError::Key("sealing failed".into()))?;
        let mut file = Zeroizing::new(Vec::with_capacity(aad.len() + NONCE_LEN + sealed.len()));
        file.extend_from_slice(&aad);
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&sealed);
        let path = self.path(binding.policy);
        crate::sys::replace_file(&path, &file, 0o600).map_err(|source| CacheError::Io { action: "write", path, source })
    }

    /// The policy's entry, if it has one that may be delivered: sealed with this key, for this
    /// node, policy, store and secret, unaltered, and sealed less than `max_stale` ago.
    pub fn restore(&self, binding: Binding<'_>, max_stale: Duration) -> Result<Option<Restored>, CacheError> {
        let path = self.path(binding.policy);
        let refused = |reason: String| CacheError::Refused { path: path.clone(), reason };
        let Some(file) = read_entry(&path)? else { return Ok(None) };
        let (header, aad_len) = decode_header(&file).map_err(|e| refused(e.to_string()))?;
        let expected = (self.node.as_str(), binding.policy, binding.store, binding.secret);
        let found = (header.node.as_str(), header.policy.as_str(), header.store.as_str(), header.secret.as_str());
        if found != expected {
            return Err(refused(format!(
                "it was sealed for node {}, policy {}, store {}, secret {}, not node {}, policy {}, store {}, secret {}",
                found.0, found.1, found.2, found.3, expected.0, expected.1, expected.2, expected.3
            )));
        }
        if header.key_id != self.key_id {
            return Err(refused(format!(
                "it was sealed with another key (key id {}), not the one from {} (key id {})",
                header.key_id, self.source, self.key_id
            )));
        }
        let age = self.clock.now().duration_since(header.sealed_at).unwrap_or_default();
        if age > max_stale {
            return Err(refused(format!(
                "it was sealed {} ago, longer than max_stale ({})",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(max_stale)
            )));
        }
        let (aad, rest) = file.split_at(aad_len);
        if rest.len() < NONCE_LEN {
            return Err(refused("it is truncated".into()));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused("it is truncated".into()))?;
        let mut plain = Zeroizing::new(sealed.to_vec());
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut plain)
            .map_err(|_| refused("it does not authenticate: it was altered or damaged".into()))?;
        let contents = decode_contents(opened, &header.version).map_err(|e| refused(e.to_string()))?;
        Ok(Some(Restored { header, contents }))
    }

    /// Whether the policy has an entry on disk.
    pub fn has_entry(&self, policy: &str) -> bool {
        self.path(policy).exists()
    }

    /// Drops the policy's entry; whether there was one.
    pub fn purge(&self, policy: &str) -> Result<bool, CacheError> {
        let path = self.path(policy);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(CacheError::Io { action: "remove", path, source }),
        }
    }

    /// Drops the policy's entry if it holds `version`, as current or as the previous key: a
    /// version the store says is disabled or revoked must never come back from the cache.
    pub fn purge_version(&self, policy: &str, version: &VersionId) -> Result<bool, CacheError> {
        let path = self.path(policy);
        let Some(file) = read_entry(&path)? else { return Ok(false) };
        let holds_current = decode_header(&file).map(|(h, _)| h.version == *version).unwrap_or(true);
        // The previous version is inside the ciphertext: open it to look (a damaged entry goes).
        let holds = holds_current
            || match self.open_any(&file) {
                Some(contents) => contents.previous.as_ref().is_some_and(|p| p.version == *version),
                None => true,
            };
        if holds { self.purge(policy) } else { Ok(false) }
    }

    /// The contents of an entry whatever it is bound to, if this key opens it.
    fn open_any(&self, file: &[u8]) -> Option<Contents> {
        let (header, aad_len) = decode_header(file).ok()?;
        let (aad, rest) = file.split_at(aad_len);
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut plain = Zeroizing::new(sealed.to_vec());
        let opened = self.key.open_in_place(nonce, Aad::from(aad), &mut plain).ok()?;
        decode_contents(opened, &header.version).ok()
    }
}

/// The entry file of `policy` in a cache directory.
pub fn entry_path(dir: &Path, policy: &str) -> PathBuf {
    dir.join(format!("{policy}.{SUFFIX}"))
}

/// One file of a cache directory: the policy it is named after and its header (which needs no
/// key to read), or why the header cannot be read.
pub type Listed = (String, Result<Header, String>);

/// Every entry in a cache directory, by the policy its file is named after, with its header:
/// what `keyturn cache status` lists. Never a value.
pub fn list(dir: &Path) -> Result<Vec<Listed>, CacheError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CacheError::Io { action: "list", path: dir.into(), source }),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(policy) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(&format!(".{SUFFIX}")))
        else {
            continue;
        };
        let header = match read_entry(&path) {
            Ok(Some(file)) => decode_header(&file).map(|(h, _)| h).map_err(|e| e.to_string()),
            Ok(None) => continue,
            Err(e) => Err(crate::error_chain(&e)),
        };
        found.push((policy.to_string(), header));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

fn read_entry(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, CacheError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Io { action: "read", path: path.into(), source }),
    };
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_ENTRY + 1).read_to_end(&mut bytes).map_err(|source| CacheError::Io {
        action: "read",
        path: path.into(),
        source,
    })?;
    if bytes.len() as u64 > MAX_ENTRY {
        return Err(CacheError::Refused { path: path.into(), reason: format!("it is larger than {MAX_ENTRY} bytes") });
    }
    Ok(Some(bytes))
}

/// The id of the key `source` holds (see [`Header::key_id`]), without opening any cache.
pub fn key_id_of(source: &KeySource) -> Result<String, String> {
    source.read().map(|key| key_id(key.as_ref()))
}

fn key_id(key: &[u8]) -> String {
    let tag =
        aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key), b"keyturn cache key id");
    tag.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn encode_header(header: &Header) -> Vec<u8> {
    let mut out = Writer(Vec::new());
    out.0.extend_from_slice(MAGIC);
    out.0.extend_from_slice(&header.format.to_be_bytes());
    for text in [&header.key_id, &header.node, &header.policy, &header.store, &header.secret] {
        out.bytes(text.as_bytes());
    }
    out.bytes(header.version.as_str().as_bytes());
    out.bytes(header.inputs.as_bytes());
    out.u64(header.sealed_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
    out.0
}

/// The header and how many bytes of the file it (the associated data) takes.
fn decode_header(file: &[u8]) -> Result<(Header, usize), &'static str> {
    let rest = file.strip_prefix(MAGIC).ok_or("it is not a keyturn cache entry")?;
    let mut reader = Reader(rest);
    let format = u16::from_be_bytes(reader.take(2)?.try_into().map_err(|_| "it is truncated")?);
    if format != FORMAT {
        return Err("it has a cache format this keyturn does not read (sealed by another release)");
    }
    let mut text = || -> Result<String, &'static str> {
        String::from_utf8(reader.bytes()?.to_vec()).map_err(|_| "its header is damaged")
    };
    let (key_id, node, policy, store, secret) = (text()?, text()?, text()?, text()?, text()?);
    let version = VersionId::new(text()?);
    let inputs = text()?;
    let sealed_at = UNIX_EPOCH + Duration::from_millis(reader.u64()?);
    let consumed = file.len() - reader.0.len();
    Ok((Header { format, key_id, node, policy, store, secret, version, inputs, sealed_at }, consumed))
}

fn encode_contents(contents: &Contents) -> Zeroizing<Vec<u8>> {
    let mut out = Writer(Vec::new());
    let version = |out: &mut Writer, version: &Version| {
        out.bytes(version.value.expose());
        out.0.extend_from_slice(&version.crc32c.to_be_bytes());
        out.u64(version.created.and_then(|c| c.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64));
    };
    version(&mut out, &contents.version);
    match &contents.previous {
        Some(previous) => {
            out.0.push(1);
            out.bytes(previous.version.as_str().as_bytes());
            out.bytes(&previous.public.to_stored());
        }
        None => out.0.push(0),
    }
    out.u64(contents.extras.len() as u64);
    for (name, extra) in &contents.extras {
        out.bytes(name.as_bytes());
        out.bytes(extra.id.as_str().as_bytes());
        version(&mut out, extra);
    }
    Zeroizing::new(out.0)
}

fn decode_contents(plain: &[u8], id: &VersionId) -> Result<Contents, &'static str> {
    let mut reader = Reader(plain);
    let version = |reader: &mut Reader<'_>, id: VersionId| -> Result<Version, &'static str> {
        let value = SecretBytes::copy_from(reader.bytes()?);
        let crc32c = u32::from_be_bytes(reader.take(4)?.try_into().map_err(|_| "it is truncated")?);
        if value.crc32c() != crc32c {
            return Err("its value does not match its checksum");
        }
        let created = Some(reader.u64()?).filter(|m| *m > 0).map(|m| UNIX_EPOCH + Duration::from_millis(m));
        Ok(Version { id, value, crc32c, created })
    };
    let current = version(&mut reader, id.clone())?;
    let previous = match reader.take(1)? {
        [1] => {
            let version = VersionId::new(String::from_utf8(reader.bytes()?.to_vec()).map_err(|_| "it is damaged")?);
            let public = PublicKey::from_stored(reader.bytes()?).map_err(|_| "its previous key is damaged")?;
            Some(Previous { version, public })
        }
        _ => None,
    };
    let mut extras = BTreeMap::new();
    for _ in 0..reader.u64()? {
        let name = String::from_utf8(reader.bytes()?.to_vec()).map_err(|_| "it is damaged")?;
        let id = VersionId::new(String::from_utf8(reader.bytes()?.to_vec()).map_err(|_| "it is damaged")?);
        extras.insert(name, version(&mut reader, id)?);
    }
    Ok(Contents { version: current, previous, extras })
}

/// Length-prefixed fields, big-endian.
struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let (taken, rest) = self.0.split_at_checked(n).ok_or("it is truncated")?;
        self.0 = rest;
        Ok(taken)
    }

    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| "it is truncated")?) as usize;
        self.take(len)
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| "it is truncated")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;

    struct World {
        dir: tempfile::TempDir,
        clock: std::sync::Arc<TokioClock>,
    }

    impl World {
        fn new() -> World {
            let start = humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
            World { dir: tempfile::tempdir().unwrap(), clock: std::sync::Arc::new(TokioClock::starting_at(start)) }
        }

        fn key(&self, name: &str, byte: u8) -> KeySource {
            let path = self.dir.path().join(name);
            crate::sys::replace_file(&path, &[byte; 32], 0o600).unwrap();
            KeySource::File(path)
        }

        fn cache(&self, key: KeySource) -> Cache {
            Cache::open(&self.dir.path().join("cache"), key, "edge-17", self.clock.clone()).unwrap()
        }
    }

    const BINDING: Binding<'static> = Binding { policy: "api", store: "edge", secret: "api-key" };
    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    fn contents() -> Contents {
        let public = crate::generate::PrivateKey::parse(&crate::generate::Generator::Ed25519.generate().unwrap())
            .unwrap()
            .public_key();
        Contents {
            version: Version::new(4, SecretBytes::copy_from(b"FIXTURE-cache-value")),
            previous: Some(Previous { version: VersionId::from(3), public }),
            extras: BTreeMap::from([("db".to_string(), Version::new(9, SecretBytes::copy_from(b"FIXTURE-db")))]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sealed_entry_comes_back_whole_and_holds_no_value_in_clear() {
        let world = World::new();
        let cache = world.cache(world.key("key", 1));
        let sealed = contents();
        cache.seal(BINDING, &sealed).unwrap();
        let file = std::fs::read(entry_path(&world.dir.path().join("cache"), "api")).unwrap();
        assert!(!file.windows(7).any(|w| w == b"FIXTURE"), "no value in the clear");
        let mode = std::fs::metadata(entry_path(&world.dir.path().join("cache"), "api")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);

        let restored = cache.restore(BINDING, WEEK).unwrap().unwrap();
        assert_eq!(restored.contents.version.value, sealed.version.value);
        assert_eq!(restored.contents.version.id, sealed.version.id);
        assert_eq!(restored.contents.previous, sealed.previous);
        assert_eq!(restored.contents.extras["db"].value, sealed.extras["db"].value);
        assert_eq!((restored.header.policy.as_str(), restored.header.version.as_str()), ("api", "4"));
        assert!(cache.restore(Binding { policy: "other", ..BINDING }, WEEK).unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_key_a_flipped_bit_a_moved_entry_and_an_old_one_are_refused() {
        let world = World::new();
        let cache = world.cache(world.key("key", 1));
        cache.seal(BINDING, &contents()).unwrap();
        let path = entry_path(&world.dir.path().join("cache"), "api");
        let good = std::fs::read(&path).unwrap();
        let refusal = |cache: &Cache, binding: Binding<'_>| match cache.restore(binding, WEEK) {
            Err(CacheError::Refused { reason, .. }) => reason,
            other => panic!("not refused: {other:?}"),
        };

        let other_key = world.cache(world.key("other", 2));
        let reason = refusal(&other_key, BINDING);
        assert!(reason.contains("sealed with another key") && reason.contains("key_file"), "{reason}");

        for index in 0..good.len() {
            let mut flipped = good.clone();
            flipped[index] ^= 0x01;
            crate::sys::replace_file(&path, &flipped, 0o600).unwrap();
            let reason = refusal(&cache, BINDING);
            assert!(!reason.contains("FIXTURE"), "{reason}");
        }
        crate::sys::replace_file(&path, &good, 0o600).unwrap();

        // Moved to another policy's name: the file name says one policy, the sealed binding another.
        std::fs::rename(&path, entry_path(&world.dir.path().join("cache"), "web")).unwrap();
        let reason = refusal(&cache, Binding { policy: "web", ..BINDING });
        assert!(
            reason.contains("sealed for node edge-17, policy api") && reason.contains("not node edge-17, policy web"),
            "{reason}"
        );
        std::fs::rename(entry_path(&world.dir.path().join("cache"), "web"), &path).unwrap();
        let reason = refusal(&cache, Binding { secret: "another-secret", ..BINDING });
        assert!(reason.contains("secret api-key") && reason.contains("secret another-secret"), "{reason}");

        tokio::time::advance(WEEK + Duration::from_secs(1)).await;
        let reason = refusal(&cache, BINDING);
        assert!(reason.contains("longer than max_stale (7days)"), "{reason}");
        assert!(cache.restore(BINDING, WEEK * 2).unwrap().is_some(), "a longer max_stale takes it");
        assert!(matches!(cache.restore(BINDING, Duration::ZERO), Err(CacheError::Refused { .. })), "0: never");
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_version_is_purged_as_current_or_as_previous() {
        let world = World::new();
        let cache = world.cache(world.key("key", 1));
        cache.seal(BINDING, &contents()).unwrap();
        assert!(!cache.purge_version("api", &VersionId::from(2)).unwrap(), "holds neither 4 nor 3");
        assert!(cache.purge_version("api", &VersionId::from(3)).unwrap(), "3 is the previous key");
        assert!(cache.restore(BINDING, WEEK).unwrap().is_none());
        cache.seal(BINDING, &contents()).unwrap();
        assert!(cache.purge_version("api", &VersionId::from(4)).unwrap());
        assert!(!cache.purge("api").unwrap());

        cache.seal(BINDING, &contents()).unwrap();
        let listed = list(&world.dir.path().join("cache")).unwrap();
        assert_eq!(listed.len(), 1);
        let header = listed[0].1.as_ref().unwrap();
        assert_eq!((listed[0].0.as_str(), header.version.as_str(), header.key_id.len()), ("api", "4", 16));
        assert_eq!(header.inputs, "4 previous 3 db 9");
    }
}
