//! The `herald` binary as a user runs it: the README's "try it", and bad input.

mod support;

use serde_json::Value;
use support::{Dev, herald};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_inbox_audit_and_replay_while_dev_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut dev = Dev::start(&data).await;
    let url = dev.url();
    let out = herald(&[
        "produce",
        "--url",
        &url,
        "--to",
        "alice,bob",
        "--type",
        "approval.requested",
        "--source",
        "expenses",
        "--data",
        r#"{"title":"Approve trip","amount":420}"#,
        "--key",
        "exp-1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let accepted: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = accepted["notification_id"].as_str().unwrap().to_owned();
    // Same key again: same id, nothing new.
    let again = herald(&[
        "produce", "--url", &url, "--to", "alice", "--type", "x", "--key", "exp-1",
    ]);
    let again: Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(again["notification_id"], id.as_str());
    // `--data` goes out as given: an object the server refuses is refused, not rewritten on
    // the way (through a `Value`, this one became `{"evil":true}` and was accepted).
    let raw = herald(&[
        "produce",
        "--url",
        &url,
        "--to",
        "alice",
        "--type",
        "x",
        "--data",
        r#"{"$serde_json::private::RawValue":"{\"evil\":true}"}"#,
    ]);
    assert_eq!(raw.status.code(), Some(1), "{}", stdout(&raw));
    assert!(stderr(&raw).contains("HTTP 422"), "{}", stderr(&raw));
    dev.caught_up().await;
    for user in ["alice", "bob"] {
        let (items, unread) = dev.inbox(user).await;
        assert_eq!(
            items.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(),
            vec![id.as_str()]
        );
        assert_eq!(unread, 1);
    }
    // Audit from the files while dev runs, and over HTTP.
    let offline = herald(&["audit", &id, "--data-dir", data.to_str().unwrap()]);
    assert!(offline.status.success(), "{}", stderr(&offline));
    let table = stdout(&offline);
    assert!(
        table.contains("requested") && table.contains("alice") && table.contains("bob"),
        "{table}"
    );
    assert!(
        table.contains("retry of the same idempotency key"),
        "{table}"
    );
    let online = herald(&["audit", "alice", "--url", &url, "--json"]);
    assert!(online.status.success(), "{}", stderr(&online));
    let report: Value = serde_json::from_str(&stdout(&online)).unwrap();
    assert_eq!(report["subject"], "user");
    assert_eq!(report["entries"][0]["event"], "added");
    // Replay into a fresh store equals the live projection.
    let replay = herald(&["replay", "--quiet", "--data-dir", data.to_str().unwrap()]);
    assert!(
        replay.status.success(),
        "{}{}",
        stdout(&replay),
        stderr(&replay)
    );
    assert!(stdout(&replay).contains("equals the live one"));
    // SIGTERM stops it cleanly; the data stays.
    let status = dev.terminate();
    assert!(status.success(), "herald dev exited with {status}");
    let dev = Dev::start(&data).await;
    dev.caught_up().await;
    assert_eq!(dev.inbox("alice").await.0.len(), 1);
}

#[test]
fn bad_input_gets_a_message_and_a_non_zero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let missing = missing.to_str().unwrap();
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let scylla = format!("scylla://127.0.0.1:{port}/ks");
    let fresh = tmp.path().join("fresh");
    let fresh = fresh.to_str().unwrap();
    // Errors after the log is open (the address, a key file): the pool of the projection's
    // writes had started, and dropping it hid each of them behind a panic.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let not_jwks = tmp.path().join("not-jwks.json");
    std::fs::write(&not_jwks, "not a key set").unwrap();
    let not_jwks = not_jwks.to_str().unwrap();
    let free = format!("127.0.0.1:{}", support::free_port());
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["dev", "--data-dir", fresh, "--listen", &taken],
            1,
            "binding 127.0.0.1:",
        ),
        // A warning from the settings is logged before the start-up goes on (here to fail).
        (
            vec![
                "dev",
                "--data-dir",
                fresh,
                "--listen",
                &taken,
                "--jwt-secret",
                "short",
            ],
            1,
            "the JWT secret is short",
        ),
        (
            vec![
                "dev",
                "--data-dir",
                fresh,
                "--listen",
                &free,
                "--jwks",
                not_jwks,
            ],
            1,
            "JWKS",
        ),
        (
            vec![
                "gateway",
                "--data-dir",
                fresh,
                "--listen",
                &free,
                "--jwt-secret",
                "",
            ],
            1,
            "JWT secret",
        ),
        (
            vec![
                "dev",
                "--data-dir",
                fresh,
                "--listen",
                &free,
                "--producer-key",
                "svc=k1",
                "--admin-key",
                "ops=k1",
            ],
            1,
            "one key is both producer svc's and admin ops's",
        ),
        (
            vec![
                "dev",
                "--data-dir",
                fresh,
                "--listen",
                &free,
                "--producer-key",
                "a=k1",
                "--producer-key",
                "b=k1",
            ],
            1,
            "one key is given for both",
        ),
        (vec!["bogus"], 2, "unrecognized subcommand"),
        (vec!["dev", "--no-such-flag"], 2, "unexpected argument"),
        (vec!["dev", "--partitions", "0"], 2, "invalid value"),
        (
            vec!["produce", "--to", "a", "--type", "t", "--timeout-secs", "0"],
            2,
            "invalid value",
        ),
        (
            vec![
                "produce", "--url", &url, "--to", "a", "--type", "t", "--data", "{bad",
            ],
            1,
            "--data is not valid JSON",
        ),
        (
            vec!["produce", "--url", &url, "--type", "t"],
            1,
            "name recipients",
        ),
        (
            vec!["produce", "--url", &url, "--to", "a", "--type", "t"],
            1,
            "cannot reach Herald",
        ),
        (
            vec!["audit", "x", "--data-dir", missing],
            1,
            "does not exist",
        ),
        (
            vec!["audit", "bad id!", "--data-dir", missing],
            1,
            "invalid id",
        ),
        (vec!["replay", "--data-dir", missing], 1, "does not exist"),
        // A live projection elsewhere does not make a missing data directory "corrupt data".
        (
            vec![
                "replay",
                "--projection-url",
                "postgres://127.0.0.1:1/x",
                "--data-dir",
                missing,
            ],
            1,
            "does not exist",
        ),
        (
            vec![
                "dev",
                "--data-dir",
                &fresh,
                "--projection-url",
                "mysql://h/db",
            ],
            1,
            "unknown projection URL",
        ),
        (
            vec!["dev", "--data-dir", &fresh, "--projection-url", &scylla],
            1,
            "cannot connect to ScyllaDB at 127.0.0.1:",
        ),
        (
            vec![
                "dev",
                "--data-dir",
                &fresh,
                "--projection-url",
                "scylla://h/bad-keyspace",
            ],
            1,
            "keyspace name",
        ),
    ];
    for (args, code, message) in cases {
        let out = herald(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dev_on_the_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let _first = Dev::start(&data).await;
    let port = support::free_port().to_string();
    let out = herald(&[
        "dev",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another herald process is using"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_corrupt_store_is_reported_not_panicked_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("log.db"), vec![0x42u8; 8192]).unwrap();
    std::fs::write(data.join("projection.db"), vec![0x42u8; 8192]).unwrap();
    // A good log beside a corrupt projection: the projection is opened after the pool of its
    // writes started, whose drop hid the error behind a panic.
    let projection_only = tmp.path().join("projection-only");
    std::fs::create_dir_all(&projection_only).unwrap();
    std::fs::write(projection_only.join("projection.db"), vec![0x42u8; 8192]).unwrap();
    let port = support::free_port().to_string();
    for args in [
        vec![
            "dev",
            "--data-dir",
            projection_only.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        vec![
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        vec!["audit", "alice", "--data-dir", data.to_str().unwrap()],
        vec!["replay", "--data-dir", data.to_str().unwrap()],
    ] {
        let out = herald(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("Herald") && err.contains("corrupt"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_gateway_has_no_dev_conveniences() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Without a way to verify tokens it refuses to start.
    let out = herald(&["gateway", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("needs a way to verify user tokens"),
        "{}",
        stderr(&out)
    );
    let port = support::free_port();
    let metrics_port = support::free_port();
    let child = std::process::Command::new(support::BIN)
        .args([
            "gateway",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .args(["--jwt-secret", "s3cret", "--producer-key", "billing=k-1"])
        .args(["--admin-key", "ops=k-admin"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = support::Owned::new(child);
    let url = format!("http://127.0.0.1:{port}");
    let client = support::http();
    let deadline = std::time::Instant::now() + support::READY_GUARD;
    while client.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(client.get(format!("{url}/")).send().await.unwrap()),
        404,
        "no demo page"
    );
    let login = client
        .post(format!("{url}/v1/dev/token"))
        .json(&serde_json::json!({"user_id": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(login), 404, "no demo login");
    let body =
        serde_json::json!({"recipients": {"users": ["a"]}, "event_type": "t", "source": "s"});
    let anon = client
        .post(format!("{url}/v1/notifications"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(status(anon), 401, "producers must authenticate");
    let keyed = client
        .post(format!("{url}/v1/notifications"))
        .header("x-api-key", "k-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(status(keyed), 202);
    assert_eq!(
        status(client.get(format!("{url}/herald.js")).send().await.unwrap()),
        200
    );
    // Operator endpoints need an operator; /metrics is open on the metrics address only.
    for path in ["/v1/status", "/v1/presence", "/metrics", "/v1/audit/a"] {
        let anon = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(status(anon), 401, "{path} without credentials");
        let ops = client
            .get(format!("{url}{path}"))
            .header("x-api-key", "k-admin")
            .send()
            .await
            .unwrap();
        assert_eq!(status(ops), 200, "{path} as an operator");
    }
    let scrape = client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status().as_u16(), 200);
    assert!(
        scrape.text().await.unwrap().contains("herald_"),
        "Herald's metrics"
    );
    // Anything else on the metrics address is refused as the API refuses it: status and JSON.
    for (method, path, code, error) in [
        (reqwest::Method::GET, "/nothing", 404, "not_found"),
        (reqwest::Method::POST, "/metrics", 405, "method_not_allowed"),
    ] {
        let r = client
            .request(method, format!("http://127.0.0.1:{metrics_port}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], error, "{path}: {body}");
    }
    let audit = herald(&[
        "audit",
        "a",
        "--url",
        &url,
        "--admin-key",
        "k-admin",
        "--json",
    ]);
    assert!(audit.status.success(), "{}", stderr(&audit));
    assert!(support::terminate(&mut child).success());
}

/// The projection in PostgreSQL (a throwaway server): dev survives a SIGKILL, and a replay from
/// the log into a second, empty PostgreSQL database equals the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_can_live_in_postgresql() {
    let (Some(live_db), Some(rebuilt_db)) = (
        herald_postgres::testing::TestDb::new(),
        herald_postgres::testing::TestDb::new(),
    ) else {
        return; // skipped, with the reason printed
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = support::free_port();
    let extra = ["--projection-url", live_db.url.as_str()];
    let mut dev = Dev::start_with(&data, port, &extra).await;
    let url = dev.url();
    for key in ["pg-1", "pg-2"] {
        let out = herald(&[
            "produce",
            "--url",
            &url,
            "--to",
            "alice,bob",
            "--type",
            "t",
            "--key",
            key,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    dev.caught_up().await;
    dev.kill9();
    let dev = Dev::start_with(&data, port, &extra).await;
    let out = herald(&[
        "produce", "--url", &url, "--to", "alice", "--type", "t", "--key", "pg-3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    dev.caught_up().await;
    let (items, unread) = dev.inbox("alice").await;
    assert_eq!((items.len(), unread), (3, 3));
    assert!(
        !data.join("projection.db").exists(),
        "nothing went to SQLite"
    );
    // At info, so PostgreSQL's notices would show (they are logged at info).
    let replay = support::herald_with_log(
        "info",
        &[
            "replay",
            "--quiet",
            "--data-dir",
            data.to_str().unwrap(),
            "--projection-url",
            &live_db.url,
            "--into-url",
            &rebuilt_db.url,
        ],
    );
    assert!(
        replay.status.success(),
        "{}{}",
        stdout(&replay),
        stderr(&replay)
    );
    assert!(
        stdout(&replay).contains("equals the live one"),
        "{}",
        stdout(&replay)
    );
    // The schema was applied before (by dev): its `IF NOT EXISTS` is not news.
    assert!(
        !stderr(&replay).contains("already exists") && !stderr(&replay).contains("NOTICE"),
        "{}",
        stderr(&replay)
    );
    // A second replay into the now non-empty database is refused.
    let again = herald(&[
        "replay",
        "--quiet",
        "--data-dir",
        data.to_str().unwrap(),
        "--live-url",
        &live_db.url,
        "--into-url",
        &rebuilt_db.url,
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already holds a projection"),
        "{}",
        stderr(&again)
    );
}

/// `herald audit … | head` must end quietly, not panic on the closed pipe (the output is made
/// larger than a pipe buffer so the write really fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_cli_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = Dev::start(&data).await;
    let client = support::http();
    for i in 0..300 {
        let r = client
            .post(format!("{}/v1/notifications", dev.url()))
            .header("idempotency-key", format!("pipe-{i}"))
            .json(&serde_json::json!({"recipients": {"users": ["pia"]}, "event_type": "t", "source": "s"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    dev.caught_up().await;
    let script = format!(
        "set -o pipefail; '{}' audit pia --json --data-dir '{}' 2>'{}/err' | head -c 10 >/dev/null",
        support::BIN,
        data.display(),
        tmp.path().display()
    );
    let status = support::output_within(
        std::process::Command::new("bash").args(["-c", &script]),
        support::COMMAND_GUARD,
    )
    .status;
    let err = std::fs::read_to_string(tmp.path().join("err")).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(status.success(), "exit {status}: {err}");
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, `herald dev` exports its spans over OTLP/HTTP
/// (protobuf) under its service name: the receiver here decodes the real export requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_set() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use std::sync::{Arc, Mutex};

    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let receiver = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value.clone())
                            .map(|v| format!("{:?}", v.value))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                seen.lock().unwrap().push((service.clone(), span.name));
                            }
                        }
                    }
                    ""
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let tmp = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let child = std::process::Command::new(support::BIN)
        .args(["dev", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "herald-under-test")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = support::Owned::new(child);
    let url = format!("http://127.0.0.1:{port}");
    let http = support::http();
    let started = std::time::Instant::now();
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < support::READY_GUARD,
            "herald dev did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let r = http
        .post(format!("{url}/v1/notifications"))
        .json(&serde_json::json!({"recipients": {"users": ["ann"]}, "event_type": "t", "source": "otel-test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The batch processor exports every 100 ms; SIGTERM flushes the rest.
    let waited = std::time::Instant::now();
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|(_, name)| name == "append")
    {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(30),
            "no append span exported: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let status = support::terminate(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().any(|(_, name)| name == "request"),
        "the HTTP request span: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|(service, _)| service.contains("herald-under-test")),
        "{seen:?}"
    );
}

/// `herald dev` says where its demo page is; its log (stderr, not a terminal here) has no
/// colour codes; and accepting a notification writes no info line per notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_the_demo_url_and_logs_plainly_without_a_line_per_notification() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut dev = Dev::start(&data).await;
    let url = dev.url();
    for i in 0..3 {
        let out = herald(&[
            "produce",
            "--url",
            &url,
            "--to",
            "alice",
            "--type",
            "t",
            "--key",
            &format!("k{i}"),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    dev.terminate();
    // Dev::start logs at RUST_LOG=info to DATA_DIR.log.
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.contains(&format!("demo inbox at {url}/")),
        "no demo URL in:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    assert!(log.contains("INFO"), "info lines are there:\n{log}");
    assert!(
        !log.contains("notification accepted"),
        "a line per notification at info:\n{log}"
    );
}

/// A server that accepted the connection and never answers: `produce` and `audit --url` give
/// up after `--timeout-secs` with a message, instead of waiting forever.
#[test]
fn a_server_that_never_answers_is_given_up_on() {
    // The kernel accepts connections into the backlog; nothing ever reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    for args in [
        vec![
            "produce",
            "--url",
            &url,
            "--timeout-secs",
            "1",
            "--to",
            "a",
            "--type",
            "t",
        ],
        vec!["audit", "a", "--url", &url, "--timeout-secs", "1"],
    ] {
        let out = herald(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("cannot reach Herald"), "{args:?}: {err}");
        assert!(err.contains("timed out"), "{args:?}: {err}");
    }
    drop(silent);
}
