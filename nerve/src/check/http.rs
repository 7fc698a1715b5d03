//! `http`: `GET` a URI on the service; healthy on a 2xx or 3xx status (redirects are not
//! followed) whose body contains `expect`, if set. Each probe opens a new connection
//! (no pooling, no proxy), so a service that stops accepting connections fails at once.
//! With `ssl`, HTTPS, verifying the certificate only if asked (SmartStack's `ssl` did
//! not verify, and a local service's certificate rarely names the address checked).

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::redirect::Policy;

use super::{Check, CheckError};
use crate::config::HttpCheckConfig;

/// The most body read while looking for `expect`.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug)]
pub struct HttpCheck {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    expect: Option<String>,
}

impl HttpCheck {
    /// Builds the client. Fails only if the TLS set-up fails (an unreadable CA file).
    pub fn new(name: String, config: &HttpCheckConfig) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.url).map_err(|e| format!("bad URL: {e}"))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("bad header name {k:?}"))?;
            let value = HeaderValue::from_str(v).map_err(|_| format!("bad value for {k}"))?;
            headers.append(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(Policy::none())
            .pool_max_idle_per_host(0)
            .http1_only()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .timeout(config.total_timeout);
        if url.scheme() != "https" || !config.ssl_verify {
            // No certificate is ever verified: skip loading the system's root store,
            // ~100 KB per check (100 http checks were 21 MiB of RSS with it; see
            // docs/benchmarks.md).
            builder = builder.tls_built_in_root_certs(false);
        }
        if url.scheme() == "https" {
            if config.ssl_verify {
                if let Some(ca) = &config.ssl_ca_file {
                    let pem = std::fs::read(ca)
                        .map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
                    let cert = reqwest::Certificate::from_pem(&pem)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                    builder = builder.add_root_certificate(cert);
                }
            } else {
                builder = builder.danger_accept_invalid_certs(true);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Self {
            name,
            client,
            url,
            headers,
            expect: config.expect.clone(),
        })
    }
}

impl Check for HttpCheck {
    async fn check(&self) -> Result<(), CheckError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(CheckError::Request)?;
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(CheckError::Status(status.as_u16()));
        }
        let Some(expect) = &self.expect else {
            return Ok(());
        };
        let needle = expect.as_bytes();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(CheckError::Request)? {
            body.extend_from_slice(&chunk);
            if contains(&body, needle) {
                return Ok(());
            }
            if body.len() >= MAX_BODY {
                break;
            }
        }
        Err(CheckError::ExpectNotFound)
    }

    fn describe(&self) -> &str {
        &self.name
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Answers each connection with `response` after `delay`, recording request heads.
    async fn server(
        response: &'static str,
        delay: Duration,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    tokio::time::sleep(delay).await;
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (port, rx)
    }

    fn config(port: u16, expect: Option<&str>) -> HttpCheckConfig {
        HttpCheckConfig {
            url: format!("http://127.0.0.1:{port}/health?x=1"),
            ssl_verify: false,
            ssl_ca_file: None,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(4),
            headers: vec![("Host".into(), "web.internal".into())],
            expect: expect.map(str::to_owned),
        }
    }

    async fn probe(response: &'static str, expect: Option<&str>) -> Result<(), CheckError> {
        let (port, _rx) = server(response, Duration::ZERO).await;
        HttpCheck::new("h".into(), &config(port, expect))
            .unwrap()
            .check()
            .await
    }

    #[tokio::test]
    async fn status_decides() {
        probe("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", None)
            .await
            .unwrap();
        probe(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
            None,
        )
        .await
        .unwrap();
        assert!(matches!(
            probe("HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", None).await,
            Err(CheckError::Status(500))
        ));
        assert!(matches!(
            probe("HTTP/1.1 404 No\r\nContent-Length: 0\r\n\r\n", None).await,
            Err(CheckError::Status(404))
        ));
        assert!(matches!(
            probe("garbage\r\n\r\n", None).await,
            Err(CheckError::Request(_))
        ));
    }

    #[tokio::test]
    async fn expect_looks_in_the_body() {
        let body = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsta\r\n6\r\ntus=up\r\n0\r\n\r\n";
        probe(body, Some("status=up")).await.unwrap();
        assert!(matches!(
            probe(body, Some("status=down")).await,
            Err(CheckError::ExpectNotFound)
        ));
    }

    #[tokio::test]
    async fn sends_get_with_the_configured_headers() {
        let (port, mut rx) = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        HttpCheck::new("h".into(), &config(port, None))
            .unwrap()
            .check()
            .await
            .unwrap();
        let head = rx.recv().await.unwrap();
        assert!(head.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("host: web.internal\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn slow_answers_time_out() {
        let (port, _rx) = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::from_secs(30),
        )
        .await;
        let mut c = config(port, None);
        c.read_timeout = Duration::from_millis(200);
        c.total_timeout = Duration::from_millis(400);
        let started = tokio::time::Instant::now();
        let result = HttpCheck::new("h".into(), &c).unwrap().check().await;
        assert!(matches!(result, Err(CheckError::Request(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"abcdef", b"cde"));
        assert!(!contains(b"abc", b"abcd"));
        assert!(contains(b"abc", b""));
    }
}
