//! The suite's section of docs/benchmarks.md and its plots ([`plot`]). Every table has a column
//! (or rows) for each target that the results hold, in [`Target::ALL`] order, so a baseline
//! Herald and the peers stand next to the current Herald wherever they were measured; what the
//! JetStream peer is and how each scenario maps onto it is in [`jetstream`].

mod jetstream;
mod plot;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

use crate::peers::Target;
use crate::suite::{Size, SuiteArgs};
use plot::bars;

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn package_version(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("peers/node_modules/{name}/package.json"));
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn runs(v: Option<&Value>) -> Vec<Value> {
    v.and_then(|v| v["runs"].as_array().cloned())
        .unwrap_or_default()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

fn find(runs: &[Value], pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    runs.iter().find(|r| pred(r))
}

/// The targets `runs` hold, in report order.
fn present(runs: &[Value]) -> Vec<&'static str> {
    Target::ALL
        .iter()
        .map(|t| t.name())
        .filter(|n| runs.iter().any(|r| r["target"] == *n))
        .collect()
}

/// Ratio columns worth a glance: the current Herald over its baseline, over Socket.IO and
/// over the durable peer with the same durability (fsync before the ack).
fn ratios(names: &[&str]) -> Vec<(&'static str, &'static str)> {
    [
        ("Herald", "Herald (before)"),
        ("Herald", "Socket.IO"),
        ("Herald", "JetStream (fsync always)"),
    ]
    .into_iter()
    .filter(|(a, b)| names.contains(a) && names.contains(b))
    .collect()
}

/// `| a | b |` header and its alignment row: numbers right-aligned, the first column left
/// unless `numeric_first`.
fn header(cols: &[String], numeric_first: bool) -> String {
    let first = if numeric_first { "---:" } else { "---" };
    let mut s = format!("| {} |\n|{first}|", cols.join(" | "));
    for _ in 1..cols.len() {
        s.push_str("---:|");
    }
    s.push('\n');
    s
}

pub fn write(args: &SuiteArgs, results: &BTreeMap<String, Value>) -> anyhow::Result<()> {
    let images = args
        .doc
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("images");
    std::fs::create_dir_all(&images)?;
    let mut md = environment(args);
    let all: Vec<Value> = results
        .iter()
        .flat_map(|(k, v)| match k.as_str() {
            "ingest" => runs_of_ingest(v),
            _ => runs(Some(v)),
        })
        .collect();
    let js = jetstream::present(&present(&all));
    if js {
        md.push_str(&jetstream::setup(args));
    }
    idle(&mut md, &images, &runs(results.get("idle")))?;
    fanout(&mut md, &images, &runs(results.get("fanout")))?;
    latency(&mut md, &images, &runs(results.get("latency")))?;
    resume(&mut md, &images, &runs(results.get("resume")))?;
    if let Some(ing) = results.get("ingest") {
        ingest(&mut md, ing);
    }
    crate::replace_section(&args.doc, "suite", &md)
        .with_context(|| format!("updating {}", args.doc.display()))
}

fn environment(args: &SuiteArgs) -> String {
    let size = match args.size {
        Size::Smoke => "smoke",
        Size::Small => "small",
        Size::Large => "large",
    };
    let mut flags = String::new();
    if let Some(b) = &args.baseline {
        flags.push_str(&format!(" --baseline {}", b.display()));
    }
    if let Some(n) = &args.nats_server {
        flags.push_str(&format!(" --nats-server {}", n.display()));
    }
    if !args.targets.is_empty() {
        flags.push_str(&format!(" --targets {}", args.targets.join(",")));
    }
    let mut md = format!(
        "Command: `cargo build --release -p herald && cargo run --release -p herald-bench -- suite --size {size}{flags} --report` \
         (raw results: `target/bench/suite-*.json`).\n\n\
         Environment: {} cores, {}; rustc {}; Node.js {}; socket.io {}, ws {}. Herald runs `herald dev` \
         (embedded storage, fsync on every commit: a notification is durable before its 202). The Node \
         peers (Socket.IO, ws) keep nothing: a publish is an in-memory broadcast, and a Socket.IO backlog lives in the server's \
         memory for 2 minutes. Every client is a Rust tokio task in one load-generator process on \
         loopback (sources 127.0.0.1–4); Herald clients acknowledge every {} notifications or after {} ms idle.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        command_output("uname", &["-sr"]),
        command_output("rustc", &["--version"]).trim_start_matches("rustc "),
        command_output("node", &["--version"]),
        package_version("socket.io"),
        package_version("ws"),
        crate::peers::ACK_EVERY,
        crate::peers::ACK_IDLE.as_millis(),
    );
    if let Some(b) = &args.baseline {
        md.push_str(&format!(
            "\n**Herald (before)** is an older build (`{}`, {}), run exactly as Herald (`herald dev`, \
             same flags) and driven by the same client code, in the same run: the before/after pairs \
             below are measured minutes apart on the same machine.\n",
            b.display(),
            command_output(&b.display().to_string(), &["--version"]),
        ));
    }
    md
}

fn idle(md: &mut String, images: &Path, idle: &[Value]) -> anyhow::Result<()> {
    if idle.is_empty() {
        return Ok(());
    }
    let names = present(idle);
    let mut cols = vec!["connections".to_owned()];
    cols.extend(names.iter().map(|n| n.to_string()));
    cols.push("kernel TCP per server socket (Herald)".into());
    md.push_str("\n### Idle connections: server memory per connection\n\n");
    md.push_str(&header(&cols, true));
    let mut sizes: Vec<u64> = idle
        .iter()
        .filter_map(|r| r["connections"].as_u64())
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut series: Vec<(String, Vec<f64>)> =
        names.iter().map(|n| (n.to_string(), vec![])).collect();
    for n in &sizes {
        let mut row = format!("| {n} |");
        for (i, name) in names.iter().enumerate() {
            let b = find(idle, |r| {
                r["connections"].as_u64() == Some(*n) && r["target"] == *name
            })
            .map_or(0.0, |r| f(r, "rss_bytes_per_connection"));
            series[i].1.push(b / 1024.0);
            row.push_str(&format!(" {:.1} KiB |", b / 1024.0));
        }
        let k = find(idle, |r| {
            r["connections"].as_u64() == Some(*n) && r["target"] == "Herald"
        })
        .map_or(0.0, |r| f(r, "kernel_tcp_bytes_per_connection"));
        row.push_str(&format!(" {k:.0} B |\n"));
        md.push_str(&row);
    }
    let cats: Vec<String> = sizes.iter().map(|n| format!("{n} connections")).collect();
    bars(
        images,
        "bench-idle.svg",
        "Server RSS per idle connection",
        "KiB per connection",
        &cats,
        &series,
    )?;
    md.push_str("\n![idle memory](images/bench-idle.svg)\n\nRSS growth of the server process from before the first connection to 2 s after the last, divided by the connections. Herald's connections are authenticated (JWT), said `hello` and got `session` and `replayed`; Socket.IO's completed the Engine.IO handshake and namespace CONNECT.");
    if jetstream::present(&names) {
        md.push_str(jetstream::IDLE);
    }
    md.push_str(" This machine's hard descriptor limit is 20,000 per process and cannot be raised in its container, so 25k and 50k connections cannot be opened here: the largest run is 18,000.\n");
    Ok(())
}

/// A table of one row per fanout mode and one column per target, each cell from that run (`–`
/// where there is none).
fn mode_table(
    md: &mut String,
    fan: &[Value],
    names: &[&str],
    modes: &[&str],
    cell: impl Fn(&Value) -> Option<String>,
) {
    let mut cols = vec!["mode".to_owned()];
    cols.extend(names.iter().map(|n| n.to_string()));
    md.push_str(&header(&cols, false));
    for m in modes {
        let mut row = format!("| {m} |");
        for name in names {
            let c = find(fan, |r| r["mode"] == *m && r["target"] == *name)
                .and_then(&cell)
                .unwrap_or_else(|| "–".to_owned());
            row.push_str(&format!(" {c} |"));
        }
        row.push('\n');
        md.push_str(&row);
    }
}

fn fanout(md: &mut String, images: &Path, fan: &[Value]) -> anyhow::Result<()> {
    if fan.is_empty() {
        return Ok(());
    }
    let names = present(fan);
    let ratio_cols = ratios(&names);
    let mut cols = vec!["mode".to_owned()];
    cols.extend(names.iter().map(|n| n.to_string()));
    cols.extend(ratio_cols.iter().map(|(a, b)| format!("{a} / {b}")));
    md.push_str("\n### Fanout throughput: messages delivered per second at the clients\n\n");
    md.push_str(&header(&cols, false));
    let modes = ["users", "groups", "everyone"];
    let mut series: Vec<(String, Vec<f64>)> =
        names.iter().map(|n| (n.to_string(), vec![])).collect();
    let value = |m: &str, name: &str| {
        find(fan, |r| r["mode"] == m && r["target"] == name)
            .map_or(0.0, |r| f(r, "deliveries_per_s"))
    };
    for m in modes {
        let mut row = format!("| {m} |");
        for (i, name) in names.iter().enumerate() {
            let v = value(m, name);
            series[i].1.push(v);
            row.push_str(&format!(" {v:.0} |"));
        }
        for (a, b) in &ratio_cols {
            row.push_str(&format!(" {:.2} |", value(m, a) / value(m, b).max(1.0)));
        }
        row.push('\n');
        md.push_str(&row);
    }
    md.push_str("\nServer CPU per 1,000 deliveries (user + system time of the server process, all threads, from the first publish to the last delivery):\n\n");
    mode_table(md, fan, &names, &modes, |r| {
        let (cpu, d) = (r["server_cpu_seconds"].as_f64()?, f(r, "deliveries"));
        Some(format!("{:.0} ms", cpu * 1000.0 / d.max(1.0) * 1000.0))
    });
    if fan
        .iter()
        .any(|r| r.get("server_cpu_seconds_settled").is_some())
    {
        md.push_str("\nThe same, counted until the server is idle again (under 3% of a core for 100 ms, at most 15 s after the last delivery): everything the deliveries cost, including work done after the last one arrived (Herald's inbox projection and the devices' ACK events):\n\n");
        mode_table(md, fan, &names, &modes, |r| {
            let (cpu, d) = (
                r["server_cpu_seconds_settled"].as_f64()?,
                f(r, "deliveries"),
            );
            Some(format!("{:.0} ms", cpu * 1000.0 / d.max(1.0) * 1000.0))
        });
    }
    let r0 = &fan[0];
    let rounds = r0["rounds_deliveries_per_s"].as_array().map_or(1, Vec::len);
    if rounds > 1 {
        md.push_str(&format!(
            "\nEach round's deliveries per second (the rows above are the median round; CPU is the median of its own {rounds} rounds):\n\n"
        ));
        mode_table(md, fan, &names, &modes, |r| {
            let v = r["rounds_deliveries_per_s"].as_array()?;
            Some(
                v.iter()
                    .filter_map(Value::as_f64)
                    .map(|x| format!("{:.1}k", x / 1000.0))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        });
    }
    md.push_str(&format!(
        "\n![fanout](images/bench-fanout.svg)\n\n{} connected clients (one per user, users in {} groups); `users`: each publish to one user; `groups`: to one group; `everyone`: to all. Time from the first publish to the last delivery; publishes to Herald and the Node peers are HTTP POSTs, {} in flight. {}",
        r0["clients"],
        r0["groups"].as_u64().unwrap_or(10),
        crate::suite::MAX_PUBLISHES_IN_FLIGHT,
        if rounds > 1 {
            format!("{rounds} rounds, each taking every target in turn (one server start and 1,000 connections per target and round): one mode's run lasts a second or two, so a single sample is mostly this machine's noise (`rounds_deliveries_per_s` and `rounds_server_cpu_seconds` in the JSON).")
        } else {
            "One round.".to_owned()
        }
    ));
    if jetstream::present(&names) {
        md.push_str(&jetstream::fanout());
    }
    md.push('\n');
    bars(
        images,
        "bench-fanout.svg",
        "Fanout: deliveries per second",
        "messages/s",
        &modes.map(String::from),
        &series,
    )
}

fn latency(md: &mut String, images: &Path, lat: &[Value]) -> anyhow::Result<()> {
    if lat.is_empty() {
        return Ok(());
    }
    md.push_str("\n### End-to-end latency: publish → client receive, at fixed offered rates\n\n| target | offered/s | achieved/s | p50 | p99 | p99.9 | max | server CPU | disk fdatasync p99 / max |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in lat {
        let behind = &r["fell_behind"];
        if !behind.is_null() {
            md.push_str(&format!(
                "| {} | {} | {:.0} | fell behind: a client had {} of its {} messages {} s after the publishes began; higher rates not run | | | | | |\n",
                r["target"].as_str().unwrap_or("?"),
                r["rate"],
                f(r, "achieved_publish_rate"),
                behind["a_client_received"],
                behind["of"],
                behind["timeout_s"],
            ));
            continue;
        }
        let l = &r["latency"];
        let cpu = match (r["server_cpu_seconds"].as_f64(), r["seconds"].as_f64()) {
            (Some(c), Some(s)) if s > 0.0 => format!("{:.2} cores", c / s),
            _ => "–".into(),
        };
        // Runs from before the probe have no disk figures.
        let d = &r["disk_fdatasync"];
        let disk = match (d["p99_ms"].as_f64(), d["max_ms"].as_f64()) {
            (Some(p99), Some(max)) => format!("{p99:.1} / {max:.1} ms"),
            _ => "–".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {cpu} | {disk} |\n",
            r["target"].as_str().unwrap_or("?"),
            r["rate"],
            f(r, "achieved_publish_rate"),
            f(l, "p50_ms"),
            f(l, "p99_ms"),
            f(l, "p999_ms"),
            f(l, "max_ms")
        ));
    }
    let names = present(lat);
    let mut rates: Vec<u64> = lat.iter().filter_map(|r| r["rate"].as_u64()).collect();
    rates.sort_unstable();
    rates.dedup();
    let cats: Vec<String> = rates.iter().map(|r| format!("{r}/s")).collect();
    for (file, key, title) in [
        ("bench-latency.svg", "p99_ms", "End-to-end latency, p99"),
        ("bench-latency-p50.svg", "p50_ms", "End-to-end latency, p50"),
    ] {
        let series: Vec<(String, Vec<f64>)> = names
            .iter()
            .map(|name| {
                let v = rates
                    .iter()
                    .map(|rate| {
                        find(lat, |r| {
                            r["rate"].as_u64() == Some(*rate) && r["target"] == *name
                        })
                        .map_or(0.0, |r| f(&r["latency"], key))
                    })
                    .collect();
                (name.to_string(), v)
            })
            .collect();
        bars(images, file, title, "ms", &cats, &series)?;
    }
    md.push_str("\n![latency p99](images/bench-latency.svg)\n![latency p50](images/bench-latency-p50.svg)\n\nOpen loop: message i is due at start + i/rate and stamped with that due time, so a server that falls behind shows as latency rather than as a lower rate. Each message goes to one of the connected users in turn. Server CPU: the server process's CPU time over the run (first due time to last receipt) divided by its length; this machine has 2 cores, shared with the load generator. Disk fdatasync: during each run the harness overwrites 4 KiB of a file of its own and fdatasyncs it every 10 ms, timed (what the disk did meanwhile: the durable targets wait for the same disk before they answer; an idle loop of these on this machine saw p99.9 30 ms and a 224 ms maximum). A target whose clients have not received everything two minutes after the publishes began fell behind at that rate: the table says so, it has no bar there, and its higher rates are not run.");
    if jetstream::present(&names) {
        md.push_str(&jetstream::latency());
    }
    md.push('\n');
    Ok(())
}

fn resume(md: &mut String, images: &Path, res: &[Value]) -> anyhow::Result<()> {
    if res.is_empty() {
        return Ok(());
    }
    let names = present(res);
    let mut cols = vec!["backlog".to_owned()];
    cols.extend(names.iter().map(|n| match *n {
        "Socket.IO" => "Socket.IO (connection state recovery)".to_owned(),
        n => n.to_owned(),
    }));
    md.push_str("\n### Resume: a device reconnects to a backlog\n\n");
    md.push_str(&header(&cols, true));
    let mut backlogs: Vec<u64> = res.iter().filter_map(|r| r["backlog"].as_u64()).collect();
    backlogs.sort_unstable();
    backlogs.dedup();
    let mut series: Vec<(String, Vec<f64>)> =
        names.iter().map(|n| (n.to_string(), vec![])).collect();
    for b in &backlogs {
        let mut row = format!("| {b} |");
        for (i, name) in names.iter().enumerate() {
            let s = find(res, |r| {
                r["backlog"].as_u64() == Some(*b) && r["target"] == *name
            })
            .map_or(0.0, |r| f(r, "seconds"));
            series[i].1.push(s * 1000.0);
            row.push_str(&format!(" {:.0} ms |", s * 1000.0));
        }
        md.push_str(&row);
        md.push('\n');
    }
    let cats: Vec<String> = backlogs.iter().map(|b| format!("{b} missed")).collect();
    bars(
        images,
        "bench-resume.svg",
        "Time to receive the whole backlog after reconnecting",
        "ms",
        &cats,
        &series,
    )?;
    md.push_str("\n![resume](images/bench-resume.svg)\n\nFrom the start of the reconnect to the last backlog message; below 100k, the median of five rounds that take every target in turn (one round at the smoke size; `rounds_seconds` in the JSON holds each round, in order). Herald replays from the durable inbox projection (anything not acknowledged, however old, across restarts), acknowledged as it arrives; Socket.IO replays from its in-memory buffer, which holds missed packets for `maxDisconnectionDuration` (2 minutes here) and is lost with the process.");
    if jetstream::present(&names) {
        md.push_str(jetstream::RESUME);
    }
    let extra: Vec<String> = res
        .iter()
        .filter(|r| r["extra_messages"].as_u64().is_some_and(|e| e > 0))
        .map(|r| {
            format!(
                "{} {} at {}",
                r["target"].as_str().unwrap_or("?"),
                r["extra_messages"],
                r["backlog"]
            )
        })
        .collect();
    if extra.is_empty() {
        md.push_str(" Nothing beyond the backlog arrived in the 300 ms after it.");
    } else {
        md.push_str(&format!(
            " Messages beyond the backlog, summed over the rounds (redeliveries: a round's time ends early by as many; `rounds_extra_messages` in the JSON says which round): {}.",
            extra.join(", ")
        ));
    }
    md.push('\n');
    Ok(())
}

/// The ingest's runs. Results written before the ingest had one run per target were Herald's
/// alone, flat.
fn runs_of_ingest(ing: &Value) -> Vec<Value> {
    match ing["runs"].as_array() {
        Some(r) => r.clone(),
        None => {
            let mut r = ing.clone();
            r["target"] = json!("Herald");
            vec![r]
        }
    }
}

fn ingest(md: &mut String, ing: &Value) {
    let runs = runs_of_ingest(ing);
    let raw = f(ing, "raw_sqlite_records_per_s");
    let n = f(ing, "requests").max(1.0);
    let batch = ing["batch"].as_u64().unwrap_or(crate::suite::BATCH as u64);
    let (in_flight, batches) = (
        crate::suite::MAX_PUBLISHES_IN_FLIGHT,
        crate::suite::BATCHES_IN_FLIGHT,
    );
    // Server CPU per accepted message, in µs.
    let cpu = |r: &Value, k: &str| {
        r[k].as_f64()
            .map_or("–".to_owned(), |c| format!("{:.0} µs", c / n * 1e6))
    };
    md.push_str(&format!(
        "\n### Durable ingest and projection rebuild\n\n| what | per second | vs raw SQLite | server CPU per message |\n|---|---:|---:|---:|\n\
         | raw SQLite inserts (WAL, synchronous=FULL, commit per 1000 rows), same run | {raw:.0} | 1.00 | |\n"
    ));
    // Results written before the floor was measured have none.
    let floor = &ing["http_floor"];
    if floor.is_object() {
        md.push_str(&format!(
            "| HTTP floor: the same single requests answered 202 by a server that parses them and stores nothing | {:.0} | {:.3} | {} |\n\
             | HTTP floor: the same batch requests | {:.0} | {:.3} | {} |\n",
            f(floor, "accepted_per_s"),
            f(floor, "ratio"),
            cpu(floor, "server_cpu_seconds"),
            f(floor, "accepted_batched_per_s"),
            f(floor, "batched_ratio"),
            cpu(floor, "batched_server_cpu_seconds"),
        ));
    }
    let mut equal = vec![];
    for r in &runs {
        let name = r["target"].as_str().unwrap_or("?");
        if jetstream::NAMES.contains(&name) {
            md.push_str(&jetstream::ingest_rows(
                name,
                (
                    f(r, "accepted_per_s"),
                    f(r, "ratio"),
                    cpu(r, "server_cpu_seconds"),
                ),
                (
                    f(r, "accepted_batched_per_s"),
                    f(r, "batched_ratio"),
                    cpu(r, "batched_server_cpu_seconds"),
                ),
            ));
            continue;
        }
        md.push_str(&format!(
            "| {name}: `POST /v1/notifications` answered 202 ({in_flight} in flight, one recipient each) | {:.0} | {:.3} | {} |\n",
            f(r, "accepted_per_s"),
            f(r, "ratio"),
            cpu(r, "server_cpu_seconds"),
        ));
        match r["accepted_batched_per_s"].as_f64() {
            Some(b) => md.push_str(&format!(
                "| {name}: `POST /v1/notifications/batch`, {batch} per request ({batches} requests in flight) | {b:.0} | {:.3} | {} |\n",
                f(r, "batched_ratio"),
                cpu(r, "batched_server_cpu_seconds"),
            )),
            None => md.push_str(&format!(
                "| {name}: `POST /v1/notifications/batch` | (not in this build) | | |\n"
            )),
        }
        // Results written before the accept path was measured alone have none.
        let alone = &r["accept_path_alone"];
        if alone.is_object() {
            md.push_str(&format!(
                "| {name} without its projector (`--projector false`): the same single requests | {:.0} | {:.3} | {} |\n\
                 | {name} without its projector: the same batch requests | {:.0} | {:.3} | {} |\n",
                f(alone, "accepted_per_s"),
                f(alone, "ratio"),
                cpu(alone, "server_cpu_seconds"),
                f(alone, "accepted_batched_per_s"),
                f(alone, "batched_ratio"),
                cpu(alone, "batched_server_cpu_seconds"),
            ));
        }
        md.push_str(&format!(
            "| {name}: `herald replay` rebuilding the projection ({} records) | {:.0} | | |\n",
            r["replay_records"],
            f(r, "replay_records_per_s"),
        ));
        equal.push(format!("{name} {}", r["replay_equal"]));
    }
    md.push_str(&format!(
        "\n{n} messages per measurement, one recipient each. The HTTP floor is `herald-bench http-floor` (its own process): Herald's server loop (`herald_gateway::serve`, hyper's HTTP/1.1) and the same client, each body parsed as JSON and answered with a body of Herald's shape, nothing stored or checked: about the most a server answering these requests one by one over HTTP/1.1 reaches here with this client, which shares the two cores. Server CPU: the server process's CPU time during the measurement (Herald's includes its projector, which works on while the requests come in) per message. Without its projector: a second server of the same build started with `--projector false`, the same requests: the accept path alone (HTTP, the request's record, the log's commit), so the gap to the rows above is what the projector working beside it costs on these two cores. \
         The rebuild runs once the live projector has applied the whole log (the suite reads both files' offsets; `projector_caught_up_after_s` in the JSON), so it does not share the CPU with the live projector's backlog. \
         Targets (issue 11): ingest ≥ 0.5 of raw with the batch endpoint and ≥ 0.15 with single requests; rebuild ≥ 250k records/s. The rebuilt projection equals the live one: {}.\n",
        equal.join(", ")
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that fell behind at a rate gets a row that says so instead of percentiles of
    /// the messages that did arrive; the other rows keep theirs, and the disk's column.
    #[test]
    fn a_latency_run_that_fell_behind_is_reported_as_such() {
        let runs = vec![
            json!({"target": "Herald", "rate": 1000, "achieved_publish_rate": 1000.0,
                   "seconds": 10.0, "server_cpu_seconds": 8.0,
                   "latency": {"p50_ms": 4.0, "p99_ms": 9.5, "p999_ms": 20.0, "max_ms": 30.0},
                   "disk_fdatasync": {"p99_ms": 1.5, "max_ms": 40.0}}),
            json!({"target": "JetStream (fsync always)", "rate": 10000,
                   "achieved_publish_rate": 900.0,
                   "fell_behind": {"timeout_s": 120, "a_client_received": 97, "of": 100}}),
        ];
        let images = tempfile::tempdir().unwrap();
        let mut md = String::new();
        latency(&mut md, images.path(), &runs).unwrap();
        assert!(
            md.contains("| Herald | 1000 | 1000 | 4.0 ms | 9.5 ms | 20.0 ms | 30.0 ms | 0.80 cores | 1.5 / 40.0 ms |"),
            "{md}"
        );
        assert!(
            md.contains("| JetStream (fsync always) | 10000 | 900 | fell behind: a client had 97 of its 100 messages 120 s after the publishes began"),
            "{md}"
        );
        assert!(
            !md.contains("| JetStream (fsync always) | 10000 | 900 | 0.0 ms"),
            "{md}"
        );
    }

    /// The HTTP floor gets its two rows, as fractions of raw SQLite with its CPU per message;
    /// results from before it was measured get none.
    #[test]
    fn the_http_floor_is_reported_next_to_raw_sqlite() {
        let run = json!({"target": "Herald", "accepted_per_s": 15000.0, "ratio": 0.05,
                         "accepted_batched_per_s": 100000.0, "batched_ratio": 0.333,
                         "server_cpu_seconds": 9.0, "batched_server_cpu_seconds": 1.3,
                         "replay_records": 400000, "replay_records_per_s": 300000.0,
                         "replay_equal": true});
        let mut ing = json!({"requests": 100000, "raw_sqlite_records_per_s": 300000.0,
                             "batch": 100, "runs": [run]});
        let mut md = String::new();
        ingest(&mut md, &ing);
        assert!(!md.contains("HTTP floor:"), "{md}");
        ing["http_floor"] = json!({"accepted_per_s": 33000.0, "ratio": 0.11,
                                   "accepted_batched_per_s": 270000.0, "batched_ratio": 0.9,
                                   "server_cpu_seconds": 2.0, "batched_server_cpu_seconds": 0.2});
        let mut md = String::new();
        ingest(&mut md, &ing);
        assert!(
            md.contains("stores nothing | 33000 | 0.110 | 20 µs |"),
            "{md}"
        );
        assert!(
            md.contains("| HTTP floor: the same batch requests | 270000 | 0.900 | 2 µs |"),
            "{md}"
        );
        assert!(
            md.contains(
                "answered 202 (256 in flight, one recipient each) | 15000 | 0.050 | 90 µs |"
            ),
            "{md}"
        );
    }

    /// Herald without its projector gets its two rows under Herald's own; results from before
    /// it was measured get none.
    #[test]
    fn the_accept_path_alone_is_reported_under_herald() {
        let mut run = json!({"target": "Herald", "accepted_per_s": 15000.0, "ratio": 0.05,
                             "accepted_batched_per_s": 100000.0, "batched_ratio": 0.333,
                             "server_cpu_seconds": 9.0, "batched_server_cpu_seconds": 1.3,
                             "replay_records": 400000, "replay_records_per_s": 300000.0,
                             "replay_equal": true});
        let ing = |run: &Value| {
            let mut md = String::new();
            ingest(
                &mut md,
                &json!({"requests": 100000, "raw_sqlite_records_per_s": 300000.0,
                        "batch": 100, "runs": [run]}),
            );
            md
        };
        assert!(!ing(&run).contains("without its projector"));
        run["accept_path_alone"] = json!({"accepted_per_s": 24000.0, "ratio": 0.08,
                                          "accepted_batched_per_s": 150000.0,
                                          "batched_ratio": 0.5, "server_cpu_seconds": 3.6,
                                          "batched_server_cpu_seconds": 0.4});
        let md = ing(&run);
        assert!(
            md.contains("| Herald without its projector (`--projector false`): the same single requests | 24000 | 0.080 | 36 µs |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| Herald without its projector: the same batch requests | 150000 | 0.500 | 4 µs |"
            ),
            "{md}"
        );
        // Under Herald's batch row, above the rebuild.
        let (batch, alone, replay) = (
            md.find("| Herald: `POST /v1/notifications/batch`").unwrap(),
            md.find("| Herald without its projector: the same batch")
                .unwrap(),
            md.find("| Herald: `herald replay`").unwrap(),
        );
        assert!(batch < alone && alone < replay, "{md}");
    }
}
