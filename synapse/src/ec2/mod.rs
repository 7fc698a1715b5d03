//! The EC2 side of the `ec2tag` discovery: credentials (config, environment, shared
//! credentials file, instance role through IMDSv2) and `DescribeInstances` — SigV4
//! signed, paginated, parsed from XML — for running instances that carry a tag.
//!
//! Everything here is I/O at the edge; the values it returns go through the same
//! validation as registrations from etcd before they reach HAProxy.

pub mod api;
pub mod credentials;
#[cfg(test)]
mod test_server;
mod xml;

pub use api::{Ec2Api, Ec2Error, Instance};
pub use credentials::{CredentialError, CredentialProvider, Credentials};

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response failed")]
    Transport(#[source] reqwest::Error),
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
}

/// An HTTP client for EC2 or IMDS: never follows redirects (a redirect could send signed
/// requests or credentials elsewhere), no proxy for IMDS is up to the caller.
pub(crate) fn client_builder(timeout: std::time::Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
}

/// The body as text, read chunk by chunk and refused past `max` bytes: a
/// `Content-Length` can lie or be absent.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<String, BodyError> {
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A string from EC2 for a log line: at most 64 characters, escaped.
pub(crate) fn printable(text: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = text
        .chars()
        .take(MAX)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}
