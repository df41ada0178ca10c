//! A minimal blocking HTTP/1.1 client for the emulator on loopback: one connection per request
//! (`Connection: close`), enough to seed secrets, promote versions and read request counts.
//! The suite's own traffic stays out of the way of what it measures: no runtime, no pool.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::Error;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

pub fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<Response, Error> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response, Error> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("HTTP response without a header end")?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut content = &raw[split + 4..];
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or("HTTP response without a status")?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let end = content.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
            let size = usize::from_str_radix(std::str::from_utf8(&content[..end])?.trim(), 16)?;
            content = &content[end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(content.get(..size).ok_or("short chunk")?);
            content = content.get(size + 2..).ok_or("short chunk")?;
        }
        body
    } else {
        content.to_vec()
    };
    Ok(Response { status, body: String::from_utf8(body)? })
}
