//! End to end against the real `heartline` binary: configuration errors, SIGTERM drain,
//! and `kill -9` followed by a restart with no acknowledged message lost or duplicated.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_heartline");

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("heartline.toml");
    let db = dir.join("heartline.db");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\njwt_secret = \"{SECRET}\"\n[api]\nkey = \"{API_KEY}\"\n[store]\npath = \"{}\"\n{extra}",
        db.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Waits at most `within` for the process to exit (`why` names the bound if it does not),
/// and expects exit code 0.
async fn exits_0(child: &mut Child, within: Duration, why: &str) {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect(why)
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// Replaces `from` (which must be there) with `to` in the configuration file at `path`.
fn edit_config(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read config");
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(path, text.replace(from, to)).expect("write config");
}

/// Starts the binary and waits for its "listening on" line.
async fn spawn(config: &Path) -> (Child, SocketAddr) {
    spawn_with(config, &[]).await
}

/// [`spawn`] with more command-line arguments.
async fn spawn_with(config: &Path, args: &[&str]) -> (Child, SocketAddr) {
    let (child, addr, _) = spawn_reading(config, args).await;
    (child, addr)
}

/// [`spawn_with`], also returning what the binary printed before it listened.
async fn spawn_reading(config: &Path, args: &[&str]) -> (Child, SocketAddr, Vec<String>) {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    spawn_command(command).await
}

/// Starts `command` (the binary, or a shell that execs it; its stderr as the caller set
/// it) and waits for its "listening on" line: the child, its address, and what it printed
/// on stdout before.
async fn spawn_command(mut command: Command) -> (Child, SocketAddr, Vec<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn heartline");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut before = vec![];
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("heartline listening on http://") {
                return rest.trim().parse::<SocketAddr>().expect("address");
            }
            before.push(line);
        }
        panic!("heartline exited before listening");
    })
    .await
    .expect("heartline listens in time");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, before)
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisen = \"127.0.0.1:1\"\n").expect("write");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.lisen"), "{stderr}");

    std::fs::write(&path, "[engine]\nping_interval_ms = 0\n").expect("write");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("engine.ping_interval_ms"));

    // A bad address given on the command line is reported as the option's.
    let out = Command::new(BIN)
        .arg("--listen")
        .arg("nowhere")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--listen") && stderr.contains("\"nowhere\""),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));

    // A worker count tokio could not read (it would panic) is a configuration error.
    let stderr = env_config_error("TOKIO_WORKER_THREADS", "0".into()).await;
    assert!(
        stderr.contains("TOKIO_WORKER_THREADS") && !stderr.contains("panicked"),
        "{stderr}"
    );

    // A secret the environment holds but cannot give as text is refused, not ignored.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        let secret = std::ffi::OsString::from_vec(vec![b's', 0xff, b'k']);
        let stderr = env_config_error("HEARTLINE_JWT_SECRET", secret).await;
        assert!(stderr.contains("HEARTLINE_JWT_SECRET"), "{stderr}");
    }
}

/// Starts the binary with one environment variable set and expects a configuration
/// error (exit 2) at once; returns its stderr. Were the variable ignored, the server would
/// start and run: the wait is bounded, not hung.
async fn env_config_error(name: &str, value: std::ffi::OsString) -> String {
    let run = Command::new(BIN)
        .env(name, value)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("exits at once")
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn listen_on_the_command_line_stands_in_for_the_files_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "");
    // The file's address is not one at all: only the override can make this start.
    edit_config(&path, "listen = \"127.0.0.1:0\"", "listen = \"nowhere\"");
    let (mut child, addr) = spawn_with(&path, &["--listen", "127.0.0.2:0"]).await;
    assert_eq!(addr.ip().to_string(), "127.0.0.2");
    let (status, body) = put_conversation(addr, "c1", &["u0:customer"]).await;
    assert_eq!(status, 200, "served there: {body}");
    signal(&child, "TERM");
    exits_0(&mut child, Duration::from_secs(20), "exits").await;
}

#[tokio::test]
async fn with_no_secret_the_printed_dev_tokens_connect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "");
    edit_config(
        &path,
        &format!("jwt_secret = \"{SECRET}\""),
        "jwt_secret = \"\"",
    );
    let (child, addr, printed) = spawn_reading(&path, &[]).await;
    let tokens: Vec<(String, String)> = printed
        .iter()
        .filter_map(|l| {
            let (user, token) = l.trim().split_once("  token: ")?;
            Some((user.to_owned(), token.trim().to_owned()))
        })
        .collect();
    assert!(tokens.len() >= 2, "{printed:?}");
    for (user, token) in &tokens {
        let opts = heartline_runtime::client::ClientOptions::with_token(token);
        let mut c = heartline_runtime::client::connect(addr, opts)
            .await
            .expect("connect")
            .client()
            .expect("the printed token is taken");
        let ok = c.wait_event("connection:success").await.expect("success");
        assert_eq!(
            format!(
                "{}:{}",
                ok["userId"].as_str().unwrap_or(""),
                ok["userType"].as_str().unwrap_or("")
            ),
            *user
        );
        // And the dev conversation is theirs.
        let ack = c
            .emit_with_ack("conversation:join", json!({"conversationId": "dev"}))
            .expect("emit");
        let joined = tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .expect("in time")
            .expect("answered");
        assert_eq!(joined[0]["ok"], true, "{joined:?}");
    }
    // A token signed with the usual test secret is not: the secret was generated.
    let opts = heartline_runtime::client::ClientOptions::with_token(&token("u0", "customer", 60));
    let refused = heartline_runtime::client::connect(addr, opts)
        .await
        .expect("connect");
    assert!(
        refused.client().is_err(),
        "a token of another secret is refused"
    );
    signal(&child, "TERM");
}

/// Dev mode on an address that is taken fails before it writes anything: its conversation
/// is put only once the port is held.
#[tokio::test]
async fn dev_mode_on_an_address_in_use_creates_no_store() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir).expect("mkdir");
    let path = dir.path().join("heartline.toml");
    let text = format!(
        "[server]\nlisten = \"{}\"\n[store]\npath = \"{}\"\n",
        taken.local_addr().expect("addr"),
        store_dir.join("heartline.db").display()
    );
    std::fs::write(&path, text).expect("write config");
    let run = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        // Dev mode, whatever the environment running the tests holds.
        .env_remove("HEARTLINE_JWT_SECRET")
        .env_remove("HEARTLINE_API_KEY")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("exits at once")
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "no dev banner before the port is held"
    );
    let left: Vec<_> = std::fs::read_dir(&store_dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "files made: {left:?}");
}

/// `RUST_LOG` passed through empty (as deployment templates do), or naming no rule (`,`),
/// logs at `info`, as unset does, and a rule with spaces around it is read without them:
/// each used to be a filter that let nothing through, warnings included. One that is not
/// a filter says so and logs at `info`.
#[tokio::test]
async fn an_empty_rust_log_still_logs_warnings() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "");
    edit_config(&config, "[server]\n", "[server]\ncors_origins = []\n");
    for value in ["", ",", " warn ", "info , ", "heartline=verbose,,=x"] {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", value)
            .stderr(Stdio::piped());
        let (mut child, _, _) = spawn_command(command).await;
        signal(&child, "TERM");
        exits_0(&mut child, Duration::from_secs(10), "exits in bounded time").await;
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .await
            .expect("read stderr");
        assert!(
            stderr.contains("server.cors_origins is empty"),
            "RUST_LOG={value:?}: {stderr}"
        );
        assert_eq!(
            stderr.contains("is not a log filter"),
            value.contains("verbose"),
            "RUST_LOG={value:?}: {stderr}"
        );
    }
}

/// A soft open-file limit below the hard one is raised at start: the socket bound
/// (`heartline_tcp_connections_max`) follows the hard limit, not a default of a few
/// hundred.
#[tokio::test]
async fn a_low_soft_open_file_limit_is_raised_to_the_hard_one() {
    let hard = std::process::Command::new("sh")
        .args(["-c", "ulimit -H -n"])
        .output()
        .expect("sh");
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_owned();
    if !hard.parse::<u64>().is_ok_and(|h| h >= 2_048) {
        eprintln!("hard open-file limit {hard}: nothing this test can raise into");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "");
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -S -n 256 && exec \"$0\" --config \"$1\""])
        .arg(BIN)
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    let (mut child, addr, _) = spawn_command(command).await;
    let (_, _, metrics) = http(addr, "GET", "/metrics", &[], "").await;
    let bound = metric(&metrics, "heartline_tcp_connections_max").expect("the socket bound");
    assert!(bound > 1_024.0, "bound {bound} with hard limit {hard}");
    signal(&child, "TERM");
    exits_0(&mut child, Duration::from_secs(10), "exits in bounded time").await;
}

#[tokio::test]
async fn sigterm_drains_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "[shutdown]\ndrain_ms = 2000\n");
    let (mut child, addr) = spawn(&config).await;
    let mut clients = vec![];
    for i in 0..12 {
        clients.push(connect_as(addr, &format!("u{i}"), "customer").await);
    }
    let (status, _, _) = http(addr, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200);
    signal(&child, "TERM");
    let saw_503 = eventually(Duration::from_secs(3), || async move {
        http(addr, "GET", "/readyz", &[], "").await.0 == 503
    })
    .await;
    assert!(saw_503, "readyz 503 while draining");
    for c in &mut clients {
        let events = c.wait_closed(Duration::from_secs(5)).await.expect("closed");
        assert!(
            !events.contains(&heartline_runtime::client::ClientEvent::Disconnect),
            "{events:?}"
        );
    }
    exits_0(&mut child, Duration::from_secs(10), "exits in bounded time").await;
}

#[tokio::test]
async fn sigterm_with_the_database_locked_by_another_process_still_drains_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "[shutdown]\ndrain_ms = 2000\n");
    let (mut child, addr) = spawn(&config).await;
    let (status, body) = put_conversation(addr, "c1", &["u0:customer", "u1:customer"]).await;
    assert_eq!(status, 200, "{body}");
    let mut clients = vec![
        connect_as(addr, "u0", "customer").await,
        connect_as(addr, "u1", "customer").await,
    ];
    // Another process (an operator's shell, a backup) holds the write lock: every write
    // batch waits out the store's 5 s busy timeout.
    let lock = rusqlite::Connection::open(dir.path().join("heartline.db")).expect("open");
    lock.execute_batch("BEGIN IMMEDIATE").expect("lock");
    // Sends between reads: separate write batches, each waiting 5 s.
    let mut pending = vec![];
    for i in 0..6 {
        let c = &mut clients[i % 2];
        let send = json!({"conversationId": "c1", "content": format!("m{i}")});
        pending.push(c.emit_with_ack("message:send", send).expect("emit"));
        let read = json!({"conversationId": "c1"});
        pending.push(c.emit_with_ack("message:history", read).expect("emit"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every request is still waiting on the lock: the shutdown meets a store backlog.
    for rx in &mut pending {
        assert!(
            matches!(
                rx.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ),
            "answered (or dropped) while the lock was held"
        );
    }
    let started = tokio::time::Instant::now();
    signal(&child, "TERM");
    // The server waits for the store at most half the drain, then spreads the closes over
    // the rest. Not timed here (a wall-clock figure on this machine proves little): the
    // bounds below, 6 s per client and 20 s to exit, only tell a shutdown that gave up on
    // the backlog from one that waited it out (six batches of 5 s each, and more).
    for c in &mut clients {
        let events = c.wait_closed(Duration::from_secs(6)).await.expect("closed");
        assert!(
            !events.contains(&heartline_runtime::client::ClientEvent::Disconnect),
            "{events:?}"
        );
    }
    let closed_after = started.elapsed();
    exits_0(
        &mut child,
        Duration::from_secs(20),
        "exits in bounded time, not after the store's whole backlog",
    )
    .await;
    println!(
        "closed after {closed_after:?}, exited after {:?}",
        started.elapsed()
    );
    drop(lock);
}

/// An operator's `sqlite3` on the live database (another process that opens it, reads,
/// and closes): SQLite deletes the log when the last connection closes, and the server's
/// connection must still count as one.
#[tokio::test]
async fn another_process_reading_the_database_leaves_the_store_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "");
    let (mut child, addr) = spawn(&config).await;
    let (status, body) = put_conversation(addr, "c1", &["alice:customer"]).await;
    assert_eq!(status, 200, "{body}");
    let mut alice = connect_as(addr, "alice", "customer").await;
    let send = |i: u32| json!({"conversationId": "c1", "content": format!("m{i}"), "tempId": format!("t{i}")});
    let ack = alice.emit_ack("message:send", send(1)).await.expect("ack");
    assert_eq!(ack["ok"], true, "{ack:?}");
    // After a quiet moment: the store's checkpoints have run, none is under way.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let db = dir.path().join("heartline.db");
    for round in 0..2 {
        // The system's `sqlite3`, as an operator would run it (`tests/run.sh` installs it).
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg("SELECT COUNT(*) FROM messages;")
            .output()
            .expect("the sqlite3 command (Debian package sqlite3) runs");
        assert!(out.status.success(), "{out:?}");
        let n: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a count");
        assert!(n >= 1, "round {round}: {n}");
        assert!(
            dir.path().join("heartline.db-wal").exists(),
            "round {round}: the log was deleted under the server"
        );
        let ack = alice
            .emit_ack("message:send", send(2 + round))
            .await
            .expect("ack");
        assert_eq!(ack["ok"], true, "round {round}: {ack:?}");
        let (status, _, body) = http(addr, "GET", "/healthz", &[], "").await;
        assert_eq!(status, 200, "round {round}: {body}");
    }
    signal(&child, "TERM");
    exits_0(&mut child, Duration::from_secs(15), "exits").await;
}

#[tokio::test]
async fn kill_9_then_restart_loses_and_duplicates_no_acked_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "[rate_limit]\nmessages = 100000\nwindow_ms = 1000\n",
    );
    let (mut child, addr) = spawn(&config).await;
    let (status, body) = put_conversation(addr, "c1", &["alice:customer"]).await;
    assert_eq!(status, 200, "{body}");
    let mut alice = connect_as(addr, "alice", "customer").await;

    // Keep sends in flight and kill the server in the middle of them.
    let mut acked: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut sent: BTreeSet<String> = BTreeSet::new();
    let mut pending = vec![];
    for i in 0..=300 {
        let temp = format!("t{i}");
        let payload = json!({"conversationId": "c1", "content": format!("m{i}"), "tempId": temp});
        pending.push((
            temp.clone(),
            alice.emit_with_ack("message:send", payload).expect("emit"),
        ));
        sent.insert(temp);
        if i == 300 {
            child.start_kill().expect("kill -9");
        }
        if pending.len() >= 8 || i == 300 {
            for (temp, rx) in pending.drain(..) {
                if let Ok(Ok(args)) = tokio::time::timeout(Duration::from_secs(2), rx).await {
                    let m = &args[0]["message"];
                    if args[0]["ok"] == true {
                        let seq = m["seq"].as_u64().expect("seq");
                        acked.insert(temp, (seq, m["id"].as_str().expect("id").to_owned()));
                    }
                }
            }
        }
    }
    let _ = child.wait().await;
    assert!(
        acked.len() >= 250,
        "most sends were acked before the kill: {}",
        acked.len()
    );

    // Restart on the same store.
    let (mut child, addr) = spawn(&config).await;
    let messages = stored(addr, "c1").await;
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seq is gapless");
    let mut by_temp: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for m in &messages {
        let temp = m["tempId"].as_str().expect("tempId").to_owned();
        let entry = (
            m["seq"].as_u64().expect("seq"),
            m["id"].as_str().expect("id").to_owned(),
        );
        assert!(
            by_temp.insert(temp.clone(), entry).is_none(),
            "{temp} stored twice"
        );
    }
    for (temp, stored_as) in &acked {
        assert_eq!(
            by_temp.get(temp),
            Some(stored_as),
            "acked {temp} kept as acked"
        );
    }

    // A client resending everything it did not see acked gets each stored exactly once.
    let mut alice = connect_as(addr, "alice", "customer").await;
    for temp in sent.iter().filter(|t| !acked.contains_key(*t)) {
        let i = &temp[1..];
        let ack = alice
            .emit_ack(
                "message:send",
                json!({"conversationId": "c1", "content": format!("m{i}"), "tempId": temp}),
            )
            .await
            .expect("ack");
        assert_eq!(ack["ok"], true, "{ack}");
        assert_eq!(
            ack["duplicate"],
            by_temp.contains_key(temp),
            "{temp}: {ack}"
        );
    }
    let messages = stored(addr, "c1").await;
    assert_eq!(messages.len(), sent.len());
    let temps: BTreeSet<String> = messages
        .iter()
        .map(|m| m["tempId"].as_str().expect("tempId").to_owned())
        .collect();
    assert_eq!(temps, sent);
    signal(&child, "TERM");
    exits_0(&mut child, Duration::from_secs(10), "exits").await;
}
