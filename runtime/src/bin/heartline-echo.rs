//! `heartline-echo`: the echo server of the official Engine.IO v4 and Socket.IO v5 protocol
//! test suites, on Heartline's engine and runtime (see `heartline_runtime::echo`).
//!
//! `heartline-echo [--engine-io] [--listen ADDR]`. Default: Socket.IO on `/socket.io/`
//! with namespaces `/` and `/custom`; `--engine-io`: plain Engine.IO on `/engine.io/`.
//! Settings are the suites' (ping 300/200 ms, 1 MB payloads, 1 s connect timeout, CORS
//! `*`). SIGTERM or SIGINT stops it.

use std::process::ExitCode;

use clap::Parser;
use heartline_runtime::echo::{self, EchoMode};
use tracing_subscriber::EnvFilter;

/// Echo server for the Engine.IO / Socket.IO protocol test suites.
#[derive(Debug, Parser)]
#[command(name = "heartline-echo", version, about)]
struct Args {
    /// Plain Engine.IO on /engine.io/ instead of Socket.IO on /socket.io/.
    #[arg(long)]
    engine_io: bool,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let mode = if args.engine_io {
        EchoMode::EngineIo
    } else {
        EchoMode::SocketIo
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heartline-echo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(echo::suite_config(&args.listen), mode))
}

async fn run(config: heartline_runtime::Config, mode: EchoMode) -> ExitCode {
    let handle = match echo::start(config, mode).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("heartline-echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "heartline-echo listening on http://{}{}",
        handle.local_addr(),
        mode.path()
    );
    if let Err(e) = wait_for_signal().await {
        eprintln!("heartline-echo: cannot wait for signals: {e}");
        return ExitCode::FAILURE;
    }
    handle.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
