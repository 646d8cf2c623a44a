//! `/readyz` and the request metrics, driven with `oneshot` over the real embedded log and
//! projection. This test binary installs the process's metrics recorder (one per process), so
//! its tests read what the gateway recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use herald_gateway::{AppState, AuthConfig, GatewayConfig, app};
use herald_ports::readiness::Report;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

mod common;

struct Env {
    _dir: tempfile::TempDir,
    state: AppState,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (ports, _, _) = common::embedded(dir.path()).await;
    let config = GatewayConfig {
        auth: AuthConfig {
            hs256_secret: Some(b"readyz-test".to_vec()),
            dev_login: true,
            open_producers: true,
            open_operators: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let state = AppState::start(ports, config, CancellationToken::new())
        .await
        .unwrap();
    Env { _dir: dir, state }
}

async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, String) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// Polls `/readyz` until it answers `want` (a hang guard of 60 s, not a timing assertion).
async fn readyz_until(state: &AppState, want: StatusCode) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = call(state, get("/readyz")).await;
        if status == want {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {want}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_hub_the_store_and_an_in_process_projector() {
    let mut env = env().await;
    // Without a projector: ready once the hub has its partitions and the store answers.
    let report = readyz_until(&env.state, StatusCode::OK).await;
    assert_eq!(report["ready"], true);
    assert_eq!(check(&report, "hub")["ok"], true);
    assert!(
        check(&report, "hub")["detail"]
            .as_str()
            .unwrap()
            .contains("0 records behind"),
        "{report}"
    );
    assert_eq!(check(&report, "projection")["ok"], true);
    // An in-process projector that is not ready makes the gateway not ready, and says why.
    let projector_ready = Arc::new(AtomicBool::new(false));
    let flag = projector_ready.clone();
    env.state.projector_readiness = Some(Arc::new(move || {
        let mut r = Report::new(Vec::new());
        let ok = flag.load(Ordering::SeqCst);
        r.push(
            "inbox",
            ok,
            if ok {
                "caught up"
            } else {
                "waiting for partitions"
            },
        );
        r
    }));
    let report = readyz_until(&env.state, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(report["ready"], false);
    assert_eq!(check(&report, "projector.inbox")["ok"], false);
    assert_eq!(
        check(&report, "projector.inbox")["detail"],
        "waiting for partitions"
    );
    assert_eq!(
        check(&report, "hub")["ok"],
        true,
        "only the projector fails"
    );
    projector_ready.store(true, Ordering::SeqCst);
    let report = readyz_until(&env.state, StatusCode::OK).await;
    assert_eq!(check(&report, "projector.inbox")["ok"], true);
    // /healthz is liveness only, and neither needs credentials.
    assert_eq!(call(&env.state, get("/healthz")).await.0, StatusCode::OK);
}

/// Every route is counted and timed under its template; a 404 under `unmatched`; a 429 also as
/// rate-limited. Histograms are exported with buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_counted_and_timed_under_its_template() {
    let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    for (name, buckets) in herald_ports::telemetry::HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full((*name).to_owned()),
                buckets,
            )
            .unwrap();
    }
    let prometheus = builder.install_recorder().unwrap();
    let mut env = env().await;
    // Three notifications (a batch of two, then one), then the producer waits about 1000 s
    // for the next.
    env.state.producers = Arc::new(herald_gateway::limits::RateLimits::new(0.001, 3.0));
    let body =
        json!({"recipients": {"users": ["alice"]}, "event_type": "e", "source": "s", "data": {}});
    let post = || {
        Request::post("/v1/notifications")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let batch = Request::post("/v1/notifications/batch")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"notifications": [body.clone(), body.clone()]}).to_string(),
        ))
        .unwrap();
    assert_eq!(call(&env.state, batch).await.0, StatusCode::ACCEPTED);
    assert_eq!(call(&env.state, post()).await.0, StatusCode::ACCEPTED);
    assert_eq!(
        call(&env.state, post()).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        call(&env.state, get("/v1/audit/someone-secret")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&env.state, get("/no/such/route")).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(call(&env.state, get("/readyz")).await.0.is_success());
    let text = prometheus.render();
    for want in [
        r#"herald_http_requests_total{route="/v1/notifications",method="POST",status="202"} 1"#,
        r#"herald_http_requests_total{route="/v1/notifications",method="POST",status="429"} 1"#,
        r#"herald_http_requests_total{route="/v1/audit/{id}",method="GET",status="200"} 1"#,
        r#"herald_http_requests_total{route="unmatched",method="GET",status="404"} 1"#,
        r#"herald_http_rate_limited_total{route="/v1/notifications"} 1"#,
        r#"herald_http_request_duration_seconds_bucket{route="/v1/audit/{id}",method="GET",le="10"} 1"#,
        r#"herald_http_request_duration_seconds_count{route="/readyz",method="GET"}"#,
        r#"herald_http_requests_total{route="/v1/notifications/batch",method="POST",status="202"} 1"#,
        r#"herald_notifications_accepted_total 3"#,
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    assert!(!text.contains("someone-secret"), "ids never become labels");
    assert!(!text.contains("quantile="), "no summaries:\n{text}");
}
