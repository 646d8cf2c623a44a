//! The suite's section of docs/benchmarks.md and its plots (SVG, drawn with plotters).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::Value;

use crate::suite::{Size, SuiteArgs};

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

/// A grouped bar chart: one group per category, one bar per series.
fn bars(
    images: &Path,
    file: &str,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let path = images.join(file);
    let root = SVGBackend::new(&path, (860, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let width = series.len() as f64 + 1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..categories.len() as f64 * width, 0.0..max * 1.35)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (x / width).floor() as usize;
            let centre = i as f64 * width + width / 2.0;
            if (x - centre).abs() < 0.51 && i < categories.len() {
                categories[i].clone()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc(y_label)
        .draw()?;
    let colors = [
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ];
    for (s, (name, values)) in series.iter().enumerate() {
        let color = colors[s % colors.len()];
        chart
            .draw_series(values.iter().enumerate().map(|(c, v)| {
                let x0 = c as f64 * width + 0.5 + s as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.9, *v)], color.filled())
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
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

pub fn write(args: &SuiteArgs, results: &BTreeMap<String, Value>) -> anyhow::Result<()> {
    let images = args
        .doc
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("images");
    std::fs::create_dir_all(&images)?;
    let size = match args.size {
        Size::Smoke => "smoke",
        Size::Small => "small",
        Size::Large => "large",
    };
    let mut md = format!(
        "Command: `cargo build --release -p herald && cargo run --release -p herald-bench -- suite --size {size} --report` \
         (raw results: `target/bench/suite-*.json`).\n\n\
         Environment: {} cores, {}; rustc {}; Node.js {}; socket.io {}, ws {}. Herald runs `herald dev` \
         (embedded storage, fsync on every commit: a notification is durable before its 202). The peers \
         keep nothing: a publish is an in-memory broadcast, and a Socket.IO backlog lives in the server's \
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

    let idle = runs(results.get("idle"));
    if !idle.is_empty() {
        md.push_str("\n### Idle connections: server memory per connection\n\n| connections | Herald | Socket.IO | ws | kernel TCP per server socket (Herald) |\n|---:|---:|---:|---:|---:|\n");
        let mut sizes: Vec<u64> = idle
            .iter()
            .filter_map(|r| r["connections"].as_u64())
            .collect();
        sizes.dedup();
        let mut series: Vec<(String, Vec<f64>)> = crate::peers::Target::ALL
            .iter()
            .map(|t| (t.name().to_owned(), vec![]))
            .collect();
        for n in &sizes {
            let mut row = format!("| {n} |");
            for (i, t) in crate::peers::Target::ALL.iter().enumerate() {
                let r = find(&idle, |r| {
                    r["connections"].as_u64() == Some(*n) && r["target"] == t.name()
                });
                let b = r.map_or(0.0, |r| f(r, "rss_bytes_per_connection"));
                series[i].1.push(b / 1024.0);
                row.push_str(&format!(" {:.1} KiB |", b / 1024.0));
            }
            let k = find(&idle, |r| {
                r["connections"].as_u64() == Some(*n) && r["target"] == "Herald"
            })
            .map_or(0.0, |r| f(r, "kernel_tcp_bytes_per_connection"));
            row.push_str(&format!(" {k:.0} B |\n"));
            md.push_str(&row);
        }
        let cats: Vec<String> = sizes.iter().map(|n| format!("{n} connections")).collect();
        bars(
            &images,
            "bench-idle.svg",
            "Server RSS per idle connection",
            "KiB per connection",
            &cats,
            &series,
        )?;
        md.push_str("\n![idle memory](images/bench-idle.svg)\n\nRSS growth of the server process from before the first connection to 2 s after the last, divided by the connections. Herald's connections are authenticated (JWT), said `hello` and got `session` and `replayed`; Socket.IO's completed the Engine.IO handshake and namespace CONNECT. This machine's hard descriptor limit is 20,000 per process and cannot be raised in its container, so 25k and 50k connections cannot be opened here: the largest run is 18,000.\n");
    }

    let fan = runs(results.get("fanout"));
    if !fan.is_empty() {
        md.push_str("\n### Fanout throughput: messages delivered per second at the clients\n\n| mode | Herald | Socket.IO | ws | Herald / Socket.IO |\n|---|---:|---:|---:|---:|\n");
        let modes = ["users", "groups", "everyone"];
        let mut series: Vec<(String, Vec<f64>)> = crate::peers::Target::ALL
            .iter()
            .map(|t| (t.name().to_owned(), vec![]))
            .collect();
        for m in modes {
            let mut row = format!("| {m} |");
            let mut vals = vec![];
            for (i, t) in crate::peers::Target::ALL.iter().enumerate() {
                let v = find(&fan, |r| r["mode"] == m && r["target"] == t.name())
                    .map_or(0.0, |r| f(r, "deliveries_per_s"));
                series[i].1.push(v);
                vals.push(v);
                row.push_str(&format!(" {v:.0} |"));
            }
            row.push_str(&format!(" {:.2} |\n", vals[0] / vals[1].max(1.0)));
            md.push_str(&row);
        }
        let r0 = &fan[0];
        md.push_str(&format!(
            "\n![fanout](images/bench-fanout.svg)\n\n{} connected clients (one per user, users in {} groups); `users`: each publish to one user; `groups`: to one group; `everyone`: to all. Time from the first publish to the last delivery; publishes are HTTP POSTs, {} in flight.\n",
            r0["clients"], 10, crate::suite::MAX_PUBLISHES_IN_FLIGHT
        ));
        bars(
            &images,
            "bench-fanout.svg",
            "Fanout: deliveries per second",
            "messages/s",
            &modes.map(String::from),
            &series,
        )?;
    }

    let lat = runs(results.get("latency"));
    if !lat.is_empty() {
        md.push_str("\n### End-to-end latency: POST → client receive, at fixed offered rates\n\n| target | offered/s | achieved/s | p50 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|\n");
        let mut cats = vec![];
        let mut series: Vec<(String, Vec<f64>)> = vec![
            ("p50".into(), vec![]),
            ("p99".into(), vec![]),
            ("p99.9".into(), vec![]),
        ];
        for r in &lat {
            let l = &r["latency"];
            md.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |\n",
                r["target"].as_str().unwrap_or("?"),
                r["rate"],
                f(r, "achieved_publish_rate"),
                f(l, "p50_ms"),
                f(l, "p99_ms"),
                f(l, "p999_ms"),
                f(l, "max_ms")
            ));
            cats.push(format!(
                "{} {}/s",
                r["target"].as_str().unwrap_or("?"),
                r["rate"]
            ));
            series[0].1.push(f(l, "p50_ms"));
            series[1].1.push(f(l, "p99_ms"));
            series[2].1.push(f(l, "p999_ms"));
        }
        bars(
            &images,
            "bench-latency.svg",
            "End-to-end latency",
            "ms",
            &cats,
            &series,
        )?;
        md.push_str("\n![latency](images/bench-latency.svg)\n\nOpen loop: message i is due at start + i/rate and stamped with that due time, so a server that falls behind shows as latency rather than as a lower rate. Each message goes to one of the connected users in turn.\n");
    }

    let res = runs(results.get("resume"));
    if !res.is_empty() {
        md.push_str("\n### Resume: a device reconnects to a backlog\n\n| backlog | Herald | Socket.IO (connection state recovery) |\n|---:|---:|---:|\n");
        let mut backlogs: Vec<u64> = res.iter().filter_map(|r| r["backlog"].as_u64()).collect();
        backlogs.sort_unstable();
        backlogs.dedup();
        let mut series: Vec<(String, Vec<f64>)> =
            vec![("Herald".into(), vec![]), ("Socket.IO".into(), vec![])];
        for b in &backlogs {
            let mut row = format!("| {b} |");
            for (i, t) in ["Herald", "Socket.IO"].iter().enumerate() {
                let s = find(&res, |r| {
                    r["backlog"].as_u64() == Some(*b) && r["target"] == *t
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
            &images,
            "bench-resume.svg",
            "Time to receive the whole backlog after reconnecting",
            "ms",
            &cats,
            &series,
        )?;
        md.push_str("\n![resume](images/bench-resume.svg)\n\nFrom the start of the reconnect to the last backlog message. Herald replays from the durable inbox projection (anything not acknowledged, however old, across restarts), acknowledged as it arrives; Socket.IO replays from its in-memory buffer, which holds missed packets for `maxDisconnectionDuration` (2 minutes here) and is lost with the process.\n");
    }

    if let Some(ing) = results.get("ingest") {
        md.push_str(&format!(
            "\n### Durable ingest and projection rebuild\n\n| what | per second | vs raw SQLite |\n|---|---:|---:|\n\
             | raw SQLite inserts (WAL, synchronous=FULL, commit per 1000 rows), same run | {:.0} | 1.00 |\n\
             | Herald `POST /v1/notifications` answered 202 ({} in flight, one recipient each) | {:.0} | {:.3} |\n\
             | Herald `POST /v1/notifications/batch`, {} per request ({} requests in flight) | {:.0} | {:.3} |\n\
             | `herald replay` rebuilding the projection ({} records) | {:.0} | |\n\n\
             Target: ingest ≥ 0.5 of raw; rebuild ≥ 200k records/s. The rebuilt projection equals the live one: {}.\n",
            f(ing, "raw_sqlite_records_per_s"), crate::suite::MAX_PUBLISHES_IN_FLIGHT, f(ing, "accepted_per_s"), f(ing, "ratio"),
            crate::suite::BATCH, crate::suite::BATCHES_IN_FLIGHT, f(ing, "accepted_batched_per_s"), f(ing, "batched_ratio"),
            ing["replay_records"], f(ing, "replay_records_per_s"), ing["replay_equal"],
        ));
    }
    crate::replace_section(&args.doc, "suite", &md)
        .with_context(|| format!("updating {}", args.doc.display()))
}
