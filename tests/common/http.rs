//! Plain HTTP/1.1 on loopback for the tests: a client for one request, and a server that
//! records what it is sent. Enough protocol for a test to see exactly what crossed the wire.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request with `connection: close`; the status and the body.
pub fn request(address: &str, method: &str, path: &str, bearer: Option<&str>) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let auth = bearer.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head =
        format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("no status in {response:?}"))?;
    Ok((status, response.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// What a [`Recorder`] was sent: the request line and headers, lowercased, and the body.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub head: String,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head.lines().find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
    }
}

/// A one-thread server that records each request and answers with the next status of
/// `answers`, then 200.
pub struct Recorder {
    pub address: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub fn start(listener: TcpListener, answers: Vec<u16>) -> Recorder {
        let address = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let line = line.to_ascii_lowercase();
                    if let Some(value) = line.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                seen.lock().unwrap().push(Recorded { head, body });
                let status = answers.next().unwrap_or(200);
                let _ = write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        Recorder { address, requests }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// A one-thread server that answers each request with what `answer` makes of it (status and
/// body, served as JSON). The request line keeps its case (queries are case-sensitive); header
/// names are lowercased.
pub struct Responder {
    pub address: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Responder {
    pub fn start(answer: impl Fn(&Recorded) -> (u16, String) + Send + 'static) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if head.is_empty() {
                        head.push_str(&line);
                    } else {
                        head.push_str(&line.to_ascii_lowercase());
                    }
                }
                let recorded = Recorded { head, body: Vec::new() };
                let (status, body) = answer(&recorded);
                seen.lock().unwrap().push(recorded);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Responder { address, requests }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Recorded {
    /// The request line's target: `/path?query`.
    pub fn target(&self) -> String {
        self.head.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or_default().to_string()
    }
}
