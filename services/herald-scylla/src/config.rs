//! Where the projection lives: `scylla://` URLs, parsed into a [`ScyllaConfig`].

use herald_ports::projection::ProjectionError;
use scylla::statement::Consistency;

/// Where the projection lives and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// The keyspace's replication map, as CQL.
    pub replication: String,
    pub consistency: Consistency,
    pub credentials: Option<(String, String)>,
}

impl ScyllaConfig {
    /// Parses `scylla://[user:password@]host[:port][,host[:port]…][/keyspace][?options]`.
    /// Options: `consistency` (default QUORUM), `replication_factor` (default 3, with
    /// NetworkTopologyStrategy), or `replication` (a whole CQL replication map).
    pub fn from_url(url: &str) -> Result<Self, ProjectionError> {
        let bad = |why: &str| {
            ProjectionError::Config(format!(
                "{why} in ScyllaDB URL {url:?} (expected scylla://host:9042[,host…]/keyspace?consistency=QUORUM)"
            ))
        };
        let rest = url
            .strip_prefix("scylla://")
            .ok_or_else(|| bad("no scylla:// scheme"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth_hosts, keyspace) = rest.split_once('/').unwrap_or((rest, "herald"));
        let (credentials, hosts) = match auth_hosts.rsplit_once('@') {
            Some((auth, hosts)) => {
                let (u, p) = auth
                    .split_once(':')
                    .ok_or_else(|| bad("user without :password"))?;
                (Some((u.to_owned(), p.to_owned())), hosts)
            }
            None => (None, auth_hosts),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(':') {
                    h.to_owned()
                } else {
                    format!("{h}:9042")
                }
            })
            .collect();
        if nodes.is_empty() {
            return Err(bad("no host"));
        }
        let keyspace = if keyspace.is_empty() {
            "herald"
        } else {
            keyspace
        };
        if !keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || keyspace.len() > 48
        {
            return Err(bad(
                "a keyspace name must be letters, digits and _ (at most 48)",
            ));
        }
        let mut config = ScyllaConfig {
            nodes,
            keyspace: keyspace.to_ascii_lowercase(),
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".into(),
            consistency: Consistency::Quorum,
            credentials,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad("an option without ="))?;
            match k {
                "consistency" => {
                    config.consistency =
                        parse_consistency(v).ok_or_else(|| bad("unknown consistency"))?
                }
                "replication_factor" => {
                    let rf: u8 = v
                        .parse()
                        .map_err(|_| bad("replication_factor is not a number"))?;
                    config.replication = format!(
                        "{{'class': 'NetworkTopologyStrategy', 'replication_factor': {rf}}}"
                    );
                }
                "replication" => {
                    if v.contains(';') {
                        return Err(bad("replication must be one CQL map"));
                    }
                    config.replication = v.replace("%20", " ");
                }
                other => return Err(bad(&format!("unknown option {other:?}"))),
            }
        }
        Ok(config)
    }
}

fn parse_consistency(s: &str) -> Option<Consistency> {
    Some(match s.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_options() {
        let c = ScyllaConfig::from_url("scylla://a,b:9043/inbox?consistency=local_quorum").unwrap();
        assert_eq!(c.nodes, vec!["a:9042", "b:9043"]);
        assert_eq!(c.keyspace, "inbox");
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        let c = ScyllaConfig::from_url("scylla://u:p@h?replication_factor=1").unwrap();
        assert_eq!(c.credentials, Some(("u".into(), "p".into())));
        assert_eq!(c.keyspace, "herald");
        assert_eq!(c.consistency, Consistency::Quorum);
        assert!(c.replication.contains("'replication_factor': 1"));
        for bad in [
            "postgres://h/db",
            "scylla:///ks",
            "scylla://h/bad-name",
            "scylla://h/ks?consistency=MOST",
            "scylla://h/ks?replication={};DROP",
            "scylla://h/ks?nope=1",
        ] {
            assert!(
                ScyllaConfig::from_url(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }
}
