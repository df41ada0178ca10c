//! Every outbound client shares one TLS configuration (`src/http.rs`): aws-lc-rs, with the
//! system's roots loaded once, on the first https handshake, and checked by the platform
//! verifier. Loading the roots lazily means keyturn installs its own certificate verifier (a
//! wrapper that makes the platform verifier on first use), so this proves, against a real TLS
//! server (`openssl s_server`) on 127.0.0.1, that it still verifies: a server whose issuer the
//! system does not trust is refused; the same server is accepted once its CA is a trusted
//! root (`SSL_CERT_FILE`, which the system's root loading honours).

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{World, text, wait_for};

/// A TLS server on 127.0.0.1 answering every request with openssl's status page. Killed on
/// drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// A CA, and a server certificate for 127.0.0.1 that it issued. Returns the CA's file.
fn certificates(dir: &Path) -> PathBuf {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=keyturn test CA"]);
    openssl(dir, &ca);
    let mut request = vec!["req"];
    request.extend(ec);
    request.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    openssl(dir, &request);
    common::write(
        &dir.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n",
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ],
    );
    dir.join("ca.pem")
}

fn serve(dir: &Path) -> Server {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-cert", "server.pem", "-key", "server.key", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    let server = Server { child, port };
    wait_for("openssl s_server to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", server.port)).is_ok()
    });
    server
}

#[test]
fn a_server_the_system_does_not_trust_is_refused_and_one_it_trusts_is_accepted() {
    let world = World::new("");
    let ca = certificates(world.disk.path());
    let server = serve(world.disk.path());
    // `keyturn fleet status` asks the [fleet] Prometheus, over https, about each policy.
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.add_stores(&format!("[fleet]\nprometheus = \"https://127.0.0.1:{}\"\ntimeout = \"5s\"\n", server.port));
    let fleet_status = |trusted: Option<&Path>| {
        let mut command = world.command(&["fleet", "status"]);
        command.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
        if let Some(ca) = trusted {
            command.env("SSL_CERT_FILE", ca);
        }
        command.output().unwrap()
    };

    let out = fleet_status(None);
    let refused = text(&out);
    assert!(!out.status.success(), "{refused}");
    assert!(refused.contains("certificate") && refused.contains("UnknownIssuer"), "a certificate error: {refused}");
    assert!(!refused.contains("Prometheus' JSON"), "nothing was read from the server: {refused}");

    // Trusted: the handshake completes and the answer (openssl's HTML page) is read, and
    // refused for what it is, not for the certificate.
    let out = fleet_status(Some(&ca));
    let accepted = text(&out);
    assert!(!out.status.success(), "{accepted}");
    assert!(accepted.contains("not Prometheus' JSON"), "the server's answer was read: {accepted}");
    assert!(!accepted.contains("UnknownIssuer"), "{accepted}");
}
