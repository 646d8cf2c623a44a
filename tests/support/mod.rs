//! Helpers for the process-level tests: start the real `herald` binary on a free port and a
//! temp data dir, talk to it over HTTP, kill it.
#![allow(dead_code)]

pub mod cluster;
pub mod exactly_once;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_herald");
/// Longest wait for a started process to answer: a hang guard, not a timing assertion.
pub const READY_GUARD: Duration = Duration::from_secs(60);

/// A port nothing listens on now, never handed out before in this test process.
///
/// The kernel picks the port; the tests of one binary run concurrently and start their
/// processes a while after picking, so two picks in a row could get the same port and one
/// process would fail to bind it (while the other's `/healthz` answered for it). Handing each
/// port out once rules that out.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Longest any one HTTP request of a test waits (reqwest has no timeout of its own): a hang
/// guard.
pub const HTTP_GUARD: Duration = Duration::from_secs(30);

/// An HTTP client whose requests give up after [`HTTP_GUARD`].
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_GUARD)
        .build()
        .expect("an HTTP client")
}

/// Runs the binary to completion.
pub fn herald(args: &[&str]) -> Output {
    herald_with_log("warn", args)
}

/// Runs the binary to completion with `RUST_LOG` at `level`.
pub fn herald_with_log(level: &str, args: &[&str]) -> Output {
    output_within(
        Command::new(BIN).args(args).env("RUST_LOG", level),
        COMMAND_GUARD,
    )
}

/// A child process that is killed when dropped: a test that fails (panics) leaves none of its
/// processes running to load the tests after it. A test process killed by a signal runs no
/// `Drop`: a watchdog ([`Owned::new`]) kills the child then.
pub struct Owned(Child);

impl Owned {
    /// Owns `child`, and starts a watchdog that kills it once this test process is gone
    /// ([`herald_kafka::testing::kill_when_gone`], as the test broker has).
    pub fn new(child: Child) -> Owned {
        if let Err(e) = herald_kafka::testing::kill_when_gone(child.id()) {
            eprintln!("{e}");
        }
        Owned(child)
    }
}

impl std::ops::Deref for Owned {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILL: no chance to flush or clean up.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Longest wait for a process to exit after SIGTERM: a hang guard, not a timing assertion (a
/// stopping projector waits up to 20 s for its stages, then up to 5 s for its runtime).
pub const STOP_GUARD: Duration = Duration::from_secs(90);
/// Longest a one-shot command (`replay`, `audit`, `produce`, the Python producer) may run: a
/// hang guard.
pub const COMMAND_GUARD: Duration = Duration::from_secs(300);

/// SIGTERM, then wait for the exit status (at most [`STOP_GUARD`]; past it the process is
/// killed and the test fails).
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    wait_within(child, STOP_GUARD, "exit after SIGTERM")
}

/// The exit status of `child`, waited for at most `guard`; past it the child is killed and the
/// test fails, saying it did not `what`.
pub fn wait_within(child: &mut Child, guard: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the herald process") {
            return status;
        }
        if started.elapsed() > guard {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {pid} did not {what} within {guard:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cmd`'s output, run to completion within `guard` (past it the command is killed and the
/// test fails).
pub fn output_within(cmd: &mut Command, guard: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let read = |mut pipe: Box<dyn Read + Send>| {
        let (bytes, read) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = pipe.read_to_end(&mut all);
            let _ = bytes.send(all);
        });
        read
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped")));
    let stderr = read(Box::new(child.stderr.take().expect("piped")));
    let what = format!("finish {:?}", cmd.get_program());
    let status = wait_within(&mut child, guard, &what);
    // A process it started may still hold the pipes: their output ends when that one exits.
    let rest = |pipe: std::sync::mpsc::Receiver<Vec<u8>>| {
        pipe.recv_timeout(STOP_GUARD).unwrap_or_else(|_| {
            panic!("{what}: it exited ({status}), and a process it started still holds its output")
        })
    };
    Output {
        status,
        stdout: rest(stdout),
        stderr: rest(stderr),
    }
}

/// How long a multi-process test may run before its [`Watchdog`] ends it (they take one or two
/// minutes here, under load too; size knobs add to it): a hang guard.
pub const WATCHDOG_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Ends the whole test process, saying where the test was, if the test has not dropped it
/// within its limit: a test that hangs fails with its place and its processes' logs rather
/// than holding a CI run until the run's own limit.
pub struct Watchdog {
    phase: std::sync::Arc<std::sync::Mutex<String>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    /// Watches `test` for `limit`; on expiry prints the tail of every `*.log` in `logs`.
    pub fn new(test: &str, limit: Duration, logs: &Path) -> Watchdog {
        use std::sync::atomic::Ordering;
        let phase = std::sync::Arc::new(std::sync::Mutex::new("starting".to_owned()));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, d, test, logs) = (
            phase.clone(),
            done.clone(),
            test.to_owned(),
            logs.to_owned(),
        );
        std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < limit {
                if d.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if d.load(Ordering::Relaxed) {
                return;
            }
            let at = p.lock().unwrap_or_else(|e| e.into_inner()).clone();
            // Straight to the process's stderr: the harness captures a test's prints and would
            // drop them with the process.
            let mut report = format!(
                "\nWATCHDOG: {test} still running after {limit:?}, at: {at}; ending the test \
                 process\n"
            );
            for e in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    report.push_str(&format!("== {} (last 40 lines)\n", path.display()));
                    for l in tail.into_iter().rev() {
                        report.push_str(l);
                        report.push('\n');
                    }
                }
            }
            // The test's own processes would outlive it and load the tests after it.
            let killed = kill_children();
            report.push_str(&format!("killed the test's child processes {killed:?}\n"));
            use std::io::Write;
            let _ = std::io::stderr().write_all(report.as_bytes());
            std::process::exit(101);
        });
        Watchdog { phase, done }
    }

    /// What the test does now (the watchdog's report names it).
    pub fn phase(&self, what: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = what.to_owned();
    }
}

/// SIGKILLs every process whose parent is this one; returns their pids.
fn kill_children() -> Vec<u32> {
    let me = std::process::id();
    let mut killed = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the command may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            killed.push(pid);
        }
    }
    killed
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The last 30 lines of the log `Dev::start_with` gives the process with `data_dir`.
fn log_tail(data_dir: &Path) -> String {
    let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A running `herald dev`.
pub struct Dev {
    /// Killed when the `Dev` is dropped.
    pub child: Owned,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl Dev {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts `herald dev` and waits until it answers /healthz.
    pub async fn start(data_dir: &Path) -> Dev {
        Dev::start_on(data_dir, free_port()).await
    }

    /// Starts `herald dev` on `port` (a restart keeps its clients' address).
    pub async fn start_on(data_dir: &Path, port: u16) -> Dev {
        Dev::start_with(data_dir, port, &[]).await
    }

    /// Starts `herald dev` on `port` with extra arguments.
    pub async fn start_with(data_dir: &Path, port: u16, extra: &[&str]) -> Dev {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn herald dev");
        let mut dev = Dev {
            child: Owned::new(child),
            port,
            data_dir: data_dir.to_owned(),
        };
        let client = http();
        let started = Instant::now();
        loop {
            // A process that exited (it could not bind its ports, say) is not ready, whoever
            // else answers on its port.
            if let Ok(Some(status)) = dev.child.try_wait() {
                panic!(
                    "herald dev exited ({status}) before it was ready; its log ends:\n{}",
                    log_tail(data_dir)
                );
            }
            if let Ok(r) = client.get(format!("{}/healthz", dev.url())).send().await
                && r.status().is_success()
            {
                return dev;
            }
            if started.elapsed() > READY_GUARD {
                panic!(
                    "herald dev did not become ready; its log ends:\n{}",
                    log_tail(data_dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }

    /// Waits until the projector has applied everything in the log.
    pub async fn caught_up(&self) {
        let started = Instant::now();
        loop {
            let status: Value = http()
                .get(format!("{}/v1/status", self.url()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let lag: u64 = ["fanout", "inbox"]
                .iter()
                .map(|s| status["stages"][s]["lag_records"].as_u64().unwrap())
                .sum();
            if lag == 0 {
                return;
            }
            assert!(
                started.elapsed() < READY_GUARD,
                "projector did not catch up: {status}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A token for `user` from the dev login.
    pub async fn token(&self, user: &str) -> String {
        let v: Value = http()
            .post(format!("{}/v1/dev/token", self.url()))
            .json(&serde_json::json!({"user_id": user}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().expect("dev token").to_owned()
    }

    /// Every notification id in `user`'s inbox, oldest first, with its seq.
    pub async fn inbox(&self, user: &str) -> (Vec<(String, u64)>, u64) {
        let client = http();
        let token = self.token(user).await;
        let mut out = Vec::new();
        let mut before: Option<u64> = None;
        let unread;
        loop {
            let mut url = format!("{}/v1/inbox?limit=1000", self.url());
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            let page: Value = client
                .get(url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for item in page["items"].as_array().unwrap() {
                out.push((
                    item["id"].as_str().unwrap().to_owned(),
                    item["seq"].as_u64().unwrap(),
                ));
            }
            match page["next_before"].as_u64() {
                Some(b) => before = Some(b),
                None => {
                    unread = page["unread_count"].as_u64().unwrap();
                    break;
                }
            }
        }
        out.reverse();
        (out, unread)
    }
}
