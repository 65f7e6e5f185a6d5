//! A raw HTTP/1.1 client over `TcpStream`, with the one HTTP/1 response parser, and HTTP/2
//! helpers: ordinary clients normalise paths and framing, and the tests need to send exactly the
//! bytes an attacker would. [`send_h2`] shells out to curl for HTTP/2 prior knowledge; [`h2`] sends
//! and serves requests with trailers (what curl cannot).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;

use serde_json::Value;

use crate::{TempDir, IO_TIMEOUT};

pub mod h2;

/// An HTTP response: status, headers in order with lowercase names, and the (de-chunked) body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }
}

// ---------------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------------

/// Sends one request with exactly this method and request-target (not normalised in any way) and
/// a `content-length` body, on a fresh connection, and reads the whole response. Adds `host` and
/// `content-length` unless given, and `connection: close`.
pub fn send(port: u16, method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_send(port, method, raw_path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {raw_path} on 127.0.0.1:{port}: {e}"))
}

/// [`send`], returning the I/O error instead of panicking.
pub fn try_send(
    port: u16,
    method: &str,
    raw_path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    Connection::open(port)?.exchange(&request_bytes(method, raw_path, headers, body, true))
}

/// Sends a request whose body goes as `transfer-encoding: chunked`, one chunk per item.
pub fn send_chunked(port: u16, method: &str, raw_path: &str, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Response {
    let mut request = request_head(method, raw_path, headers, true);
    request.push_str("transfer-encoding: chunked\r\n\r\n");
    let mut request = request.into_bytes();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    Connection::open(port)
        .and_then(|mut c| c.exchange(&request))
        .unwrap_or_else(|e| panic!("{method} {raw_path} (chunked) on 127.0.0.1:{port}: {e}"))
}

/// Sends bytes exactly as given and reads one response.
pub fn send_raw(port: u16, request: &[u8]) -> Response {
    Connection::open(port)
        .and_then(|mut c| c.exchange(request))
        .unwrap_or_else(|e| panic!("raw request on 127.0.0.1:{port}: {e}"))
}

/// Writes `request` (perhaps a head without the body it announces) and reads the first final
/// answer, skipping interim `1xx` ones, while the connection stays open.
pub fn send_withholding_body(port: u16, request: &[u8]) -> Response {
    let mut connection = Connection::open(port).expect("connect");
    connection.stream.write_all(request).expect("write request");
    connection.read_response(false).expect("an answer without the body")
}

/// The bytes of a request with a `content-length` body (added unless the headers carry a length
/// or a transfer-encoding), a `host` unless given, and `connection: close` when `close`.
fn request_bytes(method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = request_head(method, raw_path, headers, close);
    if !has("content-length") && !has("transfer-encoding") && (!body.is_empty() || method != "GET") {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

fn request_head(method: &str, raw_path: &str, headers: &[(&str, &str)], close: bool) -> String {
    let mut head = format!("{method} {raw_path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("host: 127.0.0.1\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head
}

/// One kept-alive HTTP/1.1 connection, for several requests in a row.
pub struct Connection {
    stream: TcpStream,
    /// Bytes read past the last response.
    buffer: Vec<u8>,
}

impl Connection {
    pub fn open(port: u16) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Connection {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Sends one request on this connection (without `connection: close`) and reads its response.
    pub fn send(
        &mut self,
        method: &str,
        raw_path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.exchange(&request_bytes(method, raw_path, headers, body, false))
    }

    fn exchange(&mut self, request: &[u8]) -> std::io::Result<Response> {
        // A server may answer (413, 401...) and close before it has read the whole body: a failed
        // write is not the test's business as long as a response comes back. And no half-close
        // after the request: Envoy drops a connection whose client shuts down writing.
        let written = self.stream.write_all(request);
        match self.read_response(false) {
            Ok(response) => Ok(response),
            Err(e) => Err(written.err().unwrap_or(e)),
        }
    }

    /// Reads until the first complete final response (see [`parse_response`]).
    fn read_response(&mut self, head_request: bool) -> std::io::Result<Response> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((response, used)) = parse_response(&self.buffer, head_request, false)? {
                self.buffer.drain(..used);
                return Ok(response);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    let (response, used) = parse_response(&self.buffer, head_request, true)?.ok_or_else(|| {
                        std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed before a complete response")
                    })?;
                    self.buffer.drain(..used);
                    return Ok(response);
                }
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The response parser
// ---------------------------------------------------------------------------------------------

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, message)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first complete final response at the start of `buf` (interim `1xx` ones skipped) and how
/// many bytes it took, or `None` while more bytes are needed. `head_request`: the answer to a HEAD
/// has no body; `eof`: the peer closed, so a body without a length ends here. A malformed status
/// line, header line, length or chunk size is an `InvalidData` error.
pub fn parse_response(buf: &[u8], head_request: bool, eof: bool) -> std::io::Result<Option<(Response, usize)>> {
    let mut at = 0;
    loop {
        let Some(end) = find(&buf[at..], b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&buf[at..at + end]).into_owned();
        let body_at = at + end + 4;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        if (100..200).contains(&status) {
            at = body_at;
            continue;
        }
        let response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let rest = &buf[body_at..];
        let (body, used) = if head_request || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            match dechunk(rest)? {
                Some(found) => found,
                None => return Ok(None),
            }
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| invalid(format!("bad content-length {length:?}")))?;
            match rest.get(..length) {
                Some(body) => (body.to_vec(), length),
                None => return Ok(None),
            }
        } else if eof {
            (rest.to_vec(), rest.len())
        } else {
            return Ok(None);
        };
        return Ok(Some((Response { body, ..response }, body_at + used)));
    }
}

/// The body of a chunked message and the bytes it took (trailers included), if it is complete.
fn dechunk(bytes: &[u8]) -> std::io::Result<Option<(Vec<u8>, usize)>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find(&bytes[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&bytes[at..at + line_end]).into_owned();
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        at += line_end + 2;
        if size == 0 {
            // Trailers, up to the empty line.
            let rest = &bytes[at..];
            return Ok(if rest.starts_with(b"\r\n") {
                Some((body, at + 2))
            } else {
                find(rest, b"\r\n\r\n").map(|end| (body, at + end + 4))
            });
        }
        let Some(chunk) = bytes.get(at..at + size) else {
            return Ok(None);
        };
        body.extend_from_slice(chunk);
        at += size;
        if bytes.len() < at + 2 {
            return Ok(None);
        }
        at += 2;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 prior knowledge (through curl)
// ---------------------------------------------------------------------------------------------

/// Sends one request over h2c with prior knowledge using `curl --http2-prior-knowledge`, with the
/// path as given (`--path-as-is`). The response's `:status` is `status`; header names are lowercase.
pub fn send_h2(port: u16, method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let dir = TempDir::new("h2");
    let body_in = dir.path().join("request-body");
    let body_out = dir.path().join("response-body");
    fs::write(&body_in, body).expect("write request body");
    let mut curl = Command::new("curl");
    curl.args(["--http2-prior-knowledge", "-sS", "--path-as-is", "-D", "-", "-o"])
        .arg(&body_out)
        .args(["-X", method, "--max-time", "30"]);
    for (name, value) in headers {
        curl.arg("-H").arg(format!("{name}: {value}"));
    }
    if !body.is_empty() || method != "GET" {
        curl.arg("--data-binary").arg(format!("@{}", body_in.display()));
    }
    curl.arg(format!("http://127.0.0.1:{port}{raw_path}"));
    let output = curl.output().expect("run curl (is it installed?)");
    assert!(
        output.status.success(),
        "curl --http2-prior-knowledge failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let head = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = head.lines().map(|l| l.trim_end_matches('\r'));
    let status_line = lines.next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/2 "),
        "not an HTTP/2 response: {status_line:?}"
    );
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: fs::read(&body_out).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], eof: bool) -> Option<(Response, usize)> {
        parse_response(raw, false, eof).expect("parse")
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let (response, used) = parse(raw, false).expect("complete");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"abcde");
        assert_eq!(response.header("x-a"), Some("1"));
        assert_eq!(used, raw.len());
        assert!(parse(&raw[..raw.len() - 2], false).is_none(), "without the last CRLF");
    }

    #[test]
    fn interim_answers_are_skipped_and_lengths_respected() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nokHTTP/1.1";
        let (response, used) = parse(raw, false).expect("complete");
        assert_eq!((response.status, response.body.as_slice()), (413, &b"ok"[..]));
        assert_eq!(&raw[used..], b"HTTP/1.1");
    }

    #[test]
    fn a_body_without_length_ends_with_the_connection() {
        let raw = b"HTTP/1.1 200 OK\r\n\r\nabc";
        assert!(parse(raw, false).is_none());
        assert_eq!(parse(raw, true).expect("complete").0.body, b"abc");
        let head = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true, false).expect("parse");
        assert_eq!(head.expect("HEAD has no body").0.body, b"");
        assert!(parse_response(b"garbage\r\n\r\n", false, true).is_err());
    }
}
