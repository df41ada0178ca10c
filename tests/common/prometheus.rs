//! A real Prometheus server (the Debian package's `prometheus`), started on loopback with a
//! generated configuration that scrapes every second the targets a test names, through file
//! service discovery (so targets whose ports are known only once they run can be added
//! later). Stopped, and its data removed, when the handle drops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{wait_for_every, write};

pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    pub address: String,
}

impl Prometheus {
    /// Starts Prometheus with no targets yet; returns once it is ready.
    pub fn start() -> Prometheus {
        let mut dir = tempfile::Builder::new().prefix("keyturn-prometheus-").tempdir().unwrap();
        let targets = dir.path().join("targets.json");
        write(&targets, "[]");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: keyturn\n    file_sd_configs:\n      - files: [\"{}\"]\n        refresh_interval: 1s\n",
            targets.display()
        );
        write(&dir.path().join("prometheus.yml"), &config);
        // A port of its own: taken from the kernel, then handed over; a clash (another
        // process took it meanwhile) is retried with another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let address = format!("127.0.0.1:{port}");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={address}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
                .spawn()
                .expect("prometheus is needed: scripts/test.sh installs it (Debian package prometheus)");
            let mut prometheus = Prometheus { child, dir, address };
            let mut exited = false;
            wait_for_every("prometheus to be ready", Duration::from_secs(30), Duration::from_millis(50), || {
                exited = prometheus.child.try_wait().unwrap().is_some();
                exited
                    || super::http::request(&prometheus.address, "GET", "/-/ready", None).is_ok_and(|(s, _)| s == 200)
            });
            if !exited {
                return prometheus;
            }
            dir = prometheus.take_dir();
        }
        panic!("prometheus did not start on any of five ports");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.wait();
        let placeholder = tempfile::tempdir().unwrap();
        let dir = std::mem::replace(&mut self.dir, placeholder);
        drop(self);
        dir
    }

    /// The base URL of its HTTP API, for `[fleet] prometheus`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Scrapes exactly `targets` (`host:port`) from now on, each with `labels`.
    pub fn scrape(&self, targets: &[&str]) {
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let text = format!("[{{\"targets\": [{}], \"labels\": {{}}}}]", list.join(", "));
        // Replaced whole, so Prometheus never reads half a file.
        let path = self.targets();
        let partial = path.with_extension("tmp");
        write(&partial, &text);
        std::fs::rename(&partial, &path).unwrap();
    }

    fn targets(&self) -> PathBuf {
        self.dir.path().join("targets.json")
    }

    /// Its own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
