//! Checks infra/ against the binary and the metrics, without Docker: every `herald` flag and
//! `HERALD_*` variable the compose file uses exists in `herald <command> --help`; Prometheus
//! scrapes compose services on the ports they listen on; the KRaft quorum lists every broker;
//! every metric the Grafana dashboard queries is one Herald exports.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use herald_ports::telemetry;
use serde_yaml::Value;

fn infra(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../infra")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> BTreeMap<String, Value> {
    let mut doc: Value = serde_yaml::from_str(&infra("docker-compose.yml")).unwrap();
    doc.apply_merge().unwrap();
    let services = doc["services"].as_mapping().unwrap();
    services
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.apply_merge().unwrap();
            if let Some(env) = v.get_mut("environment") {
                env.apply_merge().unwrap();
            }
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn help(sub: &str) -> String {
    let out = support::herald(&[sub, "--help"]);
    assert!(out.status.success(), "herald {sub} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

fn herald_services(services: &BTreeMap<String, Value>) -> Vec<(&String, &Value)> {
    services
        .iter()
        .filter(|(_, v)| v["image"].as_str() == Some("herald:local"))
        .collect()
}

#[test]
fn compose_uses_only_flags_and_variables_herald_has() {
    let services = compose();
    let herald = herald_services(&services);
    assert!(herald.len() >= 4, "projectors and gateways: {herald:?}");
    for (name, svc) in herald {
        let command = strings(&svc["command"]);
        let sub = &command[0];
        let text = help(sub);
        for flag in command.iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(
                text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                "{name}: `herald {sub}` has no {flag}"
            );
        }
        let env = svc["environment"].as_mapping().unwrap();
        for key in env.keys().filter_map(|k| k.as_str()) {
            if key.starts_with("HERALD_") {
                assert!(
                    text.contains(&format!("[env: {key}")),
                    "{name}: `herald {sub}` does not read {key}"
                );
            }
        }
        assert!(
            env.contains_key("HERALD_KAFKA_BROKERS") && env.contains_key("HERALD_PROJECTION_URL"),
            "{name}: scale-out needs Kafka and the shared projection"
        );
    }
    let subs: BTreeSet<String> = herald_services(&services)
        .iter()
        .map(|(_, s)| strings(&s["command"])[0].clone())
        .collect();
    assert_eq!(
        subs,
        ["gateway", "projector"].map(String::from).into(),
        "both kinds of replica"
    );
}

#[test]
fn prometheus_scrapes_the_ports_the_services_listen_on() {
    let services = compose();
    let prom: Value = serde_yaml::from_str(&infra("prometheus.yml")).unwrap();
    let mut targets = 0;
    for job in prom["scrape_configs"].as_sequence().unwrap() {
        for sc in job["static_configs"].as_sequence().unwrap() {
            for t in strings(&sc["targets"]) {
                let (host, port) = t.split_once(':').unwrap();
                let svc = services
                    .get(host)
                    .unwrap_or_else(|| panic!("target {t}: no service {host}"));
                let command = strings(&svc["command"]);
                let listens = command
                    .windows(2)
                    .filter(|w| w[0] == "--listen" || w[0] == "--metrics-listen")
                    .any(|w| w[1].ends_with(&format!(":{port}")));
                assert!(
                    listens,
                    "target {t}: {host} does not listen on {port}: {command:?}"
                );
                targets += 1;
            }
        }
    }
    assert!(targets >= 4, "every gateway and projector is scraped");
}

#[test]
fn kafka_is_a_kraft_quorum_of_three_and_scylla_has_three_nodes() {
    let services = compose();
    let kafka: Vec<&String> = services
        .keys()
        .filter(|k| k.starts_with("kafka-"))
        .collect();
    assert_eq!(kafka.len(), 3);
    let mut ids = BTreeSet::new();
    for k in &kafka {
        let env = &services[*k]["environment"];
        let voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].as_str().unwrap();
        for other in &kafka {
            assert!(voters.contains(&format!("@{other}:9093")), "{k}: {voters}");
        }
        ids.insert(env["KAFKA_NODE_ID"].as_u64().unwrap());
        assert!(
            env["KAFKA_ADVERTISED_LISTENERS"]
                .as_str()
                .unwrap()
                .contains(&format!("//{k}:9092"))
        );
    }
    assert_eq!(ids, [1, 2, 3].into());
    let brokers = services["herald-gateway-1"]["environment"]["HERALD_KAFKA_BROKERS"]
        .as_str()
        .unwrap();
    for k in &kafka {
        assert!(brokers.contains(&format!("{k}:9092")), "{brokers}");
    }
    assert_eq!(
        services.keys().filter(|k| k.starts_with("scylla-")).count(),
        3
    );
    for s in ["postgres", "prometheus", "grafana", "otel-collector"] {
        assert!(services.contains_key(s), "{s} missing");
    }
}

/// `${NAME:-default}` as compose resolves it with NAME unset.
fn compose_default(v: &str) -> &str {
    v.strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once(":-"))
        .map_or(v, |(_, default)| default)
}

#[test]
fn the_projection_is_scylla_by_default_and_postgres_is_a_profile() {
    let services = compose();
    for (name, svc) in herald_services(&services) {
        let url = svc["environment"]["HERALD_PROJECTION_URL"]
            .as_str()
            .unwrap();
        let config = herald_scylla::ScyllaConfig::from_url(compose_default(url))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut nodes = config.nodes.clone();
        nodes.sort();
        let scylla: Vec<String> = services
            .keys()
            .filter(|k| k.starts_with("scylla-"))
            .map(|k| format!("{k}:9042"))
            .collect();
        assert_eq!(nodes, scylla, "{name} knows every ScyllaDB node");
        assert!(
            config.replication.contains("'replication_factor': 3"),
            "{name}"
        );
    }
    assert_eq!(strings(&services["postgres"]["profiles"]), ["postgres"]);
}

#[test]
fn herald_exports_spans_to_the_collector() {
    let services = compose();
    let collector = &services["otel-collector"];
    let config: Value = serde_yaml::from_str(&infra("otel-collector.yaml")).unwrap();
    let http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .unwrap_or("0.0.0.0:4318");
    let port = http.rsplit(':').next().unwrap();
    assert!(
        strings(&collector["ports"]).contains(&format!("{port}:{port}")),
        "the collector publishes its OTLP/HTTP port {port}"
    );
    for (name, svc) in herald_services(&services) {
        let env = &svc["environment"];
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(),
            Some(format!("http://otel-collector:{port}").as_str()),
            "{name}"
        );
        assert!(env["OTEL_SERVICE_NAME"].as_str().is_some(), "{name}");
    }
}

#[test]
fn the_load_balancer_fronts_every_gateway_with_websocket_upgrades() {
    let services = compose();
    let conf = infra("nginx.conf");
    let upstreams: BTreeSet<String> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter(|l| !l.starts_with('{'))
        .map(|l| {
            l.split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(';')
                .to_owned()
        })
        .collect();
    let gateways: BTreeSet<String> = herald_services(&services)
        .into_iter()
        .filter(|(_, s)| strings(&s["command"])[0] == "gateway")
        .map(|(name, s)| {
            let command = strings(&s["command"]);
            let listen = command.windows(2).find(|w| w[0] == "--listen").unwrap()[1].clone();
            format!("{name}:{}", listen.rsplit(':').next().unwrap())
        })
        .collect();
    assert_eq!(
        upstreams, gateways,
        "nginx upstreams are exactly the gateways"
    );
    assert!(conf.contains("proxy_set_header Upgrade $http_upgrade"));
    let lb = &services["lb"];
    assert!(strings(&lb["volumes"])[0].starts_with("./nginx.conf:"));
    let listen = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen "))
        .unwrap()
        .trim_end_matches(';');
    assert_eq!(strings(&lb["ports"]), [format!("{listen}:{listen}")]);
}

#[test]
fn the_dashboard_queries_metrics_herald_exports() {
    let known = [
        telemetry::LOG_APPENDED_RECORDS,
        telemetry::LOG_APPEND_SECONDS,
        telemetry::LOG_GROUP_COMMIT_RECORDS,
        telemetry::PROJECTOR_APPLIED_EVENTS,
        telemetry::PROJECTOR_APPLY_SECONDS,
        telemetry::PROJECTOR_LAG_RECORDS,
        telemetry::PROJECTOR_UNDECODABLE,
        telemetry::PROJECTOR_EXPANDED,
        telemetry::PROJECTOR_DUPLICATE_REQUESTS,
        telemetry::HTTP_REQUESTS,
        telemetry::NOTIFICATIONS_ACCEPTED,
    ];
    let dashboard: serde_json::Value =
        serde_json::from_str(&infra("grafana/dashboards/herald.json")).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("herald_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(
                    known.contains(&n),
                    "the dashboard queries {n}, which Herald does not export"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 5);
}
