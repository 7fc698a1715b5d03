//! The `ec2tag` watcher (airbnb synapse's `ec2tag`, as Clay.io ran it): every
//! `check_interval`, list the **running** instances whose tag `tag_name` equals
//! `tag_value`, and publish them as the service's complete set.
//!
//! - host = the instance's private IP, name = its private DNS name (or its id); the port
//!   comes from `backend_port_override`/`server_port_override`, required for this method.
//! - Values from EC2 go through the same validation as registrations from etcd: a bad
//!   address or name skips that instance and is counted (reliability B22).
//! - Any failure (HTTP 5xx, throttling, a timeout, malformed XML, a page failing in the
//!   middle of a listing, expired credentials) keeps the last published set, marked
//!   stale, and retries with backoff, never slower than `check_interval`.

use std::time::Duration;

use common::{AddressPolicy, Host, InstanceId, Port, RegistrationError, ServiceName};
use tokio_util::sync::CancellationToken;

use super::publisher::{Publisher, Watcher};
use crate::backends::{Backend, BackendSet, Origin};
use crate::config::Ec2TagDiscovery;
use crate::counters::Counters;
use crate::ec2::credentials::CredentialInputs;
use crate::ec2::{CredentialProvider, Ec2Api, Ec2Error, Instance};
use std::sync::Arc;

/// Polls EC2 for one service.
pub struct Ec2Watcher {
    service: ServiceName,
    config: Ec2TagDiscovery,
    port: Option<Port>,
    counters: Arc<Counters>,
}

impl Ec2Watcher {
    /// `port` is the service's port override; without one no instance can be routed.
    pub fn new(
        service: ServiceName,
        config: Ec2TagDiscovery,
        port: Option<Port>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            service,
            config,
            port,
            counters,
        }
    }

    fn api(&self) -> Result<Ec2Api, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = self
            .config
            .aws_region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .ok_or("no aws_region in the config and no AWS_REGION in the environment")?;
        let credentials = CredentialProvider::resolve(CredentialInputs {
            config_keys: self
                .config
                .aws_access_key_id
                .clone()
                .zip(self.config.aws_secret_access_key.clone()),
            env: &env,
            imds_endpoint: self.config.imds_endpoint.clone(),
        })
        .map_err(|e| e.to_string())?;
        Ec2Api::new(
            region,
            self.config.endpoint.clone(),
            credentials,
            self.config.request_timeout,
        )
        .map_err(|e| e.to_string())
    }

    /// Turns instances into backends, skipping (and counting) the ones that fail
    /// validation.
    fn backends(&self, instances: Vec<Instance>, port: Port) -> BackendSet {
        let mut set = BackendSet::new();
        for inst in instances {
            match to_backend(&inst, port, &self.config.policy) {
                Ok(b) => {
                    set.insert(b);
                }
                Err(e) => {
                    self.counters.reject(e.reason());
                    // Debug formatting: EC2 values are untrusted text (B24).
                    tracing::warn!(
                        service = %self.service,
                        instance = ?inst.id,
                        reason = e.reason(),
                        error = %e,
                        "skipping EC2 instance"
                    );
                }
            }
        }
        set
    }
}

/// One instance → one backend, through the registry's validators: the same rules as
/// registrations from etcd (reliability B22).
pub fn to_backend(
    inst: &Instance,
    port: Port,
    policy: &AddressPolicy,
) -> Result<Backend, RegistrationError> {
    let ip = inst
        .private_ip
        .as_deref()
        .ok_or(RegistrationError::MissingField { field: "host" })?;
    let host = match Host::parse(ip)? {
        h @ Host::Ip(_) => h,
        Host::Dns(_) => return Err(RegistrationError::InvalidHost("is not an IP address")),
    };
    policy.check(&host)?;
    let name = inst
        .private_dns
        .as_deref()
        .and_then(|d| InstanceId::new(d).ok())
        .map_or_else(|| InstanceId::new(&inst.id), Ok)
        .map_err(RegistrationError::InvalidName)?;
    Ok(Backend {
        name,
        host,
        port,
        backup: false,
        weight: None,
        haproxy_server_options: None,
        labels: Default::default(),
    })
}

impl super::poll::PolledSource for Ec2Watcher {
    type Client = (Ec2Api, Port);
    type Error = Ec2Error;

    fn service(&self) -> &ServiceName {
        &self.service
    }

    fn origin(&self) -> Origin {
        Origin::Ec2
    }

    fn interval(&self) -> Duration {
        self.config.check_interval
    }

    fn setup(&self) -> Result<Self::Client, String> {
        // Config validation requires a port override for ec2tag; this is a guard.
        let port = self
            .port
            .ok_or("ec2tag needs backend_port_override or server_port_override")?;
        Ok((self.api()?, port))
    }

    async fn round(&self, (api, port): &Self::Client) -> Result<BackendSet, Ec2Error> {
        let instances = api
            .running_instances_with_tag(&self.config.tag_name, &self.config.tag_value)
            .await?;
        Ok(self.backends(instances, *port))
    }

    fn log_failure(&self, e: &Ec2Error, retry_in: Duration, attempts: u32) {
        let chain = common::error::error_chain(e);
        if super::poll::loud(attempts) {
            tracing::warn!(service = %self.service, error = %chain, ?retry_in, "EC2 listing failed; keeping the last known instances");
        } else {
            tracing::debug!(service = %self.service, error = %chain, ?retry_in, "EC2 listing failed");
        }
    }
}

impl Watcher for Ec2Watcher {
    async fn run(self, out: Publisher, cancel: CancellationToken) {
        super::poll::run(self, out, cancel).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, ip: Option<&str>, dns: Option<&str>) -> Instance {
        Instance {
            id: id.into(),
            private_ip: ip.map(Into::into),
            private_dns: dns.map(Into::into),
        }
    }

    #[test]
    fn instances_go_through_the_registry_validators() {
        let port = Port::new(50001).unwrap();
        let policy = AddressPolicy::default();
        let b = to_backend(
            &inst("i-1", Some("127.0.1.4"), Some("ip-127-0-1-4.ec2.internal")),
            port,
            &policy,
        )
        .unwrap();
        assert_eq!(b.server_name(), "ip-127-0-1-4.ec2.internal_127.0.1.4:50001");
        // No DNS name: the instance id names it.
        let b = to_backend(&inst("i-0abc", Some("10.1.2.3"), None), port, &policy).unwrap();
        assert_eq!(b.server_name(), "i-0abc_10.1.2.3:50001");
        // B22: a hostile value where an address should be.
        let e = to_backend(
            &inst("i-1", Some("10.0.0.1\nserver x 6.6.6.6:80"), None),
            port,
            &policy,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "invalid_host");
        assert_eq!(
            to_backend(&inst("i-1", Some("ip-10-0-0-1"), None), port, &policy)
                .unwrap_err()
                .reason(),
            "invalid_host"
        );
        assert_eq!(
            to_backend(&inst("i-1", Some("169.254.169.254"), None), port, &policy)
                .unwrap_err()
                .reason(),
            "disallowed_address"
        );
        assert_eq!(
            to_backend(&inst("i-1", None, None), port, &policy)
                .unwrap_err()
                .reason(),
            "parse_error"
        );
        assert_eq!(
            to_backend(
                &inst("i 1;x", Some("10.0.0.1"), Some("bad name")),
                port,
                &policy
            )
            .unwrap_err()
            .reason(),
            "invalid_name"
        );
    }
}
