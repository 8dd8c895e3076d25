//! `heartline-load`: a load generator for a running Heartline, built on the runtime's Rust
//! client.
//!
//! It creates one conversation per pair of users through the HTTP API, connects every user
//! over WebSocket, joins, and has each send `--messages` messages with up to `--in-flight`
//! unacknowledged at a time. It reports acknowledged sends per second and ack latency
//! percentiles. The server must allow the rate (`rate_limit.messages`) and know the same
//! secret and API key.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use heartline_core::gateway::auth::{issue, Claims};
use heartline_runtime::client::{self, ClientOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Load generator for Heartline.
#[derive(Debug, Parser)]
#[command(name = "heartline-load", about)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:3002")]
    addr: SocketAddr,
    /// The server's auth.jwt_secret, to sign the users' tokens.
    #[arg(long, env = "HEARTLINE_JWT_SECRET")]
    secret: String,
    /// The server's api.key, to create the conversations.
    #[arg(long, env = "HEARTLINE_API_KEY")]
    api_key: String,
    /// Connected users (rounded up to an even number).
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Messages each user sends.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Unacknowledged sends per user at a time.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Bytes of content per message.
    #[arg(long, default_value_t = 100)]
    size: usize,
}

async fn put_conversation(
    addr: SocketAddr,
    key: &str,
    id: &str,
    members: &[String],
) -> Result<u16, String> {
    let members: Vec<_> = members
        .iter()
        .map(|u| json!({"userId": u, "userType": "customer"}))
        .collect();
    let body = json!({ "members": members }).to_string();
    let req = format!(
        "PUT /api/conversations/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "no HTTP status".to_owned())
}

fn token(secret: &str, user: &str) -> Result<String, String> {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs()
        + 3600;
    let claims = Claims {
        sub: user.to_owned(),
        user_type: "customer".into(),
        exp,
        role: None,
    };
    issue(secret.as_bytes(), &claims).map_err(|e| e.to_string())
}

/// One user's run: connect, join, send; returns the ack latencies.
async fn user_run(
    args: &Args,
    user: String,
    conversation: String,
) -> Result<Vec<Duration>, String> {
    let opts = ClientOptions {
        timeout: Duration::from_secs(30),
        ..ClientOptions::with_token(&token(&args.secret, &user)?)
    };
    let mut c = client::connect(args.addr, opts)
        .await
        .map_err(|e| e.to_string())?
        .client()
        .map_err(|e| e.to_string())?;
    let ack = c
        .emit_ack("conversation:join", json!({"conversationId": conversation}))
        .await
        .map_err(|e| e.to_string())?;
    if ack["ok"] != true {
        return Err(format!("join refused: {ack}"));
    }
    let content = "x".repeat(args.size);
    let mut latencies = Vec::with_capacity(args.messages);
    let mut window = std::collections::VecDeque::new();
    for i in 0..args.messages {
        let payload = json!({"conversationId": conversation, "content": content, "tempId": format!("{user}-{i}")});
        let rx = c
            .emit_with_ack("message:send", payload)
            .map_err(|e| e.to_string())?;
        window.push_back((Instant::now(), rx));
        while window.len() >= args.in_flight.max(1)
            || (i + 1 == args.messages && !window.is_empty())
        {
            let Some((sent, rx)) = window.pop_front() else {
                break;
            };
            let args = tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .map_err(|_| "ack timed out".to_owned())?
                .map_err(|_| "connection closed".to_owned())?;
            if args.first().map(|a| a["ok"] == true) != Some(true) {
                return Err(format!("send refused: {args:?}"));
            }
            latencies.push(sent.elapsed());
        }
    }
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = std::sync::Arc::new(Args::parse());
    let users = args.users.div_ceil(2) * 2;
    let run = std::process::id();
    let mut tasks = vec![];
    for pair in 0..users / 2 {
        let a = format!("load{run}-{}", pair * 2);
        let b = format!("load{run}-{}", pair * 2 + 1);
        let conv = format!("load{run}-c{pair}");
        match put_conversation(args.addr, &args.api_key, &conv, &[a.clone(), b.clone()]).await {
            Ok(200) => {}
            Ok(status) => {
                eprintln!("heartline-load: creating {conv} returned HTTP {status}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("heartline-load: cannot reach {}: {e}", args.addr);
                return ExitCode::FAILURE;
            }
        }
        for u in [a, b] {
            let args = args.clone();
            let conv = conv.clone();
            tasks.push(tokio::spawn(async move { user_run(&args, u, conv).await }));
        }
    }
    let started = Instant::now();
    let mut latencies = vec![];
    let mut failures = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => {
                failures += 1;
                eprintln!("heartline-load: a user failed: {e}");
            }
            Err(e) => {
                failures += 1;
                eprintln!("heartline-load: a user task failed: {e}");
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "users={users} acked={} failed_users={failures} elapsed={:.2}s rate={:.0} msg/s ack_p50={:?} ack_p99={:?} ack_max={:?}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
