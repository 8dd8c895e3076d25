//! `heartline-sim`: run one seed, or a swarm of seeds, of Heartline's deterministic
//! simulator. Exits non-zero on any violated invariant.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant as WallClock;

use clap::{Parser, Subcommand};
use heartline_sim::{FaultKind, Options, Report, Sim};

#[derive(Parser)]
#[command(
    name = "heartline-sim",
    about = "Heartline's deterministic fault-injection simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one seed.
    Run {
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Honest clients (devices).
        #[arg(long)]
        clients: Option<usize>,
        /// Safety phase length, simulated seconds.
        #[arg(long)]
        duration: Option<u64>,
        /// Faults to inject: `all`, `none`, or a list such as `partition,crash,storefail`.
        #[arg(long)]
        faults: Option<String>,
        /// Percent of honest devices whose tokens expire during the run.
        #[arg(long)]
        expiring: Option<u64>,
        /// Percent of honest devices on long-polling rather than a WebSocket.
        #[arg(long)]
        polling: Option<u64>,
        /// Derive the other knobs from the seed, as `swarm` does.
        #[arg(long)]
        swarm: bool,
        /// Write the whole trace to this file.
        #[arg(long)]
        trace: Option<String>,
        /// Switch on one of the core's deliberate bugs (builds with feature `mutations`).
        #[arg(long)]
        mutation: Option<String>,
    },
    /// Run a range of seeds, each with knobs derived from it, and report the failing ones.
    Swarm {
        /// Seeds, as `A..B` (B excluded).
        #[arg(long)]
        seeds: String,
        /// Most honest clients per seed.
        #[arg(long, default_value_t = 12)]
        clients: usize,
        /// Longest safety phase per seed, simulated seconds.
        #[arg(long, default_value_t = 120)]
        duration: u64,
        /// Switch on one of the core's deliberate bugs (builds with feature `mutations`).
        #[arg(long)]
        mutation: Option<String>,
    },
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let a = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    Ok((a, b))
}

#[cfg(feature = "mutations")]
fn apply_mutation(opts: &mut Options, name: &str) -> Result<(), String> {
    match name {
        "ack-before-persist" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.ack_before_persist = true)
        }
        "fixed-window" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.fixed_window_limiter = true)
        }
        "close-unregisters-successor" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.close_unregisters_successor = true)
        }
        "no-ping-timeout" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.no_ping_timeout = true)
        }
        "any-user-may-read" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.any_user_may_read = true)
        }
        "expired-tokens-accepted" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.expired_tokens_accepted = true)
        }
        "no-offline-grace" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.no_offline_grace = true)
        }
        "presence-to-everyone" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.presence_to_everyone = true)
        }
        "offline-frames-lost" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.offline_frames_lost = true)
        }
        "expired-connections-kept" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.expired_connections_kept = true)
        }
        "no-handshake-timeout" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.no_handshake_timeout = true)
        }
        "handshake-not-rearmed" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.handshake_not_rearmed = true)
        }
        "refresh-any-user" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.refresh_any_user = true)
        }
        "heartbeat-not-rearmed" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.heartbeat_not_rearmed = true)
        }
        "any-hmac-accepted" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.any_hmac_accepted = true)
        }
        "offline-grace-in-seconds" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.offline_grace_in_seconds = true)
        }
        "success-not-sent" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.success_not_sent = true)
        }
        "replaced-closed-not-disconnected" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.replaced_closed_not_disconnected = true)
        }
        "replaced-left-connected" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.replaced_left_connected = true)
        }
        "pong-leaves-deadline-armed" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.pong_leaves_deadline_armed = true)
        }
        "presence-to-one-device" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.presence_to_one_device = true)
        }
        "close-with-last-packets" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.close_with_last_packets = true)
        }
        "poll-answers-first-only" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.poll_answers_first_only = true)
        }
        "fan-out-skips-sender" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.fan_out_skips_sender = true)
        }
        "queue-sheds-anything" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.queue_sheds_anything = true)
        }
        "removed-members-stay-in-room" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.removed_members_stay_in_room = true)
        }
        "refresh-keeps-grace" => {
            opts.gateway_hook = Some(|c| c.engine.mutations.refresh_keeps_grace = true)
        }
        "retry-refused-at-once" => {
            opts.client_hook = Some(|c| c.mutations.retry_refused_at_once = true)
        }
        "reconnect-at-once" => opts.client_hook = Some(|c| c.mutations.reconnect_at_once = true),
        "client-trusts-silence" => {
            opts.client_hook = Some(|c| c.mutations.client_trusts_silence = true)
        }
        "reconnect-after-replaced" => {
            opts.client_hook = Some(|c| c.mutations.reconnect_after_replaced = true)
        }
        other => return Err(format!("unknown mutation {other:?}")),
    }
    Ok(())
}

#[cfg(not(feature = "mutations"))]
fn apply_mutation(_: &mut Options, name: &str) -> Result<(), String> {
    Err(format!(
        "mutation {name:?} needs a build with `--features mutations`"
    ))
}

fn run_one(opts: Options, trace: Option<&str>, rerun: String) -> Result<Report, String> {
    let sink: Option<Box<dyn Write>> = match trace {
        Some(path) => Some(Box::new(BufWriter::new(
            File::create(path).map_err(|e| format!("{path}: {e}"))?,
        ))),
        None => None,
    };
    let sim = Sim::new(opts, None, sink)?;
    let mut report = sim.run();
    report.rerun = rerun;
    Ok(report)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<bool, String> {
    match cli.command {
        Command::Run {
            seed,
            clients,
            duration,
            faults,
            expiring,
            polling,
            swarm,
            trace,
            mutation,
        } => {
            let mut opts = if swarm {
                Options::swarm(seed, clients.unwrap_or(12), duration.unwrap_or(120) * 1000)
            } else {
                let mut o = Options::new(seed);
                if let Some(n) = clients {
                    o.clients = n;
                    o.hostile = (n / 10).max(1);
                }
                if let Some(d) = duration {
                    o.duration_ms = d * 1000;
                }
                o
            };
            if let Some(list) = &faults {
                opts.faults = FaultKind::parse_list(list)?;
            }
            if let Some(pct) = expiring {
                opts.expiring_pct = pct.min(100);
            }
            if let Some(pct) = polling {
                opts.polling_pct = pct.min(100);
            }
            if let Some(m) = &mutation {
                apply_mutation(&mut opts, m)?;
            }
            let mut rerun = format!("heartline-sim run --seed {seed}");
            for (flag, value) in [
                ("--clients", clients.map(|v| v.to_string())),
                ("--duration", duration.map(|v| v.to_string())),
                ("--faults", faults.clone()),
                ("--expiring", expiring.map(|v| v.to_string())),
                ("--polling", polling.map(|v| v.to_string())),
                ("--mutation", mutation.clone()),
            ] {
                if let Some(v) = value {
                    rerun.push_str(&format!(" {flag} {v}"));
                }
            }
            if swarm {
                rerun.push_str(" --swarm");
            }
            let started = WallClock::now();
            let report = run_one(opts, trace.as_deref(), rerun)?;
            let wall = started.elapsed().as_secs_f64();
            print!("{report}");
            println!(
                "wall {:.2}s | {:.0} simulated events per wall second",
                wall,
                report.events as f64 / wall.max(1e-9)
            );
            Ok(report.ok())
        }
        Command::Swarm {
            seeds,
            clients,
            duration,
            mutation,
        } => {
            let (a, b) = parse_range(&seeds)?;
            let mut failing = vec![];
            for seed in a..b {
                let mut opts = Options::swarm(seed, clients, duration * 1000);
                if let Some(m) = &mutation {
                    apply_mutation(&mut opts, m)?;
                }
                println!("SEED={seed} {}", opts.knobs());
                let rerun = format!(
                    "heartline-sim run --seed {seed} --swarm --clients {clients} --duration {duration}{}",
                    mutation
                        .as_ref()
                        .map(|m| format!(" --mutation {m}"))
                        .unwrap_or_default()
                );
                let report = run_one(opts, None, rerun)?;
                match &report.violation {
                    None => println!(
                        "  ok: {} events, {} faults, {} acked, slow consumers {} shed / {} dropped, hash {:016x}",
                        report.events,
                        report.faults,
                        report.acked,
                        report.slow_consumers.0,
                        report.slow_consumers.2,
                        report.trace_hash
                    ),
                    Some(v) => {
                        println!("  FAILED {v}");
                        println!("  reproduce: {}", report.rerun);
                        failing.push(seed);
                    }
                }
            }
            println!(
                "swarm {a}..{b}: {} of {} seeds failed{}",
                failing.len(),
                b.saturating_sub(a),
                if failing.is_empty() {
                    String::new()
                } else {
                    format!(": {failing:?}")
                }
            );
            Ok(failing.is_empty())
        }
    }
}
