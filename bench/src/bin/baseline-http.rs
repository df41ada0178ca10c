//! `baseline-http`: the floor for keyturn's Secret Manager reads, and for its memory and size.
//!
//! A bare tokio (current-thread, like keyturn's default) + reqwest + rustls + aws-lc-rs program
//! that does what a node must do to read N values from Secret Manager, and nothing more: one
//! JWT-bearer token exchange with a service-account key (RS256 signed with aws-lc-rs, as
//! gcp_auth does), then N `GET …/secrets/ID/versions/current:access` with C requests in
//! flight, each response parsed and its value decoded and checked against `dataCrc32c`. It
//! writes no file, reads no configuration and logs nothing.
//!
//! ```text
//! baseline-http --key FILE --endpoint URL --project P --prefix s --count N [--concurrency 32] [--hold]
//! ```
//!
//! Prints `micros=T` (the requests, token included, from the start of `main`) on stdout. With
//! `--hold` it then keeps its client, connections and runtime until standard input closes, so
//! that its resident memory can be read from outside.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
struct Options {
    key: String,
    endpoint: String,
    project: String,
    prefix: String,
    count: usize,
    concurrency: usize,
    hold: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        key: String::new(),
        endpoint: String::new(),
        project: String::new(),
        prefix: "s".into(),
        count: 1,
        concurrency: 32,
        hold: false,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--key" => options.key = value()?,
            "--endpoint" => options.endpoint = value()?,
            "--project" => options.project = value()?,
            "--prefix" => options.prefix = value()?,
            "--count" => options.count = value()?.parse().map_err(|_| "--count: not a number")?,
            "--concurrency" => options.concurrency = value()?.parse().map_err(|_| "--concurrency: not a number")?,
            "--hold" => options.hold = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.key.is_empty() || options.endpoint.is_empty() || options.project.is_empty() {
        return Err("--key, --endpoint and --project are required".into());
    }
    Ok(options)
}

/// A signed JWT-bearer assertion for the key file's service account, as gcp_auth makes it.
fn assertion(key: &serde_json::Value) -> Result<String, Error> {
    let field = |name: &str| key[name].as_str().ok_or_else(|| format!("key file has no {name}"));
    let pem = field("private_key")?;
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    let der = STANDARD.decode(body)?;
    let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| format!("private key: {e}"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": field("client_email")?,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": field("token_uri")?,
        "iat": now,
        "exp": now + 3600,
    });
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signature = vec![0; pair.public_modulus_len()];
    pair.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        message.as_bytes(),
        &mut signature,
    )
    .map_err(|e| format!("signing: {e}"))?;
    Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

async fn token(client: &reqwest::Client, key_file: &str) -> Result<String, Error> {
    let key: serde_json::Value = serde_json::from_slice(&std::fs::read(key_file)?)?;
    let uri = key["token_uri"].as_str().ok_or("key file has no token_uri")?.to_owned();
    let body =
        format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={}", assertion(&key)?);
    let response = client
        .post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    let answer: serde_json::Value = response.json().await?;
    Ok(answer["access_token"].as_str().ok_or("no access_token in the token response")?.to_owned())
}

async fn access(client: &reqwest::Client, url: &str, token: &str) -> Result<usize, Error> {
    let response = client.get(url).bearer_auth(token).send().await?.error_for_status()?;
    let answer: serde_json::Value = response.json().await?;
    let payload = &answer["payload"];
    let data = STANDARD.decode(payload["data"].as_str().ok_or("no payload.data")?)?;
    let expected: u32 = payload["dataCrc32c"].as_str().ok_or("no payload.dataCrc32c")?.parse()?;
    if crc32c::crc32c(&data) != expected {
        return Err(format!("{url}: checksum mismatch").into());
    }
    Ok(data.len())
}

async fn run(options: &Options, started: Instant) -> Result<reqwest::Client, Error> {
    let client = reqwest::Client::builder().build()?;
    let token = Arc::new(token(&client, &options.key).await?);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.min(options.count) {
        let (client, token, next) = (client.clone(), token.clone(), next.clone());
        let base = format!("{}/v1/projects/{}/secrets/{}", options.endpoint, options.project, options.prefix);
        let count = options.count;
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<(), Error>(());
                }
                access(&client, &format!("{base}{index:04}/versions/current:access"), &token).await?;
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined??;
    }
    println!("micros={}", started.elapsed().as_micros());
    Ok(client)
}

fn main() -> ExitCode {
    let started = Instant::now();
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("baseline-http: {message}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("baseline-http: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&options, started)) {
        Ok(client) => {
            if options.hold {
                println!("holding");
                let _ = std::io::stdin().read_to_end(&mut Vec::new());
            }
            drop(client);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("baseline-http: {error}");
            ExitCode::FAILURE
        }
    }
}
