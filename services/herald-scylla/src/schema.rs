//! The CQL schema (`schemas/cql/001_projection.cql`) as statements for the configured keyspace
//! and replication, applied at start-up.

use crate::ScyllaConfig;

const SCHEMA: &str = include_str!("../../../schemas/cql/001_projection.cql");

/// The schema's statements with the keyspace and replication filled in.
pub fn schema_statements(config: &ScyllaConfig) -> Vec<String> {
    let text: String = SCHEMA
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("{keyspace}", &config.keyspace)
                .replace("{replication}", &config.replication)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_splits_into_statements_for_the_configured_keyspace() {
        let c = ScyllaConfig::from_url("scylla://h/hx?replication_factor=1").unwrap();
        let stmts = schema_statements(&c);
        assert!(
            stmts[0].starts_with("CREATE KEYSPACE IF NOT EXISTS hx WITH replication = {'class'")
        );
        assert!(stmts.iter().all(|s| s.starts_with("CREATE ")), "{stmts:#?}");
        assert!(
            stmts
                .iter()
                .all(|s| !s.contains('{') || s.starts_with("CREATE KEYSPACE"))
        );
        assert!(stmts.iter().skip(1).all(|s| s.contains(" hx.")));
        let all = stmts.join(";");
        assert!(!all.contains(concat!("ALLOW ", "FILTERING")) && !all.contains("INDEX"));
        // Nor do the statements the store prepares or runs.
        for source in [
            include_str!("statements.rs"),
            include_str!("directory.rs"),
            include_str!("snapshot.rs"),
        ] {
            assert!(!source.contains(concat!("ALLOW ", "FILTERING")));
        }
        assert_eq!(stmts.len(), 24);
    }
}
