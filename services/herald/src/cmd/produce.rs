//! `herald produce`: send one notification to a running Herald over HTTP.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{DEFAULT_URL, init_tracing};

#[derive(clap::Args)]
pub struct Args {
    /// Base URL of Herald's HTTP API.
    #[arg(long, env = "HERALD_URL", default_value = DEFAULT_URL)]
    url: String,
    /// Seconds to wait for the server's whole answer before giving up.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// Producer API key (one of the gateway's `--producer-key NAME=KEY`), sent as `X-Api-Key`.
    /// `herald dev` without producer keys needs none.
    #[arg(
        long,
        env = "HERALD_API_KEY",
        hide_env_values = true,
        conflicts_with = "jwt"
    )]
    api_key: Option<String>,
    /// Producer JWT (with `"scope": "produce"`; its `sub` is the producer), sent as a Bearer
    /// token, instead of an API key.
    #[arg(long, env = "HERALD_PRODUCER_JWT", hide_env_values = true)]
    jwt: Option<String>,
    /// Recipient user ids, comma separated.
    #[arg(long, value_delimiter = ',')]
    to: Vec<String>,
    /// Recipient group ids, comma separated.
    #[arg(long, value_delimiter = ',')]
    group: Vec<String>,
    /// Recipient topic.
    #[arg(long)]
    topic: Option<String>,
    /// Send to every known user.
    #[arg(long)]
    everyone: bool,
    /// Event type, e.g. approval.requested.
    #[arg(long = "type")]
    event_type: String,
    /// Who sends it, e.g. billing-service.
    #[arg(long, default_value = "herald-cli")]
    source: String,
    /// JSON payload.
    #[arg(long, default_value = "{}")]
    data: String,
    /// Idempotency key: sending again with the same key creates nothing new.
    #[arg(long)]
    key: Option<String>,
    /// low, normal, high or urgent.
    #[arg(long)]
    priority: Option<String>,
    /// A newer notification with the same key replaces this one in each recipient's inbox.
    #[arg(long)]
    collapse_key: Option<String>,
    /// RFC 3339 time before which the notification is not shown.
    #[arg(long)]
    deliver_at: Option<String>,
    /// RFC 3339 time after which the notification is gone.
    #[arg(long)]
    expires_at: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _telemetry = init_tracing("warn");
    // Checked here, and sent as it was given: through a `Value`, an object whose first key is
    // serde_json's raw-value token was rewritten into the value it names, where the server
    // refuses it.
    let data: Box<serde_json::value::RawValue> = serde_json::from_str(&args.data)
        .with_context(|| format!("--data is not valid JSON: {}", args.data))?;
    if args.to.is_empty() && args.group.is_empty() && args.topic.is_none() && !args.everyone {
        bail!("name recipients with --to, --group, --topic or --everyone");
    }
    let mut body = json!({
        "recipients": {
            "users": args.to,
            "groups": args.group,
            "topic": args.topic,
            "everyone": args.everyone,
        },
        "event_type": args.event_type,
        "source": args.source,
    });
    for (field, value) in [
        ("priority", args.priority),
        ("collapse_key", args.collapse_key),
        ("deliver_at", args.deliver_at),
        ("expires_at", args.expires_at),
        ("idempotency_key", args.key),
    ] {
        if let Some(v) = value {
            body[field] = json!(v);
        }
    }
    let mut text = body.to_string();
    text.pop(); // the object's `}`
    text.push_str(",\"data\":");
    text.push_str(data.get());
    text.push('}');
    let url = format!("{}/v1/notifications", args.url.trim_end_matches('/'));
    let mut request = super::http_client(args.timeout_secs)?
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(text);
    if let Some(key) = &args.api_key {
        request = request.header("x-api-key", key);
    }
    if let Some(jwt) = &args.jwt {
        request = request.bearer_auth(jwt);
    }
    let resp = request.send().await.with_context(|| {
        format!(
            "cannot reach Herald at {}: is `herald dev` running?",
            args.url
        )
    })?;
    let status = resp.status();
    let text = resp.text().await.context("reading the response")?;
    if status.is_success() {
        super::out(text.to_string());
        return Ok(ExitCode::SUCCESS);
    }
    let reason = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            Some(format!(
                "{} ({})",
                v["error"]["message"].as_str()?,
                v["error"]["code"].as_str()?
            ))
        })
        .unwrap_or(text);
    if status == reqwest::StatusCode::UNAUTHORIZED && args.api_key.is_none() && args.jwt.is_none() {
        bail!(
            "Herald refused the notification: HTTP {status}: {reason}; pass a producer key with \
             --api-key (or HERALD_API_KEY), or a producer token with --jwt"
        );
    }
    bail!("Herald refused the notification: HTTP {status}: {reason}")
}
