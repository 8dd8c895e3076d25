//! `heartline`: the chat gateway server.
//!
//! `heartline [--config FILE] [--listen ADDR]`. Without a file every key has its contract
//! default; `HEARTLINE_JWT_SECRET` and `HEARTLINE_API_KEY` override the secrets. A bad
//! configuration is reported naming its key, with exit code 2. With no JWT secret it runs in
//! dev mode and prints tokens to chat with. SIGTERM or SIGINT drains and exits 0; a second
//! signal during the drain exits at once with 1. `TOKIO_WORKER_THREADS` sets the async
//! runtime's worker threads (default: the cores less one, at least one).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use heartline_runtime::config::{Config, ConfigError, ENV_API_KEY, ENV_JWT_SECRET};
use heartline_runtime::{dev, server};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

// mimalloc rather than the system allocator: with glibc's malloc, allocation and free
// were a fifth of the server's CPU time when saturated (profiled with perf), and it packs
// small long-lived objects more tightly. Its v2 (the workspace's `v2` feature), not v3:
// v3's size classes made an idle connection ~15 % larger.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h` of its v2; the sys crate names no
/// constant for it): milliseconds that freed memory stays committed before it is given
/// back to the system.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system at once. mimalloc runs a delayed purge only when
/// the thread that owns the memory allocates or frees again, and a worker whose
/// connections are all idle may do neither for hours: what a burst of handshakes freed
/// (HTTP buffers, upgrade state) then stays in the process. With the default delay, VmRSS
/// per idle connection varied from 1.5 to 2.3 KB between runs of 10,000; at once, 1.42 to
/// 1.45 KB, with saturation CPU per delivery unchanged within the noise.
fn give_freed_memory_back_at_once() {
    // SAFETY: sets one of mimalloc's integer options, which it allows at any time from any
    // thread; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// Heartline: a Socket.IO-compatible chat gateway.
#[derive(Debug, Parser)]
#[command(name = "heartline", version, about)]
struct Args {
    /// TOML configuration file; every key has a default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides server.listen), e.g. 127.0.0.1:3002.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

/// Exit code for a configuration error.
const EXIT_CONFIG: u8 = 2;

/// The file, then the environment's secrets, then `--listen`; the values are checked
/// once, after every override, so that an override can stand in for a bad value.
fn load(args: &Args) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    config.apply_env(|key| std::env::var(key))?;
    if let Some(listen) = &args.listen {
        config.server.listen = listen.clone();
    }
    config.validate().map_err(|e| {
        let from_env = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let mut e = e;
        if args.listen.is_some() {
            e = e.given_as("server.listen", "--listen");
        }
        if from_env(ENV_API_KEY) {
            e = e.given_as("api.key", ENV_API_KEY);
        }
        if from_env(ENV_JWT_SECRET) {
            e = e.given_as("auth.jwt_secret", ENV_JWT_SECRET);
        }
        e
    })?;
    Ok(config)
}

/// What `RUST_LOG` asks for, `info` where it names no rule at all (unset, empty, `,`: a
/// deployment template that passes the variable through empty would otherwise get a filter
/// that lets nothing through, warnings and errors included), each rule read without the
/// spaces around it (`"warn "` would be a target named so), and `info` with a word on
/// stderr when it is not a filter (its valid rules go with the bad one).
fn log_filter() -> EnvFilter {
    let rules = std::env::var("RUST_LOG")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse(&rules)
        .unwrap_or_else(|e| {
            eprintln!("heartline: RUST_LOG={rules:?} is not a log filter ({e}); logging at info");
            EnvFilter::new("info")
        })
}

/// Log lines that may wait for the log's writer thread before more are dropped. The
/// queue is allocated whole at start, 32 bytes a line, and its pages are all written
/// then: tracing-appender's default of 128,000 lines held 4 MB of every server's memory
/// from its first second. Client-caused lines are paced (`log_pace`), so a backlog this
/// long means the reader of stderr has stopped, not a burst.
const LOG_LINES_WAITING: usize = 16_384;

/// The environment variable that sets the number of worker threads (tokio's own name).
const ENV_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

/// Most worker threads `TOKIO_WORKER_THREADS` may ask for. Far more than any machine this
/// runs on has cores; a larger number is a typo, and tokio would panic on some (it could
/// not start that many threads, or its thread count overflowed).
const MAX_WORKER_THREADS: usize = 1024;

/// Worker threads for the async runtime, and what chose them (for the start-up line):
/// `TOKIO_WORKER_THREADS` if set to anything but blanks, else one fewer than the cores (at
/// least one, and one if they could not be counted).
///
/// The workers run the connections' tasks and the core's actor; the store has a thread of
/// its own that needs about a core at saturation (its commits, the log's writes and
/// flushes), and a worker for every core put three busy threads on two. Measured on 2
/// cores (7 alternated pairs of fresh servers, one worker against two; see the
/// benchmarks' findings): CPU per 1,000 deliveries at saturation 2.04–2.58 ms (median
/// 2.36) against 2.02–2.84 (2.79), and at 500 sends/s an ack p99 of 0.86–1.07 ms (median
/// 0.91) against 0.83–1.16 (1.08).
///
/// Tokio panics on a value it cannot read; read here, it is a configuration error. A
/// blank value counts as unset, as an empty `RUST_LOG` or secret variable does (a
/// deployment template may pass one through empty).
fn worker_threads(
    env: Option<std::ffi::OsString>,
    cores: Option<std::num::NonZeroUsize>,
) -> Result<(usize, &'static str), String> {
    let default = || match cores {
        Some(n) => (n.get().saturating_sub(1).max(1), "the cores less one"),
        None => (1, "one: the cores could not be counted"),
    };
    let Some(v) = env else {
        return Ok(default());
    };
    match v.to_str().map(str::trim) {
        Some("") => Ok(default()),
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_WORKER_THREADS).contains(n))
            .map(|n| (n, ENV_WORKER_THREADS))
            .ok_or_else(|| {
                format!(
                    "{ENV_WORKER_THREADS}={v:?} is not a number of threads from 1 to \
                     {MAX_WORKER_THREADS}"
                )
            }),
        None => Err(format!("{ENV_WORKER_THREADS}={v:?} is not valid Unicode")),
    }
}

fn main() -> ExitCode {
    give_freed_memory_back_at_once();
    let args = Args::parse();
    // Lines go to stderr from a thread of their own: a log reader that falls behind must
    // not block the thread that logged (the core's actor, say, and with it every session).
    // Past `LOG_LINES_WAITING` lines waiting, lines are dropped instead. Kept until `main`
    // returns, which writes what is still waiting.
    let (stderr, _flush_at_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_WAITING)
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let mut config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("heartline: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let cores = std::thread::available_parallelism().ok();
    let (workers, workers_from) = match worker_threads(std::env::var_os(ENV_WORKER_THREADS), cores)
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("heartline: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dev_users = if config.auth.jwt_secret.is_empty() {
        match dev::prepare(&mut config) {
            Ok(users) => Some(users),
            Err(e) => {
                eprintln!("heartline: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    tracing::info!(workers, from = workers_from, "runtime worker threads");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("heartline")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heartline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config, dev_users));
    // The server has stopped, with every wait bounded; a blocking task still running
    // (the join of a store thread stuck behind a database another process holds
    // locked) must not keep the process alive past that bound. Nothing it holds was
    // acknowledged: acks go out only after the log is flushed.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

async fn run(config: Config, dev_users: Option<Vec<dev::DevUser>>) -> ExitCode {
    // Before the listener's socket bound is worked out from it.
    match heartline_runtime::admission::raise_open_file_limit() {
        Ok(Some((before, after))) => {
            tracing::info!(before, after, "open-file limit raised to the hard limit");
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    // Before the store opens: a file-size limit reached must fail a write, not kill us.
    #[cfg(unix)]
    if let Err(e) = ignore_stray_signals() {
        eprintln!("heartline: cannot listen for signals: {e}");
        return ExitCode::FAILURE;
    }
    // Listened to from before the server starts, once: a SIGTERM that comes as soon as the
    // port is open (a restart right after a start) drains like any other instead of
    // killing the process by its default action; and a second signal that comes right
    // after the first (SIGTERM and SIGINT together) is not lost between two listeners.
    let mut signals = match Signals::listen() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("heartline: cannot wait for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let namespace = config.server.namespace.clone();
    // Dev mode's conversation is put once the port is held, so that a start that cannot
    // have it writes nothing.
    let setup = dev_users
        .is_some()
        .then(|| Box::new(dev::put_conversation) as server::StoreSetup);
    let handle = match server::start_with(config, setup).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("heartline: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = handle.local_addr();
    // Written, not printed: `println!` panics when stdout is a pipe whose reader is gone
    // (`heartline | head -1`), and the server must go on serving then.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Some(users) = dev_users {
            let _ = writeln!(
                out,
                "{}",
                dev::banner(&users, &addr.to_string(), &namespace)
            );
        }
        let _ = writeln!(out, "heartline listening on http://{addr}");
        let _ = out.flush();
    }
    signals.next().await;
    tokio::select! {
        _ = handle.shutdown() => ExitCode::SUCCESS,
        _ = signals.next() => {
            eprintln!("heartline: second signal, exiting without finishing the drain");
            ExitCode::FAILURE
        }
    }
}

/// Signals whose default action would end the process at once, with no drain and no
/// word in the log: SIGHUP (sent by terminals closing and by log rotation set up for
/// daemons that reopen their files; Heartline logs to stderr and has nothing to reload),
/// SIGUSR1 and SIGUSR2, each logged and otherwise ignored; and SIGXFSZ, sent when a write
/// would grow a file past the process's file-size limit (`ulimit -f`): ignored, that write
/// fails instead (EFBIG) and the store answers it as the failure it is (`internal`, as
/// for a full disk) rather than the process dying on every restart.
#[cfg(unix)]
fn ignore_stray_signals() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut xfsz = signal(SignalKind::from_raw(libc::SIGXFSZ))?;
    tokio::spawn(async move {
        // Every write past the limit signals: said once a minute at most.
        let mut said: Option<tokio::time::Instant> = None;
        loop {
            let name = tokio::select! {
                Some(()) = hup.recv() => "SIGHUP",
                Some(()) = usr1.recv() => "SIGUSR1",
                Some(()) = usr2.recv() => "SIGUSR2",
                Some(()) = xfsz.recv() => {
                    let now = tokio::time::Instant::now();
                    if said.is_none_or(|t| now >= t + std::time::Duration::from_secs(60)) {
                        said = Some(now);
                        tracing::warn!(
                            "SIGXFSZ: a file reached the process's file-size limit \
                             (ulimit -f); its writes fail and the store reports them"
                        );
                    }
                    continue;
                }
                else => return,
            };
            tracing::info!("{name} received and ignored (SIGTERM or SIGINT stops the server)");
        }
    });
    Ok(())
}

/// The signals that stop the server: SIGTERM and SIGINT (Ctrl-C elsewhere).
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn listen() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal (each is seen once, however close together they come).
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn listen() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_leave_a_core_to_the_store_unless_told() {
        let cores = |n: usize| std::num::NonZeroUsize::new(n);
        const LESS_ONE: &str = "the cores less one";
        const ENV: &str = "TOKIO_WORKER_THREADS";
        assert_eq!(worker_threads(None, cores(1)), Ok((1, LESS_ONE)));
        assert_eq!(worker_threads(None, cores(2)), Ok((1, LESS_ONE)));
        assert_eq!(worker_threads(None, cores(8)), Ok((7, LESS_ONE)));
        assert_eq!(
            worker_threads(None, None),
            Ok((1, "one: the cores could not be counted"))
        );
        assert_eq!(worker_threads(Some("4".into()), cores(2)), Ok((4, ENV)));
        assert_eq!(worker_threads(Some(" 2 ".into()), cores(8)), Ok((2, ENV)));
        assert_eq!(
            worker_threads(Some("1024".into()), cores(2)),
            Ok((1024, ENV))
        );
        // Blank is unset.
        assert_eq!(worker_threads(Some("".into()), cores(4)), Ok((3, LESS_ONE)));
        assert_eq!(
            worker_threads(Some("  ".into()), cores(4)),
            Ok((3, LESS_ONE))
        );
        let huge = usize::MAX.to_string();
        for bad in ["0", "two", "-1", "1.5", "1025", huge.as_str()] {
            let e = worker_threads(Some(bad.into()), cores(2)).unwrap_err();
            assert!(e.contains("TOKIO_WORKER_THREADS"), "{e}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let e = worker_threads(
                Some(std::ffi::OsString::from_vec(vec![b'2', 0xff])),
                cores(2),
            )
            .unwrap_err();
            assert!(e.contains("not valid Unicode"), "{e}");
        }
    }

    /// The option number is mimalloc's purge delay: its documented default is 10 ms, and
    /// the options beside it (the eager commit delay, 1; NUMA nodes, 0) differ.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads an integer option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 10);
    }
}
