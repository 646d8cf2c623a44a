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

/// The metric names a dashboard query uses (`herald_…` and `process_…`).
fn queried_metrics(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("herald_") || w.starts_with("process_"))
        .collect()
}

/// Every dashboard panel, with the metric names its queries use.
fn dashboard_panels() -> Vec<(String, Vec<String>)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&infra("grafana/dashboards/herald.json")).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|panel| {
            let title = panel["title"].as_str().unwrap().to_owned();
            let mut names = Vec::new();
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let found = queried_metrics(expr);
                assert!(
                    !found.is_empty(),
                    "{title}: {expr} queries no Herald metric"
                );
                names.extend(found.into_iter().map(str::to_owned));
            }
            (title, names)
        })
        .collect()
}

#[test]
fn the_dashboard_queries_metrics_herald_exports() {
    let mut known: Vec<&str> = vec![
        telemetry::LOG_APPENDED_RECORDS,
        telemetry::LOG_GROUP_COMMIT_RECORDS,
        telemetry::PROJECTOR_APPLIED_EVENTS,
        telemetry::PROJECTOR_LAG_RECORDS,
        telemetry::PROJECTOR_UNDECODABLE,
        telemetry::PROJECTOR_EXPANDED,
        telemetry::PROJECTOR_DUPLICATE_REQUESTS,
        telemetry::PROJECTOR_RESTARTS,
        telemetry::PROJECTOR_TIMER_LEASE_HELD,
        telemetry::PROJECTOR_READY,
        telemetry::HTTP_REQUESTS,
        telemetry::HTTP_RATE_LIMITED,
        telemetry::NOTIFICATIONS_ACCEPTED,
        telemetry::HUB_RECORDS_READ,
        telemetry::HUB_PARTITIONS_FOLLOWED,
        telemetry::SESSIONS_CONNECTED,
        telemetry::SESSIONS_CLOSED,
        telemetry::SLOW_CONSUMER_DISCONNECTS,
        telemetry::DELIVERIES,
        telemetry::REDELIVERIES,
        telemetry::ACKS,
        telemetry::TICKETS,
        telemetry::BUILD_INFO,
        telemetry::PROCESS_RESIDENT_MEMORY,
        telemetry::PROCESS_VIRTUAL_MEMORY,
        telemetry::PROCESS_OPEN_FDS,
        telemetry::PROCESS_MAX_FDS,
        telemetry::PROCESS_CPU_SECONDS,
        telemetry::PROCESS_START_TIME,
        telemetry::PROCESS_THREADS,
    ];
    // Histograms are queried by their buckets, never by quantile (summaries do not add up
    // across replicas).
    let buckets: Vec<String> = telemetry::HISTOGRAM_BUCKETS
        .iter()
        .map(|(n, _)| format!("{n}_bucket"))
        .collect();
    known.extend(buckets.iter().map(String::as_str));
    let panels = dashboard_panels();
    for (title, names) in &panels {
        for n in names {
            assert!(
                known.contains(&n.as_str()),
                "{title}: the dashboard queries {n}, which Herald does not export"
            );
        }
    }
    assert!(panels.len() >= 15, "the panels an SRE needs");
    let dashboard = infra("grafana/dashboards/herald.json");
    assert!(!dashboard.contains("quantile=\""), "no summary quantiles");
}

/// The series names of a Prometheus text exposition.
fn scraped(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

async fn get_text(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = client.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// Waits for `url` to answer 200 (a hang guard: [`support::READY_GUARD`] and more).
async fn until_ok(client: &reqwest::Client, url: &str, log: &Path) -> String {
    let deadline = tokio::time::Instant::now() + support::READY_GUARD * 3;
    loop {
        if let Some((200, body)) = get_text(client, url).await {
            return body;
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{url} never answered 200; the log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every panel's metrics exist in a live scrape: a gateway (`herald dev` on the test Kafka
/// broker, which serves a device and a producer first, the producer once rate-limited) and a
/// `herald projector` on the same topics. Projector metrics must come from the projector; the rest from the gateway;
/// build and process metrics from both. Histograms must be scraped as `_bucket` series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_in_a_live_scrape() {
    use std::process::{Command, Stdio};
    let Some(broker) = herald_kafka::testing::broker() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _watchdog = support::Watchdog::new("infra scrape", support::WATCHDOG_LIMIT, dir.path());
    let client = support::http();

    // The projector, on Kafka with its own SQLite projection.
    let projector_metrics = support::free_port();
    let projector_log = dir.path().join("projector.log");
    let prefix = format!("infra{}.", uuid_like());
    let mut projector_cmd = Command::new(support::BIN);
    projector_cmd
        .args(["projector", "--kafka-brokers", &broker.address])
        .args(["--kafka-prefix", &prefix])
        .args([
            "--kafka-partitions",
            "2",
            "--kafka-requests-partitions",
            "1",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("projector"))
        .args([
            "--metrics-listen",
            &format!("127.0.0.1:{projector_metrics}"),
        ]);
    for (k, v) in herald_kafka::testing::test_properties() {
        projector_cmd.args(["-X", &format!("{k}={v}")]);
    }
    let mut projector = support::Owned::new(
        projector_cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&projector_log).unwrap())
            .spawn()
            .expect("spawn herald projector"),
    );
    let projector_url = format!("http://127.0.0.1:{projector_metrics}");

    // The gateway (on the same topics, with a projector of its own: another store, other
    // groups), with a producer limit of one notification per second (the second is 429).
    let gateway_metrics = support::free_port();
    let mut gateway_args: Vec<String> = [
        "--kafka-brokers",
        &broker.address,
        "--kafka-prefix",
        &prefix,
        "--kafka-partitions",
        "2",
        "--kafka-requests-partitions",
        "1",
        "--metrics-listen",
        &format!("127.0.0.1:{gateway_metrics}"),
        "--producer-rate",
        "1",
        "--producer-burst",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (k, v) in herald_kafka::testing::test_properties() {
        gateway_args.push("-X".into());
        gateway_args.push(format!("{k}={v}"));
    }
    let gateway_args: Vec<&str> = gateway_args.iter().map(String::as_str).collect();
    let mut dev = support::Dev::start_with(
        &dir.path().join("gateway"),
        support::free_port(),
        &gateway_args,
    )
    .await;
    let gateway_log = dir.path().join("gateway.log");
    // Ready: the hub and the in-process projector have their partitions.
    until_ok(&client, &format!("{}/readyz", dev.url()), &gateway_log).await;

    // A device connects (and gets a ticket), a notification is delivered live and ACKed.
    let token: serde_json::Value = client
        .post(format!("{}/v1/dev/token", dev.url()))
        .json(&serde_json::json!({"user_id": "ada"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let ticket = client
        .post(format!("{}/v1/ws-ticket", dev.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ticket.status(), 200);
    let ws = format!("ws://127.0.0.1:{}/v1/ws", dev.port);
    let (mut conn, _) = herald_client::connect(
        &ws,
        &herald_client::Credentials::Bearer(token.clone()),
        "phone",
        None,
    )
    .await
    .unwrap();
    let post = |key: &str| {
        client
            .post(format!("{}/v1/notifications", dev.url()))
            .header("idempotency-key", key)
            .json(&serde_json::json!({
                "recipients": {"users": ["ada"]},
                "event_type": "e", "source": "s", "data": {}
            }))
            .send()
    };
    assert_eq!(post("k1").await.unwrap().status(), 202);
    assert_eq!(
        post("k2").await.unwrap().status(),
        429,
        "over the producer's rate"
    );
    let deadline = tokio::time::Instant::now() + support::READY_GUARD;
    let id = loop {
        let frame = tokio::time::timeout_at(deadline, conn.next())
            .await
            .expect("the notification never arrived")
            .unwrap();
        if let herald_core::protocol::ServerFrame::Notification { id, .. } = frame {
            break id;
        }
    };
    conn.ack(&[id], None).await.unwrap();
    conn.close().await;

    // The projector becomes ready once both stages have their partitions.
    let ready = until_ok(&client, &format!("{projector_url}/readyz"), &projector_log).await;
    assert!(ready.contains("\"ready\":true"), "{ready}");
    // What the scrapes lack, looked at again until nothing is missing or the guard runs out:
    // the session's close is recorded once the gateway has seen it, and the projector's batch
    // latency once it has expanded the notification too (into its own store).
    let gateway_url = format!("http://127.0.0.1:{gateway_metrics}/metrics");
    let deadline = tokio::time::Instant::now() + support::READY_GUARD * 2;
    let missing = loop {
        let gateway_text = until_ok(&client, &gateway_url, &gateway_log).await;
        let gateway = scraped(&gateway_text);
        let projector_scrape =
            scraped(&until_ok(&client, &format!("{projector_url}/metrics"), &projector_log).await);
        let mut missing = Vec::new();
        for (title, names) in dashboard_panels() {
            for n in names {
                let from_projector = n.starts_with("herald_projector_");
                let everywhere = n.starts_with("process_") || n == telemetry::BUILD_INFO;
                let mut wanted = Vec::new();
                if from_projector || everywhere {
                    wanted.push(("projector", &projector_scrape));
                }
                if !from_projector || everywhere {
                    wanted.push(("gateway", &gateway));
                }
                for (who, scrape) in wanted {
                    if !scrape.contains(&n) {
                        missing.push(format!("{title}: {n} not in the {who}'s /metrics"));
                    }
                }
            }
        }
        // The session's own counts: one notification sent to the device, one ACK frame.
        for want in [
            "herald_deliveries_total 1",
            "herald_delivery_latency_seconds_count 1",
            r#"herald_acks_total{via="ws"} 1"#,
        ] {
            if !gateway_text.lines().any(|l| l == want) {
                missing.push(format!("{want:?} not in the gateway's /metrics"));
            }
        }
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    support::terminate(&mut projector);
    dev.terminate();
    assert!(missing.is_empty(), "{missing:#?}");
}

/// A short random name part (no uuid dependency here).
fn uuid_like() -> String {
    format!("{:016x}", rand::random::<u64>())
}
