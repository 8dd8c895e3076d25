//! `heartline-load`: a load generator for a running Heartline (or any server speaking the
//! same contract, such as the Node peer under `tests/peer/`), built on the runtime's Rust
//! client.
//!
//! Scenarios, one subcommand each; every one prints a readable table and then one JSON
//! line starting with `{"scenario":` for scripts:
//!
//! - `pairs`: one conversation per pair of users, each sends `--messages` with
//!   `--in-flight` unacknowledged; acknowledged sends per second and ack latency.
//! - `idle`: `--conns` authenticated connections held idle, answering Engine.IO pings and
//!   the `heartbeat` event; how many stayed connected over the hold, and how many were
//!   lost (a server-side ping timeout or any other close counts as lost).
//! - `chat`: conversations of `--members` users, all joined; either saturation
//!   (`--in-flight` sends outstanding per user, as fast as acks come back) or a fixed
//!   offered load (`--rate` sends per second in total, open loop): acks/s, deliveries/s,
//!   ack latency and fan-out latency (send to `message:new` at another member).
//! - `storm`: `--conns` clients connected that reconnect by themselves like
//!   socket.io-client (1 s doubling to 5 s, ±50 % jitter); after the server goes away and
//!   comes back (restarted by the caller), the time until all are back and authenticated.
//! - `deadpeers`: `--conns` clients connect, then stop answering pings and heartbeats
//!   without closing; the time until the server's `heartline_connections` (from
//!   `/metrics`) is back at its value before they connected.
//!
//! Connections are opened from source addresses `127.<src-net>.x.y` (`--per-ip` per
//! address) so that one run can go past the ~28,000 ephemeral ports of one address pair.
//! Loopback only: the server address must be in 127.0.0.0/8.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args as ClapArgs, Parser, Subcommand};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use heartline_core::gateway::auth::{issue, Claims};
use heartline_runtime::client::{self, Client, ClientEvent, ClientOptions};
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};

// The same allocator as the server: the load generator shares the machine with the server
// it measures, so every cycle it spends on malloc is one the server does not get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for Heartline and servers with the same contract.
#[derive(Debug, Parser)]
#[command(name = "heartline-load", about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, ClapArgs)]
struct Common {
    /// Server address (127.0.0.0/8 only).
    #[arg(long, global = true, default_value = "127.0.0.1:3002")]
    addr: SocketAddr,
    /// The server's auth.jwt_secret, to sign the users' tokens.
    #[arg(long, global = true, env = "HEARTLINE_JWT_SECRET", default_value = "")]
    secret: String,
    /// The server's api.key, to create the conversations.
    #[arg(long, global = true, env = "HEARTLINE_API_KEY", default_value = "")]
    api_key: String,
    /// Second octet of the source addresses: connections come from `127.<src-net>.x.y`.
    #[arg(long, global = true, default_value_t = 0)]
    src_net: u8,
    /// Connections per source address.
    #[arg(long, global = true, default_value_t = 5000)]
    per_ip: usize,
    /// Connects in progress at a time.
    #[arg(long, global = true, default_value_t = 200)]
    connect_concurrency: usize,
    /// Prefix of the user ids (default: derived from the process id and the time).
    #[arg(long, global = true)]
    prefix: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Pairs of users sending a fixed number of messages each.
    Pairs {
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
    },
    /// Idle authenticated connections held over a period.
    Idle {
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Longest hold once connected, in seconds.
        #[arg(long, default_value_t = 30)]
        hold_secs: u64,
        /// Bound on the connect phase, in seconds.
        #[arg(long, default_value_t = 120)]
        connect_secs: u64,
        /// Written (with the number connected) once the connect phase is over.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// The hold ends early when this file appears.
        #[arg(long)]
        stop_file: Option<PathBuf>,
    },
    /// Conversations with every member joined: saturation or fixed offered load.
    Chat {
        /// Conversations.
        #[arg(long, default_value_t = 20)]
        groups: usize,
        /// Members per conversation, all connected and joined.
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Warm-up seconds, not counted.
        #[arg(long, default_value_t = 2)]
        warmup_secs: u64,
        /// Saturation: sends outstanding per user.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        /// Fixed offered load: sends per second in total (open loop); 0 = saturation.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Bytes of content per message (at least 45: the send's two times are carried in
        /// it).
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// Clients that reconnect by themselves, timed across a server restart.
    Storm {
        /// Clients.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Bound on each phase (connect, wait for the outage, wait for the return), seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Written (with the number connected) once all are connected.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Clients that stop answering without closing; time until the server freed them.
    Deadpeers {
        /// Clients.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Bound on the connect phase and on the wait, seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

// ---------------------------------------------------------------------------------------
// Shared pieces

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn token(secret: &str, user: &str) -> Result<String, String> {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs()
        + 3 * 3600;
    let claims = Claims {
        sub: user.to_owned(),
        user_type: "customer".into(),
        exp,
        role: None,
    };
    issue(secret.as_bytes(), &claims).map_err(|e| e.to_string())
}

/// The source address of connection `i`.
fn source(common: &Common, i: usize) -> Ipv4Addr {
    let slot = i / common.per_ip.max(1);
    let third = (slot / 250) as u8;
    let fourth = (slot % 250) as u8 + 2;
    Ipv4Addr::new(127, common.src_net, third, fourth)
}

/// Opens a TCP connection from the source address of connection `i` and connects the
/// namespace as `user`.
/// `raw` names the events to receive unparsed ([`ClientEvent::Raw`]).
async fn open(
    common: &Common,
    i: usize,
    user: &str,
    timeout: Duration,
    raw: &[&str],
) -> Result<Client, String> {
    let src = SocketAddrV4::new(source(common, i), 0);
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(src.into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    let stream = tokio::time::timeout(timeout, socket.connect(common.addr))
        .await
        .map_err(|_| "tcp connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let opts = ClientOptions {
        timeout,
        raw_events: raw.iter().map(|e| (*e).to_owned()).collect(),
        ..ClientOptions::with_token(&token(&common.secret, user)?)
    };
    client::connect_over(stream, common.addr, opts)
        .await
        .map_err(|e| e.to_string())?
        .client()
        .map_err(|e| e.to_string())
}

async fn http(addr: SocketAddr, request: String) -> Result<(u16, String), String> {
    let mut s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "no HTTP status".to_owned())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn put_conversation(common: &Common, id: &str, members: &[String]) -> Result<(), String> {
    let members: Vec<_> = members
        .iter()
        .map(|u| json!({"userId": u, "userType": "customer"}))
        .collect();
    let body = json!({ "members": members }).to_string();
    let addr = common.addr;
    let req = format!(
        "PUT /api/conversations/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        common.api_key,
        body.len()
    );
    match http(addr, req).await? {
        (200, _) => Ok(()),
        (status, _) => Err(format!("creating {id} returned HTTP {status}")),
    }
}

/// The server's `heartline_connections` gauge.
async fn server_connections(addr: SocketAddr) -> Result<u64, String> {
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, body) = http(addr, req).await?;
    if status != 200 {
        return Err(format!("/metrics returned HTTP {status}"));
    }
    body.lines()
        .find_map(|l| l.strip_prefix("heartline_connections "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| "no heartline_connections in /metrics".to_owned())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn prefix(common: &Common) -> String {
    common.prefix.clone().unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000_000)
            .unwrap_or(0);
        format!("l{}x{t}", std::process::id())
    })
}

/// Prints the table and the JSON line.
fn report(rows: &[(&str, String)], json: Value) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
    println!("{json}");
}

fn write_file(path: &Option<PathBuf>, text: &str) {
    if let Some(p) = path {
        if let Err(e) = std::fs::write(p, text) {
            eprintln!("heartline-load: cannot write {}: {e}", p.display());
        }
    }
}

/// A small xorshift for jitter: no need for a random source of quality.
fn jitter(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed >> 11) as f64 / (1u64 << 53) as f64
}

/// Answers a `heartbeat` event as clients do.
fn answer_heartbeat(c: &Client, event: &ClientEvent) {
    if let ClientEvent::Event { name, args } = event {
        if name == "heartbeat" {
            let payload = args.first().cloned().unwrap_or(Value::Null);
            let _ = c.emit("heartbeat:response", payload);
        }
    }
}

/// Opens `n` connections with bounded concurrency; `each` is spawned with every client
/// that connected, the failures are counted and the first few printed.
async fn connect_all<F, Fut>(
    common: &Arc<Common>,
    users: Vec<String>,
    timeout: Duration,
    each: F,
) -> (usize, usize, Duration)
where
    F: Fn(usize, Client) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let each = Arc::new(each);
    let failed = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(users.len());
    for (i, user) in users.into_iter().enumerate() {
        let (sem, each, failed, ok, common) = (
            sem.clone(),
            each.clone(),
            failed.clone(),
            ok.clone(),
            common.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else {
                return;
            };
            match open(&common, i, &user, timeout, &[]).await {
                Ok(c) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(each(i, c));
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("heartline-load: connect {user}: {e}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        started.elapsed(),
    )
}

// ---------------------------------------------------------------------------------------
// idle

async fn idle(
    common: Arc<Common>,
    conns: usize,
    hold: Duration,
    connect_secs: u64,
    ready_file: Option<PathBuf>,
    stop_file: Option<PathBuf>,
) -> ExitCode {
    let p = prefix(&common);
    let users: Vec<String> = (0..conns).map(|i| format!("{p}-i{i}")).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let lost = Arc::new(AtomicUsize::new(0));
    let heartbeats = Arc::new(AtomicU64::new(0));
    let reasons: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(vec![]));
    let (l, h, r) = (lost.clone(), heartbeats.clone(), reasons.clone());
    let held = Arc::new(AtomicUsize::new(0));
    let held2 = held.clone();
    let (ok, failed, took) = tokio::time::timeout(
        Duration::from_secs(connect_secs),
        connect_all(&common, users, Duration::from_secs(60), move |_, mut c| {
            let (mut stop, lost, hb, reasons, held) = (
                stop_rx.clone(),
                l.clone(),
                h.clone(),
                r.clone(),
                held2.clone(),
            );
            held.fetch_add(1, Ordering::Relaxed);
            async move {
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        ev = c.next(Duration::from_secs(3600)) => match ev {
                            Ok(e @ ClientEvent::Event { .. }) => {
                                hb.fetch_add(1, Ordering::Relaxed);
                                answer_heartbeat(&c, &e);
                            }
                            Ok(other) => {
                                lost.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut r) = reasons.lock() {
                                    if r.len() < 5 {
                                        r.push(format!("{other:?}"));
                                    }
                                }
                                break;
                            }
                            Err(client::ClientError::Timeout) => {}
                            Err(e) => {
                                lost.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut r) = reasons.lock() {
                                    if r.len() < 5 {
                                        r.push(e.to_string());
                                    }
                                }
                                break;
                            }
                        }
                    }
                }
                // Keep the connection open until the end of the run.
                let _ = stop.wait_for(|s| *s).await;
                drop(c);
            }
        }),
    )
    .await
    .unwrap_or((
        held.load(Ordering::Relaxed),
        0,
        Duration::from_secs(connect_secs),
    ));
    let lost_while_connecting = lost.load(Ordering::Relaxed);
    eprintln!("heartline-load: idle: {ok} connected, {failed} failed in {took:.1?}");
    write_file(&ready_file, &format!("{ok}\n"));
    let hold_start = Instant::now();
    while hold_start.elapsed() < hold {
        if let Some(f) = &stop_file {
            if f.exists() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held_secs = hold_start.elapsed();
    let lost_total = lost.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let still = ok.saturating_sub(lost_total);
    let reasons = reasons.lock().map(|r| r.clone()).unwrap_or_default();
    report(
        &[
            ("scenario", "idle".into()),
            ("requested", conns.to_string()),
            ("connected", format!("{ok} ({failed} failed)")),
            ("connect time", format!("{:.2} s", took.as_secs_f64())),
            ("held for", format!("{:.1} s", held_secs.as_secs_f64())),
            ("still connected", still.to_string()),
            ("lost (server closed)", lost_total.to_string()),
            (
                "heartbeat events answered",
                heartbeats.load(Ordering::Relaxed).to_string(),
            ),
        ],
        json!({
            "scenario": "idle", "requested": conns, "connected": ok, "connect_failed": failed,
            "connect_secs": took.as_secs_f64(), "hold_secs": held_secs.as_secs_f64(),
            "still_connected": still, "lost": lost_total,
            "lost_while_connecting": lost_while_connecting,
            "heartbeats": heartbeats.load(Ordering::Relaxed), "lost_reasons": reasons,
        }),
    );
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// chat

#[derive(Default)]
struct ChatStats {
    sent: u64,
    acked: u64,
    refused: u64,
    /// Sends answered by no ack: none within 30 s, or none by the time the user stopped
    /// (10 s after the run, or when its connection ended), which is as lost to a client.
    ack_timeouts: u64,
    deliveries: u64,
    /// From each send's time in the schedule (the generator's lateness included).
    ack_lat: Vec<Duration>,
    fan_lat: Vec<Duration>,
    /// From when each send actually went out (the server's part and the client's).
    ack_sent_lat: Vec<Duration>,
    fan_sent_lat: Vec<Duration>,
    /// How long after its time in the schedule each send went out (the generator's own
    /// lateness, part of `ack_lat`).
    late: Vec<Duration>,
    errors: Vec<String>,
}

/// Wakes the chat tasks at their send times.
///
/// tokio's timer counts in whole milliseconds and rounds a deadline up, and its park
/// rounds its timeout up again: a send scheduled with `sleep_until` went out late by
/// 1.0 ms at the median and 2.0 ms at p99 (500 sends/s), and as latency is counted from
/// the schedule, every ack and fan-out figure carried that time of the generator's own.
/// One thread sleeping on the OS's high-resolution timer (a futex wait with a timeout)
/// keeps the schedule for every task instead and hands each its turn through a channel:
/// 0.11 ms late at the median, 0.4–0.5 ms at p99, what a tokio worker takes to wake. The
/// lateness is part of the latency figures and is reported beside them (`send lateness`).
struct Pacer {
    due: std::sync::mpsc::Sender<Due>,
}

type Wake = tokio::sync::mpsc::UnboundedSender<()>;

/// A task's turn: `()` goes to `wake` at `at`. Ordered by time alone: turns due at the
/// same instant all go out in the same pass.
struct Due {
    at: Instant,
    wake: Wake,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl Pacer {
    /// `None` if its thread cannot be started: the tasks then keep time with tokio.
    fn start() -> Option<Pacer> {
        use std::sync::mpsc::RecvTimeoutError;
        let (due, rx) = std::sync::mpsc::channel::<Due>();
        let spawned = std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || {
                let mut heap = std::collections::BinaryHeap::<std::cmp::Reverse<Due>>::new();
                let mut open = true;
                loop {
                    let now = Instant::now();
                    while heap.peek().is_some_and(|d| d.0.at <= now) {
                        if let Some(d) = heap.pop() {
                            let _ = d.0.wake.send(());
                        }
                    }
                    let got = match heap.peek() {
                        Some(d) if open => {
                            rx.recv_timeout(d.0.at.saturating_duration_since(Instant::now()))
                        }
                        Some(d) => {
                            std::thread::sleep(d.0.at.saturating_duration_since(Instant::now()));
                            continue;
                        }
                        None if open => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        None => return,
                    };
                    match got {
                        Ok(d) => heap.push(std::cmp::Reverse(d)),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => open = false,
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Pacer { due }),
            Err(e) => {
                eprintln!("heartline-load: pacer thread: {e}; keeping time with tokio");
                None
            }
        }
    }

    /// Sends `()` to `wake` at `at` (by tokio's timer if the pacer thread is gone).
    fn wake_at(&self, at: Instant, wake: &Wake) {
        let d = Due {
            at,
            wake: wake.clone(),
        };
        if let Err(std::sync::mpsc::SendError(d)) = self.due.send(d) {
            tokio::spawn(async move {
                tokio::time::sleep_until(d.at.into()).await;
                let _ = d.wake.send(());
            });
        }
    }
}

struct ChatPlan {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    rate_per_user: f64,
    in_flight: usize,
    size: usize,
    pacer: Option<Pacer>,
}

/// The two fields of a `message:new` that the chat scenario reads.
#[derive(serde::Deserialize)]
struct NewMessage<'a> {
    #[serde(rename = "senderId", borrow)]
    sender_id: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// Resolves to (due, sent, the ack's arguments): the send's time in the schedule, when it
/// actually went out, and `None` if no ack came in time.
type PendingAck = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Instant, Instant, Option<Vec<Value>>)> + Send>,
>;

async fn chat_user(
    mut c: Client,
    me: String,
    conversation: String,
    plan: Arc<ChatPlan>,
    seed: u64,
) -> ChatStats {
    let mut st = ChatStats::default();
    let pad = "x".repeat(plan.size.saturating_sub(45));
    let mut seq = 0u64;
    let mut pending: FuturesUnordered<PendingAck> = FuturesUnordered::new();
    let mut rng = seed | 1;
    let grace = plan.end + Duration::from_secs(10);
    // Open loop: the next send time; the first at a random phase.
    let period = if plan.rate_per_user > 0.0 {
        Duration::from_secs_f64(1.0 / plan.rate_per_user)
    } else {
        Duration::ZERO
    };
    let mut next_send = plan.start + period.mul_f64(jitter(&mut rng));
    tokio::time::sleep_until(plan.start.into()).await;
    // `at`: when the send is due. At a fixed rate that is its place in the schedule, not
    // when this task got to it: a late wake-up of the generator is part of the latency
    // a client would see (no coordinated omission). Both times travel in the content, so
    // that the latencies are also reported from the moment the send went out: the
    // generator's lateness (its timer's wake-up on this machine) is the same for either
    // server and says nothing about them.
    let send =
        |c: &mut Client, seq: &mut u64, st: &mut ChatStats, at: Instant| -> Option<PendingAck> {
            let sent = Instant::now();
            let now = at.min(sent);
            let stamp = now.duration_since(base()).as_nanos();
            let sent_stamp = sent.duration_since(base()).as_nanos();
            let content = format!("{stamp:020}|{sent_stamp:020}|{pad}");
            let tempid = format!("{me}-{seq}");
            *seq += 1;
            let payload =
                json!({"conversationId": conversation, "content": content, "tempId": tempid});
            match c.emit_with_ack("message:send", payload) {
                Ok(rx) => {
                    if now >= plan.measure_from {
                        st.sent += 1;
                    }
                    Some(Box::pin(async move {
                        let r = tokio::time::timeout(Duration::from_secs(30), rx).await;
                        (now, sent, r.ok().and_then(|r| r.ok()))
                    }))
                }
                Err(e) => {
                    st.errors.push(e.to_string());
                    None
                }
            }
        };
    if plan.rate_per_user <= 0.0 {
        for _ in 0..plan.in_flight.max(1) {
            if let Some(f) = send(&mut c, &mut seq, &mut st, Instant::now()) {
                pending.push(f);
            }
        }
    }
    let (turn_tx, mut turn) = tokio::sync::mpsc::unbounded_channel();
    let mut asked: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= plan.end && (pending.is_empty() || now >= grace) {
            break;
        }
        let sending = plan.rate_per_user > 0.0 && next_send < plan.end;
        let wake = if sending {
            next_send
        } else if now < plan.end {
            plan.end
        } else {
            grace
        };
        let paced = match &plan.pacer {
            Some(p) if sending => {
                if asked != Some(next_send) {
                    p.wake_at(next_send, &turn_tx);
                    asked = Some(next_send);
                }
                true
            }
            _ => false,
        };
        let mut due = false;
        tokio::select! {
            _ = turn.recv(), if paced => due = true,
            _ = tokio::time::sleep_until(wake.into()), if !paced => due = sending,
            Some((due_at, sent, args)) = pending.next(), if !pending.is_empty() => {
                let at = Instant::now();
                match args {
                    Some(a) if a.first().map(|a| a["ok"] == true) == Some(true) => {
                        // Throughput: acks that arrive within the window, like deliveries
                        // (counting only those of sends made within it left out one
                        // in-flight window's worth); latency: sends made within it.
                        if at >= plan.measure_from && at <= plan.end {
                            st.acked += 1;
                        }
                        if due_at >= plan.measure_from {
                            st.ack_lat.push(at.saturating_duration_since(due_at));
                            st.ack_sent_lat.push(at.saturating_duration_since(sent));
                        }
                    }
                    Some(a) => {
                        st.refused += 1;
                        if st.errors.len() < 3 {
                            st.errors.push(format!("refused: {a:?}"));
                        }
                    }
                    None => st.ack_timeouts += 1,
                }
                if plan.rate_per_user <= 0.0 && at < plan.end {
                    if let Some(f) = send(&mut c, &mut seq, &mut st, Instant::now()) {
                        pending.push(f);
                    }
                }
            }
            ev = c.next(Duration::from_secs(3600)) => match ev {
                Ok(ClientEvent::Raw { data }) => {
                    let at = Instant::now();
                    if at >= plan.measure_from && at <= plan.end {
                        st.deliveries += 1;
                    }
                    // Only two fields are read: decode them borrowed, build nothing else.
                    let stamps = serde_json::from_str::<(IgnoredAny, NewMessage<'_>)>(&data)
                        .ok()
                        .filter(|(_, m)| m.sender_id != me)
                        .and_then(|(_, m)| {
                            let due = m.content.get(..20)?.parse::<u64>().ok()?;
                            let sent = m.content.get(21..41)?.parse::<u64>().ok()?;
                            Some((due, sent))
                        });
                    if let Some((due, sent)) = stamps {
                        let due = base() + Duration::from_nanos(due);
                        let sent = base() + Duration::from_nanos(sent);
                        if due >= plan.measure_from {
                            st.fan_lat.push(at.saturating_duration_since(due));
                            st.fan_sent_lat.push(at.saturating_duration_since(sent));
                        }
                    }
                }
                Ok(e @ ClientEvent::Event { .. }) => answer_heartbeat(&c, &e),
                Ok(other) => {
                    st.errors.push(format!("connection ended: {other:?}"));
                    break;
                }
                Err(client::ClientError::Timeout) => {}
                Err(e) => {
                    st.errors.push(e.to_string());
                    break;
                }
            }
        }
        if due && Instant::now() >= next_send {
            if next_send >= plan.measure_from {
                st.late
                    .push(Instant::now().saturating_duration_since(next_send));
            }
            if let Some(f) = send(&mut c, &mut seq, &mut st, next_send) {
                pending.push(f);
            }
            next_send += period;
        }
    }
    // Still waiting when the user stopped: never answered, counted as such rather than
    // dropped, so that a server whose acks stall past the end shows it (they have no
    // latency sample either).
    st.ack_timeouts += pending.len() as u64;
    st
}

#[allow(clippy::too_many_arguments)]
async fn chat(
    common: Arc<Common>,
    groups: usize,
    members: usize,
    secs: u64,
    warmup_secs: u64,
    in_flight: usize,
    rate: f64,
    size: usize,
) -> ExitCode {
    let p = prefix(&common);
    let members = members.max(1);
    let mut users = vec![];
    for g in 0..groups {
        let conv = format!("{p}-c{g}");
        let names: Vec<String> = (0..members).map(|m| format!("{p}-g{g}m{m}")).collect();
        if let Err(e) = put_conversation(&common, &conv, &names).await {
            eprintln!("heartline-load: {e}");
            return ExitCode::FAILURE;
        }
        users.extend(names.into_iter().map(|n| (n, conv.clone())));
    }
    let n = users.len();
    // Connect and join everyone first.
    let mut clients = Vec::with_capacity(n);
    for (i, (user, conv)) in users.iter().enumerate() {
        let mut c = match open(&common, i, user, Duration::from_secs(30), &["message:new"]).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("heartline-load: connect {user}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match c
            .emit_ack("conversation:join", json!({"conversationId": conv}))
            .await
        {
            Ok(a) if a["ok"] == true => {}
            other => {
                eprintln!("heartline-load: join {conv}: {other:?}");
                return ExitCode::FAILURE;
            }
        }
        clients.push(c);
    }
    // Presence and join notices settle before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + Duration::from_secs(warmup_secs);
    let plan = Arc::new(ChatPlan {
        start,
        measure_from,
        end: measure_from + Duration::from_secs(secs),
        rate_per_user: if rate > 0.0 { rate / n as f64 } else { 0.0 },
        in_flight,
        size: size.max(45),
        pacer: if rate > 0.0 { Pacer::start() } else { None },
    });
    let mut tasks = vec![];
    for (i, (c, (user, conv))) in clients.into_iter().zip(users).enumerate() {
        let plan = plan.clone();
        let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1);
        tasks.push(tokio::spawn(chat_user(c, user, conv, plan, seed)));
    }
    let mut all = ChatStats::default();
    for t in tasks {
        match t.await {
            Ok(s) => {
                all.sent += s.sent;
                all.acked += s.acked;
                all.refused += s.refused;
                all.ack_timeouts += s.ack_timeouts;
                all.deliveries += s.deliveries;
                all.ack_lat.extend(s.ack_lat);
                all.fan_lat.extend(s.fan_lat);
                all.ack_sent_lat.extend(s.ack_sent_lat);
                all.fan_sent_lat.extend(s.fan_sent_lat);
                all.late.extend(s.late);
                if all.errors.len() < 5 {
                    all.errors.extend(s.errors.into_iter().take(2));
                }
            }
            Err(e) => all.errors.push(e.to_string()),
        }
    }
    all.ack_lat.sort();
    all.fan_lat.sort();
    all.ack_sent_lat.sort();
    all.fan_sent_lat.sort();
    all.late.sort();
    let secs_f = secs as f64;
    let mode = if rate > 0.0 { "rate" } else { "saturation" };
    let (a, f) = (&all.ack_lat, &all.fan_lat);
    let (sa, sf) = (&all.ack_sent_lat, &all.fan_sent_lat);
    let lat = |v: &[Duration]| {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms ({} samples)",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(percentile(v, 0.999)),
            ms(v.last().copied().unwrap_or_default()),
            v.len()
        )
    };
    report(
        &[
            ("scenario", format!("chat ({mode})")),
            (
                "users",
                format!("{n} in {groups} conversations of {members}"),
            ),
            (
                "offered",
                if rate > 0.0 {
                    format!("{rate} sends/s")
                } else {
                    format!("{in_flight} in flight per user")
                },
            ),
            (
                "measured",
                format!("{secs} s after {warmup_secs} s warm-up"),
            ),
            ("acks/s", format!("{:.0}", all.acked as f64 / secs_f)),
            (
                "deliveries/s",
                format!("{:.0}", all.deliveries as f64 / secs_f),
            ),
            ("ack latency", lat(a)),
            ("fan-out latency", lat(f)),
            ("send lateness", lat(&all.late)),
            ("ack latency from the send", lat(sa)),
            ("fan-out latency from the send", lat(sf)),
            (
                "refused / ack timeouts",
                format!("{} / {}", all.refused, all.ack_timeouts),
            ),
        ],
        json!({
            "scenario": "chat", "mode": mode, "users": n, "groups": groups, "members": members,
            "rate": rate, "in_flight": in_flight, "secs": secs, "warmup_secs": warmup_secs,
            "sent": all.sent, "acked": all.acked, "acks_per_sec": all.acked as f64 / secs_f,
            "deliveries": all.deliveries, "deliveries_per_sec": all.deliveries as f64 / secs_f,
            "refused": all.refused, "ack_timeouts": all.ack_timeouts,
            "ack_p50_ms": ms(percentile(a, 0.5)), "ack_p99_ms": ms(percentile(a, 0.99)),
            "ack_p999_ms": ms(percentile(a, 0.999)),
            "ack_max_ms": ms(a.last().copied().unwrap_or_default()),
            "fanout_p50_ms": ms(percentile(f, 0.5)), "fanout_p99_ms": ms(percentile(f, 0.99)),
            "fanout_p999_ms": ms(percentile(f, 0.999)),
            "fanout_max_ms": ms(f.last().copied().unwrap_or_default()),
            "late_p50_ms": ms(percentile(&all.late, 0.5)),
            "late_p99_ms": ms(percentile(&all.late, 0.99)),
            "late_max_ms": ms(all.late.last().copied().unwrap_or_default()),
            "ack_sent_p50_ms": ms(percentile(sa, 0.5)),
            "ack_sent_p99_ms": ms(percentile(sa, 0.99)),
            "ack_sent_p999_ms": ms(percentile(sa, 0.999)),
            "fanout_sent_p50_ms": ms(percentile(sf, 0.5)),
            "fanout_sent_p99_ms": ms(percentile(sf, 0.99)),
            "fanout_sent_p999_ms": ms(percentile(sf, 0.999)),
            "errors": all.errors,
        }),
    );
    if all.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------
// storm

struct StormState {
    up: AtomicUsize,
    /// Clients that came back after losing their connection.
    back: AtomicUsize,
    attempts: AtomicU64,
    first_down: Mutex<Option<Instant>>,
    last_back: Mutex<Option<Instant>>,
}

async fn storm_client(
    common: Arc<Common>,
    i: usize,
    user: String,
    st: Arc<StormState>,
    deadline: Instant,
    first: Arc<Semaphore>,
) {
    let mut rng = (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut was_down = false;
    let mut counted_back = false;
    let mut attempt = 0u32;
    while Instant::now() < deadline {
        st.attempts.fetch_add(1, Ordering::Relaxed);
        // Bounded concurrency for the first connects only; reconnects are not held back.
        let permit = if was_down {
            None
        } else {
            first.acquire().await.ok()
        };
        let opened = open(&common, i, &user, Duration::from_secs(20), &[]).await;
        drop(permit);
        match opened {
            Ok(mut c) => {
                st.up.fetch_add(1, Ordering::Relaxed);
                if was_down {
                    // Each client counts once; one that drops again and returns later
                    // moves the time all were back, but is not counted twice.
                    if !counted_back {
                        counted_back = true;
                        st.back.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut l) = st.last_back.lock() {
                        *l = Some(Instant::now());
                    }
                }
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    match c.next(left).await {
                        Ok(e @ ClientEvent::Event { .. }) => answer_heartbeat(&c, &e),
                        Err(client::ClientError::Timeout) => return,
                        Ok(_) | Err(_) => break,
                    }
                }
                st.up.fetch_sub(1, Ordering::Relaxed);
                if !was_down {
                    was_down = true;
                    if let Ok(mut f) = st.first_down.lock() {
                        f.get_or_insert_with(Instant::now);
                    }
                }
            }
            Err(_) => {
                // socket.io-client's schedule: 1 s doubling up to 5 s, randomisation 0.5.
                let base_ms = (1000u64 << attempt.min(3)).min(5000) as f64;
                attempt += 1;
                let wait = base_ms * (0.5 + jitter(&mut rng));
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                continue;
            }
        }
        // Lost: first retry after the randomised first delay, as socket.io-client does.
        let wait = 1000.0 * (0.5 + jitter(&mut rng));
        attempt = 1;
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

async fn storm(
    common: Arc<Common>,
    conns: usize,
    timeout_secs: u64,
    ready_file: Option<PathBuf>,
) -> ExitCode {
    let p = prefix(&common);
    let bound = Duration::from_secs(timeout_secs);
    let deadline = Instant::now() + bound * 3;
    let st = Arc::new(StormState {
        up: AtomicUsize::new(0),
        back: AtomicUsize::new(0),
        attempts: AtomicU64::new(0),
        first_down: Mutex::new(None),
        last_back: Mutex::new(None),
    });
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let started = Instant::now();
    for i in 0..conns {
        let (common, st, sem) = (common.clone(), st.clone(), sem.clone());
        let user = format!("{p}-s{i}");
        tokio::spawn(storm_client(common, i, user, st, deadline, sem));
    }
    // Wait for everyone.
    while st.up.load(Ordering::Relaxed) < conns && started.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected = st.up.load(Ordering::Relaxed);
    let connect_took = started.elapsed();
    eprintln!("heartline-load: storm: {connected} connected in {connect_took:.1?}");
    write_file(&ready_file, &format!("{connected}\n"));
    // Wait for the outage.
    let t = Instant::now();
    let first_down = loop {
        if let Some(f) = st.first_down.lock().ok().and_then(|f| *f) {
            break Some(f);
        }
        if t.elapsed() > bound {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Wait until everyone that was connected is back.
    let t = Instant::now();
    // Every client back once, and all of them up at the same time.
    let all_back = || {
        st.back.load(Ordering::Relaxed) >= connected && st.up.load(Ordering::Relaxed) >= connected
    };
    while first_down.is_some() && !all_back() && t.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = st.back.load(Ordering::Relaxed);
    let last = st.last_back.lock().ok().and_then(|l| *l);
    let secs = match (first_down, last) {
        (Some(f), Some(l)) if all_back() => Some(l.saturating_duration_since(f).as_secs_f64()),
        _ => None,
    };
    let attempts = st.attempts.load(Ordering::Relaxed);
    report(
        &[
            ("scenario", "storm".into()),
            (
                "connected before",
                format!(
                    "{connected} of {conns} in {:.2} s",
                    connect_took.as_secs_f64()
                ),
            ),
            ("back after the restart", back.to_string()),
            (
                "all back after",
                secs.map(|s| format!("{s:.2} s from the first disconnect"))
                    .unwrap_or_else(|| "not all back in time".into()),
            ),
            ("connect attempts in all", attempts.to_string()),
        ],
        json!({
            "scenario": "storm", "requested": conns, "connected": connected,
            "connect_secs": connect_took.as_secs_f64(), "back": back,
            "all_back_secs": secs, "attempts": attempts,
        }),
    );
    if secs.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------
// deadpeers

async fn deadpeers(common: Arc<Common>, conns: usize, timeout_secs: u64) -> ExitCode {
    let p = prefix(&common);
    let bound = Duration::from_secs(timeout_secs);
    let before = match server_connections(common.addr).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("heartline-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let users: Vec<String> = (0..conns).map(|i| format!("{p}-d{i}")).collect();
    let (dead_tx, dead_rx) = watch::channel(false);
    let (ok, failed, took) = tokio::time::timeout(
        bound,
        connect_all(&common, users, Duration::from_secs(60), move |_, mut c| {
            let mut dead = dead_rx.clone();
            async move {
                // Alive until told otherwise: answer heartbeats (pings are answered by the
                // client's reader).
                loop {
                    tokio::select! {
                        _ = dead.changed() => break,
                        ev = c.next(Duration::from_secs(3600)) => match ev {
                            Ok(e @ ClientEvent::Event { .. }) => answer_heartbeat(&c, &e),
                            Err(client::ClientError::Timeout) => {}
                            Ok(_) | Err(_) => break,
                        }
                    }
                }
                // Dead: no pong, no heartbeat answer, no close. Hold the socket until exit.
                c.set_answer_pings(false);
                let _ = dead.wait_for(|d| !*d).await;
                drop(c);
            }
        }),
    )
    .await
    .unwrap_or((0, conns, bound));
    let peak = server_connections(common.addr).await.unwrap_or(0);
    eprintln!("heartline-load: deadpeers: {ok} connected ({failed} failed) in {took:.1?}; server holds {peak}");
    let went_dead = Instant::now();
    let _ = dead_tx.send(true);
    let mut freed_after = None;
    let mut last = peak;
    while went_dead.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(n) = server_connections(common.addr).await {
            last = n;
            if n <= before {
                freed_after = Some(went_dead.elapsed());
                break;
            }
        }
    }
    report(
        &[
            ("scenario", "deadpeers".into()),
            (
                "connected",
                format!("{ok} ({failed} failed) in {:.2} s", took.as_secs_f64()),
            ),
            (
                "server connections",
                format!("{before} before, {peak} with them, {last} at the end"),
            ),
            (
                "all freed after",
                freed_after
                    .map(|d| format!("{:.2} s", d.as_secs_f64()))
                    .unwrap_or_else(|| format!("not within {timeout_secs} s")),
            ),
        ],
        json!({
            "scenario": "deadpeers", "requested": conns, "connected": ok,
            "connect_failed": failed, "server_before": before, "server_peak": peak,
            "server_end": last, "freed_secs": freed_after.map(|d| d.as_secs_f64()),
        }),
    );
    let _ = dead_tx.send(false);
    if freed_after.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------
// pairs

async fn pairs_user(
    common: Arc<Common>,
    i: usize,
    user: String,
    conversation: String,
    messages: usize,
    in_flight: usize,
    size: usize,
) -> Result<Vec<Duration>, String> {
    let mut c = open(&common, i, &user, Duration::from_secs(30), &[]).await?;
    let ack = c
        .emit_ack("conversation:join", json!({"conversationId": conversation}))
        .await
        .map_err(|e| e.to_string())?;
    if ack["ok"] != true {
        return Err(format!("join refused: {ack}"));
    }
    let content = "x".repeat(size);
    let mut latencies = Vec::with_capacity(messages);
    let mut window = VecDeque::new();
    for m in 0..messages {
        let payload = json!({"conversationId": conversation, "content": content, "tempId": format!("{user}-{m}")});
        let rx = c
            .emit_with_ack("message:send", payload)
            .map_err(|e| e.to_string())?;
        window.push_back((Instant::now(), rx));
        while window.len() >= in_flight.max(1) || (m + 1 == messages && !window.is_empty()) {
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

async fn pairs(
    common: Arc<Common>,
    users: usize,
    messages: usize,
    in_flight: usize,
    size: usize,
) -> ExitCode {
    let p = prefix(&common);
    let users = users.div_ceil(2) * 2;
    let mut tasks = vec![];
    for pair in 0..users / 2 {
        let a = format!("{p}-{}", pair * 2);
        let b = format!("{p}-{}", pair * 2 + 1);
        let conv = format!("{p}-c{pair}");
        if let Err(e) = put_conversation(&common, &conv, &[a.clone(), b.clone()]).await {
            eprintln!("heartline-load: {e}");
            return ExitCode::FAILURE;
        }
        for (k, u) in [a, b].into_iter().enumerate() {
            let (common, conv) = (common.clone(), conv.clone());
            tasks.push(tokio::spawn(pairs_user(
                common,
                pair * 2 + k,
                u,
                conv,
                messages,
                in_flight,
                size,
            )));
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
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed;
    report(
        &[
            ("scenario", "pairs".into()),
            ("users", format!("{users} ({failures} failed)")),
            ("acked", latencies.len().to_string()),
            ("acks/s", format!("{rate:.0}")),
            (
                "ack latency",
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms",
                    ms(percentile(&latencies, 0.5)),
                    ms(percentile(&latencies, 0.99))
                ),
            ),
        ],
        json!({
            "scenario": "pairs", "users": users, "failed_users": failures,
            "acked": latencies.len(), "elapsed_secs": elapsed, "acks_per_sec": rate,
            "ack_p50_ms": ms(percentile(&latencies, 0.5)),
            "ack_p99_ms": ms(percentile(&latencies, 0.99)),
            "ack_max_ms": ms(latencies.last().copied().unwrap_or_default()),
        }),
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = base();
    let cli = Cli::parse();
    match cli.common.addr {
        SocketAddr::V4(a) if a.ip().octets()[0] == 127 => {}
        other => {
            eprintln!("heartline-load: {other} is not in 127.0.0.0/8; loopback only");
            return ExitCode::from(2);
        }
    }
    let common = Arc::new(cli.common);
    match cli.scenario {
        Scenario::Pairs {
            users,
            messages,
            in_flight,
            size,
        } => pairs(common, users, messages, in_flight, size).await,
        Scenario::Idle {
            conns,
            hold_secs,
            connect_secs,
            ready_file,
            stop_file,
        } => {
            idle(
                common,
                conns,
                Duration::from_secs(hold_secs),
                connect_secs,
                ready_file,
                stop_file,
            )
            .await
        }
        Scenario::Chat {
            groups,
            members,
            secs,
            warmup_secs,
            in_flight,
            rate,
            size,
        } => {
            chat(
                common,
                groups,
                members,
                secs,
                warmup_secs,
                in_flight,
                rate,
                size,
            )
            .await
        }
        Scenario::Storm {
            conns,
            timeout_secs,
            ready_file,
        } => storm(common, conns, timeout_secs, ready_file).await,
        Scenario::Deadpeers {
            conns,
            timeout_secs,
        } => deadpeers(common, conns, timeout_secs).await,
    }
}
