//! `redis` (upstream nerve's, PR #101): connect, send `PING` and then
//! `EXISTS nerve-redis-service-check`; healthy when `PING` answers `+PONG` and `EXISTS` an
//! integer, all within the timeout. An error reply (`-LOADING`, `-NOAUTH`, `-MASTERDOWN`)
//! is unhealthy. Spoken as RESP over a plain TCP connection: two fixed commands need no
//! client library.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Check, CheckError};
use crate::config::TcpCheckConfig;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const EXISTS: &[u8] = b"*2\r\n$6\r\nEXISTS\r\n$25\r\nnerve-redis-service-check\r\n";
/// The longest reply line read; a healthy one is a few bytes.
const MAX_LINE: usize = 512;

#[derive(Debug)]
pub struct RedisCheck {
    name: String,
    config: TcpCheckConfig,
}

impl RedisCheck {
    pub fn new(name: String, config: &TcpCheckConfig) -> Self {
        Self {
            name,
            config: config.clone(),
        }
    }

    async fn probe(&self) -> Result<(), CheckError> {
        let stream = TcpStream::connect((self.config.host.as_str(), self.config.port))
            .await
            .map_err(CheckError::Connect)?;
        let mut stream = BufReader::new(stream);
        let pong = command(&mut stream, PING).await?;
        if pong != "+PONG" {
            return Err(unhealthy("PING", &pong));
        }
        let exists = command(&mut stream, EXISTS).await?;
        if !exists.starts_with(':') {
            return Err(unhealthy("EXISTS", &exists));
        }
        Ok(())
    }
}

/// Sends one command and reads its one-line reply (without the CRLF).
async fn command(stream: &mut BufReader<TcpStream>, cmd: &[u8]) -> Result<String, CheckError> {
    stream
        .get_mut()
        .write_all(cmd)
        .await
        .map_err(CheckError::Connect)?;
    let mut line = Vec::new();
    let mut limited = (&mut *stream).take(MAX_LINE as u64);
    limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(CheckError::Connect)?;
    if !line.ends_with(b"\r\n") {
        return Err(CheckError::Unusable(
            "redis closed the connection or sent no complete reply".into(),
        ));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The reply, escaped and cut short: it is the server's text, for a log line.
fn unhealthy(command: &str, reply: &str) -> CheckError {
    let shown: String = reply.chars().take(80).collect();
    CheckError::Unusable(format!("redis answered {command} with {shown:?}"))
}

impl Check for RedisCheck {
    async fn check(&self) -> Result<(), CheckError> {
        match tokio::time::timeout(self.config.timeout, self.probe()).await {
            Ok(r) => r,
            Err(_) => Err(CheckError::Timeout(self.config.timeout)),
        }
    }

    fn describe(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A fake server that answers each command with the next of `replies`.
    async fn fake(replies: &'static [&'static str]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for reply in replies {
                let mut buf = [0u8; 256];
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    fn check(port: u16) -> RedisCheck {
        RedisCheck::new(
            "r".into(),
            &TcpCheckConfig {
                host: "127.0.0.1".into(),
                port,
                timeout: Duration::from_secs(2),
            },
        )
    }

    #[tokio::test]
    async fn replies_decide() {
        check(fake(&["+PONG\r\n", ":0\r\n"]).await)
            .check()
            .await
            .unwrap();
        let e = check(fake(&["-LOADING Redis is loading\r\n"]).await)
            .check()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("LOADING"), "{e}");
        let e = check(fake(&["+PONG\r\n", "-NOAUTH Authentication required.\r\n"]).await)
            .check()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("EXISTS"), "{e}");
        assert!(check(fake(&["+PONG"]).await).check().await.is_err());
    }
}
