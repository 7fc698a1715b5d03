//! Health checks: one probe of a service, with its own timeout. A closed set of kinds is
//! an enum ([`AnyCheck`]); the [`Check`] trait is the seam the service loop is tested
//! through with scripted fakes.

mod exec;
mod http;
mod rabbitmq;
mod redis;
mod tcp;

use std::future::Future;
use std::time::Duration;

pub use exec::ExecCheck;
pub use http::HttpCheck;
pub use rabbitmq::RabbitmqCheck;
pub use redis::RedisCheck;
pub use tcp::TcpCheck;

use crate::config::{CheckConfig, CheckKind};

/// Why one probe failed. Logged at `debug`; one failure never changes a registration by
/// itself (rise/fall decide).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect failed")]
    Connect(#[source] std::io::Error),
    #[error("request failed")]
    Request(#[source] reqwest::Error),
    #[error("answered HTTP {0}; healthy is 2xx or 3xx")]
    Status(u16),
    #[error("the body does not contain the expected text")]
    ExpectNotFound,
    #[error("cannot start the command")]
    Spawn(#[source] std::io::Error),
    #[error("the command failed: {0}")]
    Exit(std::process::ExitStatus),
    #[error("the check is not usable: {0}")]
    Unusable(String),
}

/// One probe of a service.
pub trait Check: Send + Sync + 'static {
    /// Runs the probe. Owns its timeout; never panics on what the service returns.
    fn check(&self) -> impl Future<Output = Result<(), CheckError>> + Send;
    /// For logs, e.g. `http http://127.0.0.1:8080/health`.
    fn describe(&self) -> &str;
}

/// Every kind of check nerve runs.
#[derive(Debug)]
pub enum AnyCheck {
    Http(HttpCheck),
    Tcp(TcpCheck),
    Redis(RedisCheck),
    Rabbitmq(RabbitmqCheck),
    Exec(ExecCheck),
    Noop(String),
    /// A check whose set-up failed (e.g. its CA file vanished since the config was
    /// read): it fails every time, with the reason, so the service stays down.
    Broken {
        name: String,
        reason: String,
    },
}

impl AnyCheck {
    pub fn new(config: &CheckConfig) -> Self {
        let name = config.name.clone();
        match &config.kind {
            CheckKind::Http(http) => match HttpCheck::new(name.clone(), http) {
                Ok(check) => Self::Http(check),
                Err(reason) => Self::Broken { name, reason },
            },
            CheckKind::Tcp(tcp) => Self::Tcp(TcpCheck::new(name, tcp)),
            CheckKind::Redis(tcp) => Self::Redis(RedisCheck::new(name, tcp)),
            CheckKind::Rabbitmq(r) => Self::Rabbitmq(RabbitmqCheck::new(name, r)),
            CheckKind::Exec(exec) => Self::Exec(ExecCheck::new(name, exec)),
            CheckKind::Noop => Self::Noop(name),
        }
    }
}

impl Check for AnyCheck {
    async fn check(&self) -> Result<(), CheckError> {
        match self {
            Self::Http(c) => c.check().await,
            Self::Tcp(c) => c.check().await,
            Self::Redis(c) => c.check().await,
            Self::Rabbitmq(c) => c.check().await,
            Self::Exec(c) => c.check().await,
            Self::Noop(_) => Ok(()),
            Self::Broken { reason, .. } => Err(CheckError::Unusable(reason.clone())),
        }
    }

    fn describe(&self) -> &str {
        match self {
            Self::Http(c) => c.describe(),
            Self::Tcp(c) => c.describe(),
            Self::Redis(c) => c.describe(),
            Self::Rabbitmq(c) => c.describe(),
            Self::Exec(c) => c.describe(),
            Self::Noop(name) | Self::Broken { name, .. } => name,
        }
    }
}
