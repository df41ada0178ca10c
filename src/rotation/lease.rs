//! The rotation lease: which node may rotate a shared secret right now.
//!
//! It lives in the secret's own metadata, as the annotation `keyturn.lease` with the value
//! `NODE pid PID until TIME`, and is only ever written by a compare-and-swap on the secret's
//! etag: two nodes that read the same free lease both try to write it, and exactly one write
//! succeeds. (Google's annotation keys allow no `/`, hence the dot.) A lease ends at its
//! `until` time whatever happens to its holder, so a rotator that crashed holds nobody up for
//! longer than the lease. On the holder's own node a lease whose process is gone is free at
//! once, since that can be checked locally.

use std::time::{Duration, SystemTime};

pub const ANNOTATION: &str = "keyturn.lease";

/// A lease as written in the annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub node: String,
    pub pid: u32,
    pub until: SystemTime,
}

impl Lease {
    pub fn new(node: &str, pid: u32, now: SystemTime, ttl: Duration) -> Self {
        Lease { node: node.to_string(), pid, until: now + ttl }
    }

    pub fn encode(&self) -> String {
        format!("{} pid {} until {}", self.node, self.pid, humantime::format_rfc3339_seconds(self.until))
    }

    pub fn parse(text: &str) -> Option<Lease> {
        let mut words = text.split_whitespace();
        let node = words.next()?.to_string();
        let pid = match (words.next()?, words.next()?.parse().ok()?) {
            ("pid", pid) => pid,
            _ => return None,
        };
        let until = match (words.next()?, humantime::parse_rfc3339(words.next()?).ok()?) {
            ("until", until) => until,
            _ => return None,
        };
        words.next().is_none().then_some(Lease { node, pid, until })
    }
}

/// Whether `node` (this process is `pid`) may take a lease whose annotation reads `current`.
/// `Err` names the holder that must be waited for.
pub fn may_take(
    current: Option<&str>,
    node: &str,
    pid: u32,
    now: SystemTime,
    alive: impl Fn(u32) -> bool,
) -> Result<(), String> {
    let Some(text) = current else { return Ok(()) };
    // An annotation keyturn cannot read was not written by keyturn; refusing to overwrite it
    // would block rotation forever, so it is treated as expired.
    let Some(lease) = Lease::parse(text) else { return Ok(()) };
    if now >= lease.until {
        return Ok(());
    }
    if lease.node == node && (lease.pid == pid || !alive(lease.pid)) {
        return Ok(());
    }
    Err(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn encodes_and_parses() {
        let lease = Lease::new("edge-17", 4242, at("2026-11-28T10:00:00Z"), Duration::from_secs(600));
        assert_eq!(lease.encode(), "edge-17 pid 4242 until 2026-11-28T10:10:00Z");
        assert_eq!(Lease::parse(&lease.encode()), Some(lease));
        for bad in [
            "",
            "edge-17",
            "edge-17 pid x until 2026-11-28T10:10:00Z",
            "edge-17 pid 1 until soon",
            "a pid 1 until 2026-11-28T10:10:00Z extra",
        ] {
            assert_eq!(Lease::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn who_may_take_it() {
        let now = at("2026-11-28T10:05:00Z");
        let held = "node-a pid 100 until 2026-11-28T10:10:00Z";
        let expired = "node-a pid 100 until 2026-11-28T10:04:59Z";
        let alive = |pid: u32| pid == 100;
        let dead = |_: u32| false;
        // (annotation, node, pid, alive?, may take?)
        let cases: Vec<(Option<&str>, &str, u32, bool, bool)> = vec![
            (None, "node-b", 7, true, true),
            (Some(held), "node-b", 7, true, false),
            (Some(expired), "node-b", 7, true, true),
            (Some(held), "node-a", 100, true, true),
            (Some(held), "node-a", 200, true, false),
            (Some(held), "node-a", 200, false, true),
            (Some("written by a person"), "node-b", 7, true, true),
        ];
        for (annotation, node, pid, holder_alive, want) in cases {
            let got = if holder_alive {
                may_take(annotation, node, pid, now, alive)
            } else {
                may_take(annotation, node, pid, now, dead)
            };
            assert_eq!(got.is_ok(), want, "{annotation:?} {node} {pid}");
        }
        assert_eq!(may_take(Some(held), "node-b", 7, now, alive), Err(held.to_string()));
    }
}
