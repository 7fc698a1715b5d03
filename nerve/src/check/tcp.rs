//! `tcp`: healthy when a TCP connection is established within the timeout.

use tokio::net::TcpStream;

use super::{Check, CheckError};
use crate::config::TcpCheckConfig;

#[derive(Debug)]
pub struct TcpCheck {
    name: String,
    config: TcpCheckConfig,
}

impl TcpCheck {
    pub fn new(name: String, config: &TcpCheckConfig) -> Self {
        Self {
            name,
            config: config.clone(),
        }
    }
}

impl Check for TcpCheck {
    async fn check(&self) -> Result<(), CheckError> {
        let TcpCheckConfig {
            host,
            port,
            timeout,
        } = &self.config;
        match tokio::time::timeout(*timeout, TcpStream::connect((host.as_str(), *port))).await {
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(e)) => Err(CheckError::Connect(e)),
            Err(_) => Err(CheckError::Timeout(*timeout)),
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

    fn check(port: u16) -> TcpCheck {
        TcpCheck::new(
            "t".into(),
            &TcpCheckConfig {
                host: "127.0.0.1".into(),
                port,
                timeout: Duration::from_secs(2),
            },
        )
    }

    #[tokio::test]
    async fn listening_port_is_healthy_closed_port_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        check(port).check().await.unwrap();
        drop(listener);
        assert!(matches!(
            check(port).check().await,
            Err(CheckError::Connect(_))
        ));
    }
}
