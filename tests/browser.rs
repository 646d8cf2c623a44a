//! Browser end-to-end test: the demo inbox and /herald.js in real headless Chromium.
//!
//! Needs Debian's Chromium and `npm ci` in tests/browser (`.ci/run` installs both). Outside CI,
//! a machine without them skips with a printed reason; under CI=true that is a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("browser test cannot run in CI: {what} (.ci/run should have installed it)");
    }
    println!("SKIPPED browser end-to-end test: {what}");
}

#[test]
fn demo_inbox_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return missing(&format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return missing("no node");
    }
    let browser_dir = root.join("tests/browser");
    if !browser_dir.join("node_modules/playwright-core").exists() {
        return missing("tests/browser/node_modules missing (run npm ci in tests/browser)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let shots = root.join("target/browser");
    std::fs::create_dir_all(&shots).unwrap();
    let screenshot: PathBuf = shots.join("inbox.png");
    // The screenshots of each state (inbox-*.png) go to target/browser/images; with
    // HERALD_UPDATE_SCREENSHOTS=1 (`just screenshots`) to docs/images, which the README shows,
    // so a plain test run leaves the tracked images alone.
    let images = if std::env::var_os("HERALD_UPDATE_SCREENSHOTS").is_some() {
        root.join("docs/images")
    } else {
        shots.join("images")
    };
    std::fs::create_dir_all(&images).unwrap();
    let expected = [
        "empty", "loading", "error", "all", "unread", "archived", "offline", "mobile", "settings",
    ];
    for name in expected {
        let _ = std::fs::remove_file(images.join(format!("inbox-{name}.png")));
    }
    let out = support::output_within(
        Command::new("node")
            .arg(browser_dir.join("e2e.mjs"))
            .env("HERALD_BIN", support::BIN)
            .env("DATA_DIR", tmp.path().join("data"))
            .env("PORT", support::free_port().to_string())
            .env("SCREENSHOT", &screenshot)
            .env("SHOTS_DIR", &images)
            .env("CHROMIUM", &chromium),
        support::COMMAND_GUARD,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("e2e: passed"));
    for name in expected {
        let path = images.join(format!("inbox-{name}.png"));
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()))
            .len();
        assert!(
            size < 300_000,
            "{} is {size} bytes: keep screenshots small",
            path.display()
        );
    }
}
