//! What several benchmarks read: the number of keys in etcd, a sum from a daemon's
//! `/metrics`.

use std::net::SocketAddr;

use etcd_client::{Client, GetOptions};
use integration_tests::scrape;

/// The number of keys under `prefix`.
pub(crate) async fn count(client: &mut Client, prefix: &str) -> i64 {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map(|r| r.count())
        .unwrap_or(-1)
}

/// `BENCH_DAEMON`-style scrape of a daemon's `/metrics`: the sum of every sample `name`.
pub(crate) async fn metric_sum(addr: SocketAddr, name: &str) -> Option<f64> {
    let s = scrape(addr).await.ok()?;
    Some(s.all(name).iter().map(|s| s.value).sum())
}
