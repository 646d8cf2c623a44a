//! The OpenAPI document against the router, both ways: every route the sources of `src/routes/`
//! register is documented with each of its methods, and every documented
//! operation is answered by the real router (not its 404 / 405 fallbacks). And
//! `GET /v1/openapi.json` serves the document, as OpenAPI 3.1.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use herald_gateway::{AppState, AuthConfig, GatewayConfig, app};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

mod common;

/// `(METHOD, path)` of every `.route(...)` call in a source text, methods from the method
/// router chained in it (`get(..).put(..)`).
fn registered(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        let call = &rest[at + ".route(".len()..];
        // The call's text up to its closing parenthesis.
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in call.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = i;
                break;
            }
        }
        let call = &call[..end];
        let path = call
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("a route path in {call}"));
        for method in ["get", "post", "put", "delete", "patch"] {
            let mut from = 0;
            while let Some(i) = call[from..].find(&format!("{method}(")) {
                let i = from + i;
                let before = call[..i].chars().last();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    out.push((method.to_uppercase(), path.to_owned()));
                }
                from = i + 1;
            }
        }
        rest = &rest[at + 1..];
    }
    out
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

async fn state() -> (tempfile::TempDir, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let (ports, _, _) = common::embedded(dir.path()).await;
    let config = GatewayConfig {
        auth: AuthConfig {
            hs256_secret: Some(b"openapi-test".to_vec()),
            dev_login: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut state = AppState::start(ports, config, CancellationToken::new())
        .await
        .unwrap();
    state.metrics = Some(Arc::new(String::new));
    (dir, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let doc = serde_json::to_value(herald_gateway::routes::openapi::document()).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let documented = documented(&doc);

    // Every registration in the sources is documented.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: Vec<_> = std::fs::read_dir(src.join("routes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut routed = BTreeSet::new();
    for file in files {
        for route in registered(&std::fs::read_to_string(&file).unwrap()) {
            routed.insert(route);
        }
    }
    assert!(routed.len() > 20, "the scan found the routes: {routed:?}");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        unrouted.is_empty(),
        "documented but registered nowhere: {unrouted:?}"
    );

    // Every documented operation is answered by the router itself, not its fallbacks.
    let (_dir, state) = state().await;
    for (method, path) in &documented {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(&concrete)
            .body(Body::empty())
            .unwrap();
        let resp = app(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {concrete}"
        );
        assert!(
            !(status == StatusCode::NOT_FOUND && body["error"]["code"] == "not_found"),
            "{method} {concrete} is documented but not routed: {body}"
        );
    }

    // And the router serves the document.
    let resp = app(state)
        .oneshot(
            Request::get("/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let served: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(served, doc);
}

#[test]
fn the_route_scan_reads_chained_methods_and_multi_line_calls() {
    let src = r#"
        Router::new()
            .route("/a", get(get_a).put(put_a))
            .route(
                "/b/{x}",
                put(put_b).delete(delete_b),
            )
            .route("/c", post(|| async { asset("x", include_str!("y")) }))
    "#;
    let got: BTreeSet<_> = registered(src).into_iter().collect();
    let want: BTreeSet<(String, String)> = [
        ("GET", "/a"),
        ("PUT", "/a"),
        ("PUT", "/b/{x}"),
        ("DELETE", "/b/{x}"),
        ("POST", "/c"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}

/// No value matches two branches of a `oneOf` (strict validators refuse such a value): each
/// branch of each `oneOf` in the document has a type of its own.
#[test]
fn one_of_branches_do_not_overlap() {
    fn visit(v: &Value, at: &str, found: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(branches)) = map.get("oneOf") {
                    let mut types = BTreeSet::new();
                    for b in branches {
                        if let Some(t) = b.get("type") {
                            assert!(types.insert(t.to_string()), "{at}: two branches of {t}");
                        }
                    }
                    found.push(at.to_owned());
                }
                for (k, v) in map {
                    visit(v, &format!("{at}/{k}"), found);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    visit(v, &format!("{at}/{i}"), found);
                }
            }
            _ => {}
        }
    }
    let doc = serde_json::to_value(herald_gateway::routes::openapi::document()).unwrap();
    let mut found = Vec::new();
    visit(&doc, "", &mut found);
    assert!(
        found.iter().any(|at| at.contains("TimeInput")),
        "the times' oneOf was looked at: {found:?}"
    );
}
