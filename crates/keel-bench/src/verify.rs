//! Reading back, at the end, from whoever is primary then: which keys does it hold?
//! Every acknowledged key it lacks is a lost acknowledged write.
//!
//! One listing per target rather than one read per key (a run acknowledges hundreds of
//! thousands): keel's `GET /v1/kv`, etcd's `range` over the key prefix (keys only, in
//! pages), Redis's `SCAN` with a `MATCH` on the prefix. All three are answered by the
//! primary (etcd's range is linearizable by default), so they see every write it
//! acknowledged.

use std::collections::HashSet;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use crate::cli::Target;

/// etcd answers a range in pages of this many keys.
const ETCD_PAGE: u64 = 10_000;

/// The keys under `prefix` that the primary at `url` holds.
pub async fn present_keys(
    target: Target,
    url: &str,
    prefix: &str,
) -> anyhow::Result<HashSet<String>> {
    match target {
        Target::Keel => keel_keys(url, prefix).await,
        Target::Etcd => etcd_keys(url, prefix).await,
        Target::Redis => redis_keys(url, prefix).await,
    }
}

fn http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

async fn keel_keys(url: &str, prefix: &str) -> anyhow::Result<HashSet<String>> {
    let list = format!("{}/v1/kv", url.trim_end_matches('/'));
    let body: Value = http()?
        .get(&list)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {list}"))?
        .json()
        .await
        .with_context(|| format!("GET {list}: not JSON"))?;
    let keys = body["keys"]
        .as_array()
        .with_context(|| format!("GET {list}: no `keys` array"))?;
    Ok(keys
        .iter()
        .filter_map(|entry| entry["key"].as_str())
        .filter(|key| key.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

async fn etcd_keys(url: &str, prefix: &str) -> anyhow::Result<HashSet<String>> {
    let range = format!("{}/v3/kv/range", url.trim_end_matches('/'));
    let client = http()?;
    let end = prefix_end(prefix)?;
    let mut from = prefix.as_bytes().to_vec();
    let mut keys = HashSet::new();
    loop {
        let request = serde_json::json!({
            "key": BASE64.encode(&from),
            "range_end": BASE64.encode(&end),
            "keys_only": true,
            "limit": ETCD_PAGE,
        });
        let page: Value = client
            .post(&range)
            .json(&request)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("POST {range}"))?
            .json()
            .await
            .with_context(|| format!("POST {range}: not JSON"))?;
        let mut last = None;
        for kv in page["kvs"].as_array().into_iter().flatten() {
            let key = kv["key"].as_str().context("a range entry without a key")?;
            let key = BASE64.decode(key).context("a key that is not base64")?;
            last = Some(key.clone());
            keys.insert(String::from_utf8_lossy(&key).into_owned());
        }
        // The gateway leaves `more` out when it is false.
        match (page["more"].as_bool().unwrap_or(false), last) {
            (true, Some(mut last)) => {
                // The next page starts just after the last key: the same bytes plus NUL.
                last.push(0);
                from = last;
            }
            _ => return Ok(keys),
        }
    }
}

/// The smallest key above every key that starts with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &str) -> anyhow::Result<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Ok(end);
        }
    }
    bail!("the key prefix `{prefix}` has no end; use a printable prefix")
}

async fn redis_keys(url: &str, prefix: &str) -> anyhow::Result<HashSet<String>> {
    let client = redis::Client::open(url).with_context(|| format!("`{url}` is not a redis URL"))?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let pattern = format!("{prefix}*");
    let mut keys = HashSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut connection)
            .await
            .with_context(|| format!("SCAN on {url}"))?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_byte_string() {
        assert_eq!(prefix_end("fo").ok(), Some(b"fp".to_vec()));
        assert_eq!(prefix_end("fo-").ok(), Some(b"fo.".to_vec()));
    }
}
