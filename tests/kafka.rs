//! Herald on Kafka, with real processes: a tansu broker (Kafka protocol) the test starts on a
//! free port, a throwaway PostgreSQL for the shared projection, two `herald projector` replicas
//! and two gateways (`herald dev --projector false` over the same log and projection).
//!
//! Devices connect to either gateway and resume on whichever they reach next; HTTP producers
//! post to either gateway; the Python example producer (docs/examples/producer.py) writes
//! straight to Kafka, and one corrupt record goes to the requests topic. Mid-stream one
//! projector and one gateway are killed with SIGKILL and restarted, a third projector joins and
//! the second leaves with SIGTERM (consumer-group rebalances while producing). At the end every
//! accepted notification was shown exactly once on every device of every recipient, in per-user
//! order; the corrupt record is in the dead letters; and `herald replay` from the topics builds
//! a projection equal to the live one.
//!
//! Size: HERALD_KAFKA_CHAOS_SECONDS of producing before the first kill (default 2).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_kafka::{KafkaLog, testing};
use herald_ports::log::{EventLog, Record, Topic};
use rand::{Rng, SeedableRng};
use support::cluster::{Cluster, dump_logs};
use support::exactly_once::*;
use support::{Watchdog, kill9, terminate};
use tokio::sync::Mutex;

/// Time for a consumer group to notice a change and rebalance: the test session timeout (6 s)
/// and a margin. Not a timing assertion: a slower rebalance only delays the projection.
const SETTLE: Duration = Duration::from_secs(8);

/// Runs the Python example producer; returns the ids it got delivery reports for.
fn python_producer(
    broker: &str,
    prefix: &str,
    users: &[&str],
    count: usize,
    tag: &str,
) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/producer.py");
    let mut cmd = Command::new(testing::python());
    cmd.arg(script)
        .args(["--brokers", broker, "--prefix", prefix])
        .args(["--count", &count.to_string(), "--key-prefix", tag]);
    for u in users {
        cmd.args(["--user", u]);
    }
    let out = support::output_within(&mut cmd, support::COMMAND_GUARD);
    assert!(
        out.status.success(),
        "Python producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("accepted "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// For each notification a device never showed: whether the shared projection has the user's
/// row (and its seq), the device's ACK cursor there, and what the device showed around that seq,
/// which tells a row the projector never wrote from a row a session skipped.
async fn diagnose_losses(
    url: &str,
    shown: &ShownBy,
    accepted: &std::collections::BTreeMap<String, Vec<String>>,
) {
    use herald_ports::projection::InboxReader;
    let store = match herald_postgres::PostgresProjection::connect(url).await {
        Ok(s) => s,
        Err(e) => return eprintln!("diagnosis: cannot open the projection: {e}"),
    };
    for ((user, device), s) in shown {
        let s = s.lock().await.clone();
        let seen: std::collections::HashSet<&String> = s.iter().map(|(i, _)| i).collect();
        let cursor = store.device_cursor(user, device).await;
        for (id, users) in accepted {
            if !users.contains(user) || seen.contains(id) {
                continue;
            }
            let row = store.row(user, id).await;
            let seq = row.as_ref().ok().and_then(|r| r.as_ref().map(|r| r.seq));
            let (before, after): (Vec<u64>, Vec<u64>) = match seq {
                Some(q) => (
                    s.iter()
                        .map(|x| x.1)
                        .filter(|x| *x < q)
                        .rev()
                        .take(3)
                        .collect(),
                    s.iter().map(|x| x.1).filter(|x| *x > q).take(3).collect(),
                ),
                None => (vec![], vec![]),
            };
            eprintln!(
                "diagnosis: {user}/{device} lost {id}: row seq {seq:?} (read ok: {}), device \
                 cursor {cursor:?}, shown before {before:?}, after {after:?}, shown {} in all",
                row.is_ok(),
                s.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_across_projector_and_gateway_replicas_with_kills_and_rebalances() {
    let Some(broker) = testing::broker() else {
        return;
    };
    let Some(db) = herald_postgres::testing::TestDb::new() else {
        return;
    };
    let Some(rebuilt_db) = herald_postgres::testing::TestDb::new() else {
        return;
    };
    let round = Duration::from_secs_f64(
        std::env::var("HERALD_KAFKA_CHAOS_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2.0),
    );
    let seed: u64 = std::env::var("HERALD_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("kafka chaos: {round:?} rounds, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let watchdog = Watchdog::new(
        "kafka chaos",
        support::WATCHDOG_LIMIT + 4 * round,
        tmp.path(),
    );
    let cluster = Cluster {
        partitions: 4,
        request_partitions: 2,
        broker: broker.address.clone(),
        prefix: format!("k{}.", uuid::Uuid::new_v4().simple()),
        pg_url: db.url.clone(),
        secret: "kafka-test-secret".into(),
        dir: tmp.path().to_owned(),
    };

    watchdog.phase("starting two projectors and two gateways");
    let mut p1 = cluster.projector("p1");
    let mut p2 = cluster.projector("p2");
    let (port1, port2) = (support::free_port(), support::free_port());
    let mut g1 = cluster.gateway("g1", port1).await;
    let g2 = cluster.gateway("g2", port2).await;
    let gateways: Vec<(String, String)> = [port1, port2]
        .iter()
        .map(|p| {
            (
                format!("http://127.0.0.1:{p}"),
                format!("ws://127.0.0.1:{p}/v1/ws"),
            )
        })
        .collect();

    let stop_devices = Arc::new(AtomicBool::new(false));
    let stop_producers = Arc::new(AtomicBool::new(false));
    let (shown, tasks) = start_devices(&gateways, &stop_devices, &mut rng);
    let produced = Arc::new(Mutex::new(Produced::default()));
    let http: Vec<String> = gateways.iter().map(|g| g.0.clone()).collect();
    let producers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(producer(
                http.clone(),
                produced.clone(),
                stop_producers.clone(),
                rng.random(),
                i,
            ))
        })
        .collect();

    // A record no one can decode, straight onto the requests topic.
    watchdog.phase("appending a corrupt record");
    let log = KafkaLog::open(testing::config(broker, &cluster.prefix))
        .await
        .expect("open the log from the test");
    assert_eq!(
        log.partitions(Topic::UserEvents),
        4,
        "the herald processes created the topics"
    );
    let corrupt = log
        .append(
            Topic::Requests,
            vec![Record {
                partition: 0,
                key: "garbage".into(),
                value: b"\xc3\x01not avro at all".to_vec(),
                headers: vec![],
                timestamp_ms: 0,
            }],
        )
        .await
        .unwrap()[0];

    tokio::time::sleep(round).await;
    // Python, direct to Kafka, while the HTTP producers run.
    let users = ["u0", "u1", "u2"];
    let python = |tag: &'static str| {
        let (b, p) = (cluster.broker.clone(), cluster.prefix.clone());
        tokio::task::spawn_blocking(move || python_producer(&b, &p, &users, 40, tag))
    };
    watchdog.phase("the first Python producer");
    let py_first = python("py-a").await.unwrap();

    // Membership changes come one at a time, each after the group settled from the one
    // before: the test broker (tansu 0.6) can leave a group without an assignment when a
    // member joins or leaves while it is still rebalancing (docs/operations.md). Producers and
    // devices keep going throughout.
    // Kill one projector and one gateway mid-stream.
    watchdog.phase("membership changes");
    kill9(&mut p1);
    g1.kill9();
    tokio::time::sleep(SETTLE).await;
    // A third projector joins while they are down.
    let mut p3 = cluster.projector("p3");
    tokio::time::sleep(SETTLE).await;
    // Both come back.
    g1 = cluster.gateway("g1", port1).await;
    p1 = cluster.projector("p1");
    tokio::time::sleep(SETTLE).await;
    // The second projector leaves (a clean stop: its partitions move to the others).
    watchdog.phase("the second projector's clean stop");
    terminate(&mut p2);
    tokio::time::sleep(SETTLE).await;
    watchdog.phase("the second Python producer");
    let py_second = python("py-b").await.unwrap();
    tokio::time::sleep(round).await;
    watchdog.phase("stopping the HTTP producers");
    stop_producers.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    {
        let mut p = produced.lock().await;
        for id in py_first.iter().chain(&py_second) {
            p.accepted
                .insert(id.clone(), users.iter().map(|u| u.to_string()).collect());
        }
    }

    let accepted = produced.lock().await.accepted.clone();
    watchdog.phase("waiting for the devices to see every accepted notification");
    converge(&shown, &accepted).await;
    watchdog.phase("stopping the devices");
    stop_devices.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let p = produced.lock().await;
    let v = check(&shown, &p).await;
    println!(
        "kafka chaos: projectors 2 (+1 joined, 1 SIGKILLed and restarted, 1 left), gateways 2 \
         (1 SIGKILLed and restarted), devices={} posts={} producer_retries={} accepted={} \
         (python {}) unknown_outcome={} shown={} absorbed_by_client_dedupe={} lost={} \
         duplicated={} out_of_order={} strangers={}",
        USERS * DEVICES,
        p.posts,
        p.retries,
        p.accepted.len(),
        py_first.len() + py_second.len(),
        p.unknown.len(),
        v.shown,
        ABSORBED.load(Ordering::Relaxed),
        v.lost,
        v.duplicated,
        v.out_of_order,
        v.strangers,
    );
    // Holes the broker served in partitions' offsets, which Herald's readers fetched again
    // (tansu 0.6 serves them when several producers write a partition; docs/operations.md).
    let holes: usize = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .matches("a hole in a partition's offsets")
                .count()
        })
        .sum();
    println!("kafka chaos: holes in partitions' offsets fetched again: {holes}");
    if v.lost > 0 {
        diagnose_losses(&db.url, &shown, &p.accepted).await;
    }
    if v.lost + v.duplicated + v.out_of_order + v.strangers > 0 {
        dump_logs(tmp.path());
        if std::env::var("HERALD_KEEP_TMP").is_ok() {
            eprintln!("kept {}", tmp.keep().display());
        }
    }
    assert_eq!(
        py_first.len() + py_second.len(),
        80,
        "every Python record was delivered to Kafka"
    );
    assert!(
        p.accepted.len() > 80,
        "the HTTP producers got notifications accepted too"
    );
    assert_eq!(
        (v.lost, v.duplicated, v.out_of_order, v.strangers),
        (0, 0, 0, 0)
    );

    // The corrupt record is in the dead letters, with a reason.
    watchdog.phase("reading the dead letters");
    let dead = log.dead_letters(100).await.unwrap();
    let found = dead
        .iter()
        .find(|d| d.partition == corrupt.partition && d.offset == corrupt.offset)
        .unwrap_or_else(|| panic!("the corrupt record is not in the dead letters: {dead:?}"));
    assert!(found.topic.ends_with("requests"), "{found:?}");
    assert!(found.reason.starts_with("fanout:"), "{found:?}");

    // `herald audit` reads the Kafka log and the shared projection: a Python-produced
    // notification was requested, then added for each of its recipients.
    watchdog.phase("herald audit");
    let out = support::output_within(
        Command::new(support::BIN)
            .args(["audit", &py_first[0], "--json", "--projection-url", &db.url])
            .args(cluster.kafka_connect_args()),
        support::COMMAND_GUARD,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "herald audit: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let entries = report["entries"].as_array().unwrap();
    let of = |kind: &'static str| entries.iter().filter(move |e| e["event"] == kind);
    assert_eq!(of("requested").count(), 1, "{report}");
    // A fanout replica killed mid-batch re-expands its request after the rebalance, so the log
    // may hold an `added` twice for a user (the fold and the clients absorb it); every
    // recipient has one.
    let added: std::collections::BTreeSet<&str> = of("added")
        .map(|e| e["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(added, users.iter().copied().collect(), "{report}");

    // A fresh replay from the topics equals the live projection.
    watchdog.phase("stopping the projectors");
    for c in [&mut p1, &mut p3] {
        terminate(c);
    }
    watchdog.phase("herald replay");
    let out = support::output_within(
        Command::new(support::BIN)
            .arg("replay")
            .args(cluster.kafka_connect_args())
            .args([
                "--projection-url",
                &db.url,
                "--into-url",
                &rebuilt_db.url,
                "--quiet",
            ]),
        support::COMMAND_GUARD,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("equals the live one"),
        "replay differs: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop((g1, g2));
}

/// Projectors of different stores never share a consumer group: each store gets every
/// partition (before, a SQLite projector and a shared-store projector split the partitions
/// between them, each store missing the other's share).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projectors_of_different_stores_do_not_share_a_group() {
    use herald_embedded::{Access, EmbeddedProjection};
    use herald_ports::prelude::*;
    let Some(broker) = testing::broker() else {
        return;
    };
    let prefix = format!("g{}.", uuid::Uuid::new_v4().simple());
    let log = Arc::new(
        KafkaLog::open(testing::config(broker, &prefix))
            .await
            .unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let _watchdog = Watchdog::new("kafka stores", support::WATCHDOG_LIMIT, tmp.path());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut stores = Vec::new();
    for name in ["a", "b"] {
        let store = Arc::new(
            EmbeddedProjection::open(&tmp.path().join(format!("{name}.db")), Access::ReadWrite)
                .await
                .unwrap(),
        );
        let p = herald_projector::Projector::new(log.clone(), store.clone());
        let token = shutdown.clone();
        tokio::spawn(async move { p.run(token).await.unwrap() });
        stores.push(store);
    }
    assert_ne!(stores[0].store_id(), stores[1].store_id());
    // Users spread over every partition.
    let users: Vec<String> = (0..24).map(|i| format!("u{i}")).collect();
    let request = herald_core::model::NotificationRequest {
        notification_id: herald_core::ids::notification_id("p", "groups"),
        idempotency_key: "groups".into(),
        producer: "p".into(),
        recipients: herald_core::model::Recipients {
            users: users.clone(),
            ..Default::default()
        },
        event_type: "t".into(),
        source: "s".into(),
        payload: "{}".into(),
        collapse_key: None,
        deliver_at: None,
        expires_at: None,
        created_at: 1,
        traceparent: None,
        priority: Default::default(),
    };
    let id = request.notification_id.clone();
    let record = herald_ports::records::request_record(
        &herald_core::model::RequestRecord::Notification(Box::new(request)),
        log.partitions(Topic::Requests),
        1,
    )
    .unwrap();
    log.append(Topic::Requests, vec![record]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    for store in &stores {
        for u in &users {
            while store.row(u, &id).await.unwrap().is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "store {} never got {u}'s row",
                    store.store_id()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    shutdown.cancel();
}

/// The README's scale-out recipe, line by line as written there (placeholders filled in, plus
/// the test broker's prefix and client settings): a `herald projector` and a `herald gateway` on
/// Kafka with a shared PostgreSQL projection, and `herald produce --api-key` sending through the
/// gateway, which refuses it without the key. The notification reaches the user's inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_scale_out_recipe_runs_with_produce_api_key() {
    let Some(broker) = testing::broker() else {
        return;
    };
    let Some(db) = herald_postgres::testing::TestDb::new() else {
        return;
    };
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let recipe: Vec<&str> = readme
        .split("runs these lines as they are written here")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the README's scale-out recipe")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(recipe.len(), 3, "projector, gateway, produce: {recipe:?}");
    let tmp = tempfile::tempdir().unwrap();
    let _watchdog = Watchdog::new("kafka recipe", support::WATCHDOG_LIMIT, tmp.path());
    let port = support::free_port();
    let (secret, key) = ("recipe-secret", "recipe-key");
    let prefix = format!("r{}.", uuid::Uuid::new_v4().simple());
    // One README line as arguments: placeholders filled in, quotes dropped.
    let args = |line: &str| -> Vec<String> {
        line.replace("BROKER", &broker.address)
            .replace("postgres://herald@db/herald", &db.url)
            .replace("0.0.0.0:7400", &format!("127.0.0.1:{port}"))
            .replace("http://gateway:7400", &format!("http://127.0.0.1:{port}"))
            .replace("\"$JWT_SECRET\"", secret)
            .replace("\"$BILLING_KEY\"", key)
            .split_whitespace()
            .skip(1) // `herald`
            .map(str::to_owned)
            .collect()
    };
    let mut test_kafka = vec!["--kafka-prefix".to_string(), prefix];
    for (k, v) in testing::test_properties() {
        test_kafka.push("-X".into());
        test_kafka.push(format!("{k}={v}"));
    }
    let spawn = |name: &str, line: &str| {
        let log = std::fs::File::create(tmp.path().join(format!("{name}.log"))).unwrap();
        support::Owned::new(
            Command::new(support::BIN)
                .args(args(line))
                .args(&test_kafka)
                .current_dir(tmp.path())
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {line}: {e}")),
        )
    };
    let mut projector = spawn("projector", recipe[0]);
    let mut gateway = spawn("gateway", recipe[1]);
    let url = format!("http://127.0.0.1:{port}");
    let http = support::http();
    let started = std::time::Instant::now();
    while !http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            started.elapsed() < support::READY_GUARD,
            "the gateway did not start: {}",
            std::fs::read_to_string(tmp.path().join("gateway.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without the key the gateway refuses, and says how to pass one.
    let mut keyless: Vec<String> = args(recipe[2]);
    let at = keyless.iter().position(|a| a == "--api-key").unwrap();
    keyless.drain(at..at + 2);
    let refused = support::output_within(
        Command::new(support::BIN)
            .args(&keyless)
            .env_remove("HERALD_API_KEY"),
        support::COMMAND_GUARD,
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "accepted without a key");
    assert!(err.contains("401") && err.contains("--api-key"), "{err}");
    // The same through HERALD_API_KEY, and the README's line itself.
    let by_env = support::output_within(
        Command::new(support::BIN)
            .args(&keyless)
            .env("HERALD_API_KEY", key),
        support::COMMAND_GUARD,
    );
    assert!(
        by_env.status.success(),
        "{}",
        String::from_utf8_lossy(&by_env.stderr)
    );
    let sent = support::output_within(
        Command::new(support::BIN).args(args(recipe[2])),
        support::COMMAND_GUARD,
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let id_of = |out: &std::process::Output| -> String {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["notification_id"].as_str().unwrap().to_owned()
    };
    let wanted = [id_of(&by_env), id_of(&sent)];

    // The projector replica expands it into alice's inbox in the shared projection.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "alice", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let started = std::time::Instant::now();
    loop {
        let page: serde_json::Value = http
            .get(format!("{url}/v1/inbox"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["id"].as_str())
            .collect();
        if wanted.iter().all(|w| ids.contains(&w.as_str())) {
            assert_eq!(
                ids.len(),
                2,
                "the HERALD_API_KEY one and the README's: {page}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the notifications never reached the inbox: {page}\n{}",
            std::fs::read_to_string(tmp.path().join("projector.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    terminate(&mut gateway);
    terminate(&mut projector);
}
