//! A throwaway PostgreSQL for tests (feature `testing`): initdb and pg_ctl from Debian's
//! `postgresql` package on a temp dir and a free port, one server per test process, stopped by
//! a watchdog when the process exits; a fresh database per call to [`TestDb::new`].
//!
//! Without PostgreSQL installed, [`TestDb::new`] prints why and returns `None` (tests then
//! skip), except under CI=true, where it panics (`.ci/run` installs PostgreSQL).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

struct Server {
    port: u16,
    _dir: tempfile::TempDir,
}

fn pg_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("HERALD_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

fn as_postgres(bin: &std::path::Path, tool: &str) -> Command {
    if is_root() {
        // initdb refuses to run as root.
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn start() -> Result<Server, String> {
    let bin = pg_bin().ok_or("PostgreSQL is not installed (apt-get install postgresql)")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status();
    let data = dir.path().join("data");
    let out = as_postgres(&bin, "initdb")
        .args(["-D"])
        .arg(&data)
        .args(["-A", "trust", "-U", "herald", "--no-sync"])
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
        dir.path().display()
    );
    let out = as_postgres(&bin, "pg_ctl")
        .args(["-D"])
        .arg(&data)
        .args(["-o", &opts, "-l"])
        .arg(dir.path().join("log"))
        .args(["-w", "start"])
        .output()
        .map_err(|e| format!("pg_ctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Stop the server when this test process is gone, however it ends. The watchdog runs as
    // this process's user (so it may probe it) and stops the server as its owner.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {sudo}{pgctl} -D {data} -m immediate stop >/dev/null 2>&1",
        pid = std::process::id(),
        sudo = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        },
        pgctl = bin.join("pg_ctl").display(),
        data = data.display(),
    );
    Command::new("sh")
        .args(["-c", &stop])
        .spawn()
        .map_err(|e| format!("watchdog: {e}"))?;
    Ok(Server { port, _dir: dir })
}

fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER.get_or_init(start) {
        Ok(s) => Some(s),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("PostgreSQL contract tests cannot run in CI: {why}")
        }
        Err(why) => {
            println!("SKIPPED PostgreSQL contract tests: {why}");
            None
        }
    }
}

/// A fresh database on the shared server.
pub struct TestDb {
    pub url: String,
}

impl TestDb {
    /// A fresh database on this process's throwaway server.
    pub fn new() -> Option<TestDb> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server = server()?;
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = format!("postgres://herald@127.0.0.1:{}/postgres", server.port);
        let create = format!("CREATE DATABASE {name}");
        // The sync client runs its own runtime: keep it off the test's runtime threads.
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls)
                .expect("connect to the test server");
            c.batch_execute(&create).expect("create database");
        })
        .join()
        .unwrap();
        Some(TestDb {
            url: format!("postgres://herald@127.0.0.1:{}/{name}", server.port),
        })
    }
}
