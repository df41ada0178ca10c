//! The outbound HTTP policy: one way to build the client for every URL keyturn was given (the
//! event collector, the HTTP notifier, a Secret Manager endpoint), because each request may
//! carry a bearer token or a value.
//!
//! - **No redirects.** A redirect would send the token (and, for 307/308, the body again) to
//!   wherever the server says; an answer of 3xx is reported as what it is.
//! - **No proxy for loopback.** `http_proxy`, `HTTPS_PROXY` and `ALL_PROXY` apply to remote
//!   hosts only: a proxy variable in the agent's environment must not turn a request to
//!   `127.0.0.1`, token included, into one to somebody else.
//! - **https only beyond loopback**, as validation already requires of the URL: the client
//!   refuses plain http itself too, so no code path can send a token in clear to the network.
//!
//! URLs in messages are shown by [`shown`]: scheme, host, port and path; never credentials or
//! the query string, which may hold a signature or a token.
//!
//! Every client shares one TLS configuration, [`tls`]: what reqwest would build (aws-lc-rs, the
//! system's roots, checked by the platform verifier), except that the roots are loaded once
//! per process, when the first https server is verified. Loading them (the bundle file, then
//! every file of the certificates directory) cost each client a few milliseconds of CPU at
//! construction, even when its only endpoint is plain http on loopback (issue 17).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::units::is_loopback;
pub use crate::config::units::shown_url as shown;

/// A client builder for requests to `url` under the policy above; the caller adds timeouts.
pub fn builder(url: &str) -> reqwest::ClientBuilder {
    let loopback = url::Url::parse(url).is_ok_and(|u| is_loopback(&u));
    let builder = tls_builder().redirect(reqwest::redirect::Policy::none());
    if loopback { builder.no_proxy() } else { builder.https_only(true) }
}

/// A client builder with keyturn's user agent and the shared [`tls`] configuration, and no
/// other policy: for the identity exchanges, whose URLs come from a credential file and
/// follow Google's own rules (metadata and link-local addresses included).
pub fn tls_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("keyturn/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls())
}

/// The TLS configuration of every client: aws-lc-rs, TLS 1.2 and 1.3, HTTP/2 or 1.1 by ALPN,
/// and the system's roots, loaded on first use.
pub fn tls() -> rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let verifier = Arc::new(SystemRoots { provider: provider.clone(), verifier: OnceLock::new() });
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports TLS 1.2 and 1.3")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config
        })
        .clone()
}

/// The platform verifier over the system's roots, made when the first certificate is to be
/// verified: a process that speaks only plain http never reads a root. The signature checks
/// of the handshake need no roots and use the provider directly, as that verifier does.
#[derive(Debug)]
struct SystemRoots {
    provider: Arc<CryptoProvider>,
    verifier: OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>>,
}

impl SystemRoots {
    fn verifier(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        let made = self.verifier.get_or_init(|| rustls_platform_verifier::Verifier::new(self.provider.clone()));
        made.as_ref().map_err(Clone::clone)
    }
}

impl ServerCertVerifier for SystemRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client for `url` with a whole-request `timeout`.
pub fn client(url: &str, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    builder(url).timeout(timeout).connect_timeout(timeout.min(Duration::from_secs(10))).build()
}

/// A failed request, said without its URL (reqwest's own messages include it, query and
/// all): the caller names the URL with [`shown`].
pub fn error(error: reqwest::Error) -> String {
    crate::error_chain(&error.without_url())
}

/// A bearer token file larger than this is not one.
pub const TOKEN_FILE_MAX: u64 = 16 * 1024;

/// A bearer token from `path`: a small regular file (a link to one, as Kubernetes mounts a
/// Secret, is followed) of UTF-8 text; read off the runtime thread, at most for `timeout`. Errors name the file, never its contents.
pub async fn read_token(path: &std::path::Path, timeout: Duration) -> Result<zeroize::Zeroizing<String>, String> {
    let file = crate::sys::read_small_file_async(path, TOKEN_FILE_MAX, crate::sys::Links::Follow, timeout)
        .await
        .map_err(|e| format!("cannot read the bearer token file {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&file.bytes)
        .map_err(|_| format!("the bearer token file {} is not UTF-8 text", path.display()))?;
    Ok(zeroize::Zeroizing::new(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        assert_eq!(shown("https://user:pw@example.com:8443/reload?sig=abc#x"), "https://example.com:8443/reload");
        assert_eq!(shown("http://127.0.0.1:9/events"), "http://127.0.0.1:9/events");
        assert_eq!(shown("not a url ?token=abc"), "(not a URL)");
    }

    #[tokio::test]
    async fn loopback_requests_take_no_proxy_and_no_redirect() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = target.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = target.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let _ = stream.read(&mut head).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 307 X\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let url = format!("http://{address}/reload");
        let response = client(&url, Duration::from_secs(5)).unwrap().post(&url).send().await.unwrap();
        assert_eq!(response.status(), 307, "answered, not followed");
        server.await.unwrap();
        // Beyond loopback, plain http is refused by the client itself, before any connection.
        let remote = client("http://192.0.2.1/x", Duration::from_secs(1)).unwrap();
        let err = remote.get("http://192.0.2.1/x").send().await.unwrap_err();
        assert!(err.is_builder(), "{err}");
    }
}
