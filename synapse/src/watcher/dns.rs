//! The `dns` watcher (airbnb synapse's `dns`): every `check_interval`, resolve each
//! configured server's name and publish one backend per address, as the service's
//! complete set.
//!
//! - A name resolves to its A and AAAA records; an IP literal is used as it is; a name
//!   starting with `_` (`_http._tcp.example.com`) is looked up as SRV, each target's
//!   addresses with the record's port.
//! - The port is the entry's, else the SRV record's, else the service's
//!   `backend_port_override` (config validation makes sure there is one).
//! - `nameserver` names the DNS server to ask (port 53 unless given); without it the
//!   system's resolver configuration is used. Answers are not cached between rounds, so
//!   a change in the zone shows at the next round.
//! - Addresses go through the same validation as registrations from etcd (address
//!   policy): a refused address is skipped and counted.
//! - A name that does not exist (NXDOMAIN, or no records) contributes no backends; any
//!   other failure (timeout, SERVFAIL, refused) keeps the last published set, marked
//!   stale, and retries with backoff, never slower than `check_interval`. Upstream's
//!   ping of a hard-coded `airbnb.com` (synapse #172) is not copied: the only names
//!   asked are the configured ones.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Host, Port, RegistrationError, ServiceName};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use tokio_util::sync::CancellationToken;

use super::publisher::{Publisher, Watcher};
use crate::backends::{Backend, BackendSet, Origin};
use crate::config::{DnsDiscovery, DnsServer};
use crate::counters::Counters;

/// Resolves the servers of one service.
pub struct DnsWatcher {
    service: ServiceName,
    config: DnsDiscovery,
    port: Option<Port>,
    counters: Arc<Counters>,
}

/// The addresses (and ports) one server entry resolved to.
type Resolved = Vec<(IpAddr, Option<Port>)>;

impl DnsWatcher {
    /// `port` is the service's port override: the port of entries that give none.
    pub fn new(
        service: ServiceName,
        config: DnsDiscovery,
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

    fn resolver(&self) -> Result<TokioResolver, ResolveError> {
        let mut builder = match self.config.nameserver {
            Some(addr) => {
                let mut config = ResolverConfig::new();
                config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            }
            None => TokioResolver::builder_tokio()?,
        };
        let opts = builder.options_mut();
        // Every round asks again: a cached answer would hide a change for its TTL.
        opts.cache_size = 0;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        if self.config.nameserver.is_some() {
            // The named server only, as upstream's `Resolv::DNS.new(nameserver:)`.
            opts.use_hosts_file = ResolveHosts::Never;
        }
        opts.timeout = Duration::from_secs(2).min(self.config.check_interval);
        opts.attempts = 2;
        Ok(builder.build())
    }

    /// One round: every server resolved, or the first failure.
    async fn resolve_all(&self, resolver: &TokioResolver) -> Result<BackendSet, ResolveError> {
        let mut set = BackendSet::new();
        for server in &self.config.servers {
            for (ip, srv_port) in resolve(resolver, server).await? {
                let Some(port) = server.port.or(srv_port).or(self.port) else {
                    continue;
                };
                match to_backend(server, ip, port, &self.config.policy) {
                    Ok(b) => {
                        set.insert(b);
                    }
                    Err(e) => {
                        self.counters.reject(e.reason());
                        tracing::warn!(service = %self.service, host = ?server.host, %ip,
                            reason = e.reason(), error = %e, "skipping DNS address");
                    }
                }
            }
        }
        Ok(set)
    }
}

/// The addresses of one entry: its IP literal, its A/AAAA records, or its SRV targets'.
/// A name without records resolves to nothing.
async fn resolve(resolver: &TokioResolver, server: &DnsServer) -> Result<Resolved, ResolveError> {
    if let Ok(ip) = server.host.parse::<IpAddr>() {
        return Ok(vec![(ip, None)]);
    }
    let no_records = |e: ResolveError| {
        if e.is_no_records_found() {
            Ok(Vec::new())
        } else {
            Err(e)
        }
    };
    if server.is_srv() {
        let records = match resolver.srv_lookup(server.host.as_str()).await {
            Ok(r) => r,
            Err(e) => return no_records(e),
        };
        let mut out = Vec::new();
        for srv in records.iter() {
            let port = Port::new(srv.port());
            match resolver.lookup_ip(srv.target().clone()).await {
                Ok(ips) => out.extend(ips.iter().map(|ip| (ip, port))),
                Err(e) => out.extend(no_records(e)?),
            }
        }
        return Ok(out);
    }
    match resolver.lookup_ip(server.host.as_str()).await {
        Ok(ips) => Ok(ips.iter().map(|ip| (ip, None)).collect()),
        Err(e) => no_records(e),
    }
}

/// One address of an entry → one backend, through the registry's address policy.
pub fn to_backend(
    server: &DnsServer,
    ip: IpAddr,
    port: Port,
    policy: &common::AddressPolicy,
) -> Result<Backend, RegistrationError> {
    let host = Host::Ip(ip);
    policy.check(&host)?;
    Ok(Backend {
        name: server.name.clone(),
        host,
        port,
        backup: false,
        weight: None,
        haproxy_server_options: None,
        labels: server.labels.clone(),
    })
}

impl super::poll::PolledSource for DnsWatcher {
    type Client = TokioResolver;
    type Error = ResolveError;

    fn service(&self) -> &ServiceName {
        &self.service
    }

    fn origin(&self) -> Origin {
        Origin::Dns
    }

    fn interval(&self) -> Duration {
        self.config.check_interval
    }

    fn setup(&self) -> Result<TokioResolver, String> {
        self.resolver().map_err(|e| e.to_string())
    }

    async fn round(&self, resolver: &TokioResolver) -> Result<BackendSet, ResolveError> {
        self.resolve_all(resolver).await
    }

    fn log_failure(&self, e: &ResolveError, retry_in: Duration, attempts: u32) {
        if super::poll::loud(attempts) {
            tracing::warn!(service = %self.service, error = %e, ?retry_in,
                "DNS resolution failed; keeping the last known addresses");
        } else {
            tracing::debug!(service = %self.service, error = %e, ?retry_in, "DNS resolution failed");
        }
    }
}

impl Watcher for DnsWatcher {
    async fn run(self, out: Publisher, cancel: CancellationToken) {
        super::poll::run(self, out, cancel).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::{AddressPolicy, InstanceId};

    fn server(host: &str) -> DnsServer {
        DnsServer {
            name: InstanceId::new("web").unwrap(),
            host: host.into(),
            port: None,
            labels: [("az".to_owned(), "a".to_owned())].into(),
        }
    }

    #[test]
    fn addresses_go_through_the_address_policy() {
        let port = Port::new(80).unwrap();
        let policy = AddressPolicy::default();
        let b = to_backend(&server("x"), "10.0.0.1".parse().unwrap(), port, &policy).unwrap();
        assert_eq!(b.server_name(), "web_10.0.0.1:80");
        assert_eq!(b.labels["az"], "a");
        let e = to_backend(
            &server("x"),
            "169.254.169.254".parse().unwrap(),
            port,
            &policy,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "disallowed_address");
    }

    #[tokio::test]
    async fn ip_literals_are_used_as_they_are() {
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::new(),
            TokioConnectionProvider::default(),
        )
        .build();
        let got = resolve(&resolver, &server("10.1.2.3")).await.unwrap();
        assert_eq!(got, [("10.1.2.3".parse().unwrap(), None)]);
    }
}
