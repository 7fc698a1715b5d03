//! Unit tests of the config layer, by section; the shared helpers are here.

use std::path::Path;
use std::time::Duration;

use common::config::ConfigErrors;
use common::{AddressPolicy, Port, ServiceName};

use super::*;

mod compat;
mod haproxy;
mod load;

/// The seed's config, exactly as in the blog post, with its braces closed.
pub(crate) const SEED: &str = include_str!("../../../../examples/synapse-clay.json");

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, None)
}

fn haproxy(keys: &str) -> Result<HaproxyConfig, ConfigErrors> {
    parse(&format!(
        r#"{{"services": {{"web": {{"discovery": {{"method": "base"}}}}}},
            "haproxy": {{"config_file_path": "/etc/haproxy/haproxy.cfg"{keys}}}}}"#
    ))
    .map(|c| c.haproxy.unwrap())
}

/// A corpus file (`../shared/compat`) with etcd in ZooKeeper's place, loaded.
fn corpus(rel: &str) -> Config {
    parse(&common::upstream::corpus_with_etcd(rel)).unwrap_or_else(|e| panic!("{rel}:\n{e}"))
}

fn service<'a>(c: &'a Config, name: &str) -> &'a ServiceConfig {
    &c.services[&ServiceName::new(name).unwrap()]
}
