//! What a reload changed: the dotted keys (`routes."example.test"`,
//! `listener[1].address`, `tls.certificate`) whose values differ between
//! the printed forms of two configurations. Only key names come out, never
//! values, so a changed secret is reported without being shown.

use std::collections::BTreeMap;

use crate::config::Config;

/// The keys whose values differ between `old` and `new`, sorted.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (flatten(&old.to_toml()), flatten(&new.to_toml()));
    let mut keys: Vec<String> = old
        .iter()
        .filter(|(key, value)| new.get(*key) != Some(*value))
        .map(|(key, _)| key.clone())
        .chain(new.keys().filter(|key| !old.contains_key(*key)).cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Of `keys`, those that take effect only after a restart: the admin
/// listener and socket, the DNS resolver, the log format, the spool's cache and the
/// Redis connection of `[cluster]` (a changed `spool.path` is refused
/// before this is asked; `spool.min_free` applies at once).
pub fn needing_restart(keys: &[String]) -> Vec<String> {
    keys.iter()
        .filter(|key| {
            key.starts_with("admin.address")
                || key.starts_with("admin.socket")
                || key.starts_with("dns.")
                || key.starts_with("cluster.")
                || *key == "spool.cache_capacity"
                || *key == "log.format"
        })
        .cloned()
        .collect()
}

/// Every leaf of a printed configuration as dotted key → value text.
fn flatten(printed: &str) -> BTreeMap<String, String> {
    let mut leaves = BTreeMap::new();
    if let Ok(table) = printed.parse::<toml::Table>() {
        for (key, value) in &table {
            walk(&mut leaves, quoted(key), value);
        }
    }
    leaves
}

fn walk(leaves: &mut BTreeMap<String, String>, path: String, value: &toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                walk(leaves, format!("{path}.{}", quoted(key)), value);
            }
        }
        toml::Value::Array(items)
            if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
        {
            for (index, item) in items.iter().enumerate() {
                walk(leaves, format!("{path}[{index}]"), item);
            }
        }
        other => {
            leaves.insert(path, other.to_string());
        }
    }
}

/// A key as TOML would write it in a dotted path.
fn quoted(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).expect("valid config")
    }

    #[test]
    fn names_added_removed_and_changed_keys_but_no_values() {
        let old = parse(
            "[routes]\n\"a.test\" = \"127.0.0.1:2526\"\n[admin]\ntoken = \"old-secret\"\n\
             [[listener]]\naddress = \"127.0.0.1:2525\"\n",
        );
        let new = parse(
            "[routes]\n\"b.test\" = \"127.0.0.1:2527\"\n[admin]\ntoken = \"new-secret\"\n\
             [[listener]]\naddress = \"127.0.0.1:2525\"\n[[listener]]\naddress = \"127.0.0.1:2587\"\n\
             [limits]\nmax_recipients = 7\n",
        );
        let keys = changed_keys(&old, &new);
        assert_eq!(
            keys,
            [
                "admin.token",
                "limits.max_recipients",
                "listener[1].address",
                "listener[1].kind",
                "routes.\"a.test\"",
                "routes.\"b.test\"",
            ],
        );
        assert!(!keys.join(" ").contains("secret"));
        assert_eq!(needing_restart(&keys), Vec::<String>::new());
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn admin_address_dns_and_log_format_wait_for_a_restart() {
        let keys: Vec<String> = [
            "admin.address",
            "admin.token",
            "cluster.redis",
            "dns.timeout",
            "log.format",
            "log.level",
            "spool.cache_capacity",
            "spool.min_free",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            needing_restart(&keys),
            [
                "admin.address",
                "cluster.redis",
                "dns.timeout",
                "log.format",
                "spool.cache_capacity"
            ]
        );
    }
}
