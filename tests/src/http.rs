//! A minimal HTTP/1.1 client for sending requests through HAProxy: one request per TCP
//! connection (`Connection: close`), so every request is a fresh connection and sees
//! HAProxy's current worker and balancing decision.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The default for [`http_get`]: generous, since a loaded 2-core CI machine is slow, but
/// bounded, so a hung proxy fails the test instead of hanging it.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A response: status code, headers (names lower-cased, in order) and the body (decoded
/// from chunked encoding if needed, lossily converted to UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` from `addr`, with [`HTTP_TIMEOUT`] for the whole exchange.
pub async fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    http_get_timeout(addr, path, HTTP_TIMEOUT).await
}

/// `GET path` from `addr`, with `timeout` for the whole exchange (connect, send, read).
/// Only loopback addresses are allowed: tests never send traffic elsewhere.
pub async fn http_get_timeout(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> io::Result<HttpResponse> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} is not a loopback address"),
        ));
    }
    tokio::time::timeout(timeout, exchange(addr, path))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("GET {path} from {addr}: no complete response within {timeout:?}"),
            )
        })?
}

async fn exchange(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: integration-tests\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // With `Connection: close` the server ends the response by closing.
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Parses a complete response (head and everything after it).
pub(crate) fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let head_end = find(raw, b"\r\n\r\n").ok_or_else(|| {
        invalid(format!(
            "no end of response head in {} bytes: {:?}",
            raw.len(),
            String::from_utf8_lossy(raw)
        ))
    })?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| invalid("head is not UTF-8"))?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let status = match status {
        Some(status) if version.starts_with("HTTP/1.") => status,
        _ => return Err(invalid(format!("bad status line {status_line:?}"))),
    };
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let response = HttpResponse {
        status,
        headers,
        body: String::new(),
    };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("bad content-length {length:?}")))?;
        rest.get(..length)
            .ok_or_else(|| invalid(format!("body cut short: {} of {length} bytes", rest.len())))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        body: String::from_utf8_lossy(&body).into_owned(),
        ..response
    })
}

fn decode_chunked(mut rest: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or_else(|| invalid("chunk size line cut short"))?;
        let size_text = std::str::from_utf8(&rest[..line_end])
            .map_err(|_| invalid("chunk size is not UTF-8"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or_else(|| invalid("chunk cut short"))?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size + 2..)
            .ok_or_else(|| invalid("chunk end cut short"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_headers() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nX-Backend-Id: b1\r\nContent-Length: 2\r\n\r\nb1extra",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend-id"), Some("b1"));
        assert_eq!(r.body, "b1");
    }

    #[test]
    fn parses_chunked_and_close_delimited_bodies() {
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nuntil close").unwrap();
        assert_eq!(r.body, "until close");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    }

    #[tokio::test]
    async fn refuses_non_loopback_addresses() {
        let err = http_get("192.0.2.1:80".parse().unwrap(), "/")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
