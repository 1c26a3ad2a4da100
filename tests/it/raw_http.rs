//! A raw HTTP/1.1 client for attack tests: it sends the request target and headers byte for byte.
//!
//! HTTP client libraries normalise what an attacker would not (`..` segments, backslashes,
//! percent-encodings) or refuse it outright, so the tests that try to walk around the gateway
//! write the request themselves over a plain TCP connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request, exactly as it goes on the wire.
pub(crate) struct RawRequest {
    pub(crate) method: &'static str,
    /// The request target as sent, e.g. `/llm/qwen3%2Fv1/chat/completions`.
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Send the body with `transfer-encoding: chunked` (in two chunks) instead of a length.
    pub(crate) chunked: bool,
}

impl RawRequest {
    pub(crate) fn post(target: &str, key: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST",
            target: target.to_owned(),
            headers: vec![
                ("authorization".to_owned(), format!("Bearer {key}")),
                ("content-type".to_owned(), "application/json".to_owned()),
            ],
            body: body.into(),
            chunked: false,
        }
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn encode(&self, host: &str) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: {host}\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.chunked {
            head.push_str("transfer-encoding: chunked\r\n");
        } else {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("connection: close\r\n\r\n");
        let mut wire = head.into_bytes();
        if self.chunked {
            let (first, second) = self.body.split_at(self.body.len() / 2);
            for part in [first, second] {
                if !part.is_empty() {
                    wire.extend(format!("{:x}\r\n", part.len()).into_bytes());
                    wire.extend_from_slice(part);
                    wire.extend_from_slice(b"\r\n");
                }
            }
            wire.extend_from_slice(b"0\r\n\r\n");
        } else {
            wire.extend_from_slice(&self.body);
        }
        wire
    }
}

/// A response as received: status, headers (lowercase names) and the decoded body.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl RawResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connects to `addr` (`host:port`) and writes `request`.
async fn connect_and_write(addr: &str, request: &RawRequest) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&request.encode(addr))
        .await
        .expect("write request");
    stream
}

/// Sends `request` to `addr` (`host:port`) and reads the whole response (the server closes).
pub(crate) async fn send(addr: &str, request: &RawRequest) -> RawResponse {
    let mut stream = connect_and_write(addr, request).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("a response within 30 s")
        .expect("read response");
    parse(&raw)
}

/// Sends `request`, reads until the response body holds `events` SSE events, then hangs up
/// (a client that leaves mid-stream). Returns the bytes it read.
pub(crate) async fn send_and_hang_up(addr: &str, request: &RawRequest, events: usize) -> Vec<u8> {
    let mut stream = connect_and_write(addr, request).await;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let read = stream.read(&mut buffer).await.expect("read");
            assert!(
                read > 0,
                "the stream ended before {events} events: {}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&raw);
            if text.matches("data: ").count() >= events {
                break;
            }
        }
    })
    .await
    .expect("events within 30 s");
    drop(stream);
    raw
}

fn parse(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&data[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}
