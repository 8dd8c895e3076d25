//! The gateway alone, without I/O: how many `message:send` events per second go through
//! validation, the rate limit, the (instantly completed) store effect and the fan-out to a
//! 10-member conversation; and how many bytes of core state an idle connection and a user
//! cost. The byte figures come from a counting allocator and are printed before the timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heartline_core::codec::Frame;
use heartline_core::engine::{self, EngineConfig, Handshake, Query};
use heartline_core::gateway::auth::{issue, Claims};
use heartline_core::gateway::{
    AppendOutcome, BudgetConfig, Effect, Gateway, GatewayConfig, Input, Member, Message, Output,
};
use heartline_core::{Instant, TransportId};

/// Counts live heap bytes, so state size can be read as a difference.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SECRET: &[u8] = b"bench-secret";
const MEMBERS: usize = 10;

fn config() -> GatewayConfig {
    GatewayConfig {
        engine: EngineConfig {
            seed: heartline_core::Seed::from(1),
            ..EngineConfig::default()
        },
        jwt_secret: SECRET.to_vec(),
        // The benchmark measures the send path, not the limiter's refusals.
        rate_messages: usize::MAX / 2,
        event_budget: BudgetConfig {
            burst: u32::MAX / 2,
            per_second: u32::MAX / 2,
            refusal_milli: 1000,
        },
        ..GatewayConfig::default()
    }
}

fn text(s: String) -> Frame {
    Frame::Text(Bytes::from(s))
}

/// A gateway with `users` connected users (one connection each); when `conversations`,
/// users are grouped ten to a conversation and join it.
fn populate(users: usize, conversations: bool) -> Gateway {
    let mut g = Gateway::new(config(), Instant::ZERO).expect("config");
    if conversations {
        for c in 0..users / MEMBERS {
            let members = (0..MEMBERS)
                .map(|m| Member {
                    user_id: format!("u{}", c * MEMBERS + m),
                    user_type: "customer".into(),
                })
                .collect();
            g.handle_input(
                Instant::ZERO,
                Input::ConversationPut {
                    id: format!("c{c}"),
                    members,
                    last_seq: 0,
                },
            )
            .expect("put");
        }
    }
    for u in 0..users {
        let t = TransportId(u as u64);
        let token = issue(
            SECRET,
            &Claims {
                sub: format!("u{u}"),
                user_type: "customer".into(),
                exp: 4_000_000_000,
                role: None,
            },
        )
        .expect("sign");
        let inputs = [
            engine::Input::WsOpened {
                transport: t,
                query: Query {
                    eio: Some("4".into()),
                    transport: Some("websocket".into()),
                    sid: None,
                },
                handshake: Handshake::default(),
            },
            engine::Input::WsFrame {
                transport: t,
                frame: text(format!(r#"40/chat,{{"token":"{token}"}}"#)),
            },
        ];
        for i in inputs {
            g.handle_input(Instant::ZERO, Input::Network(i))
                .expect("input");
        }
        if conversations {
            let join = format!(
                r#"42/chat,1["conversation:join",{{"conversationId":"c{}"}}]"#,
                u / MEMBERS
            );
            g.handle_input(
                Instant::ZERO,
                Input::Network(engine::Input::WsFrame {
                    transport: t,
                    frame: text(join),
                }),
            )
            .expect("input");
        }
        while g.poll_output().is_some() {}
    }
    g
}

fn state_size() {
    for users in [1_000usize, 10_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let g = populate(users, false);
        let after = LIVE.load(Ordering::Relaxed);
        let engine_only = {
            let b = LIVE.load(Ordering::Relaxed);
            let mut e = engine::Engine::new(EngineConfig::default()).expect("config");
            for u in 0..users {
                let t = TransportId(u as u64);
                e.handle_input(
                    Instant::ZERO,
                    engine::Input::WsOpened {
                        transport: t,
                        query: Query {
                            eio: Some("4".into()),
                            transport: Some("websocket".into()),
                            sid: None,
                        },
                        handshake: Handshake::default(),
                    },
                )
                .expect("open");
                while e.poll_output().is_some() {}
            }
            let a = LIVE.load(Ordering::Relaxed);
            drop(e);
            a - b
        };
        println!(
            "state: {users} idle authenticated connections = {} bytes each \
             (engine session alone {} bytes; the rest is the gateway's connection and user)",
            (after - before) / users as isize,
            engine_only / users as isize
        );
        drop(g);
    }
}

/// Bytes of core state per conversation membership: 20,000 conversations of 5 members
/// drawn from 10,000 users (each user in 10 conversations), with ids as long as UUIDs.
fn membership_size() {
    let users = 10_000usize;
    let conversations = 20_000usize;
    let per = 5usize;
    let before = LIVE.load(Ordering::Relaxed);
    let mut g = Gateway::new(config(), Instant::ZERO).expect("config");
    let empty = LIVE.load(Ordering::Relaxed);
    for c in 0..conversations {
        let members = (0..per)
            .map(|m| Member {
                user_id: format!("user-{:031}", (c * 7 + m * 1_999) % users),
                user_type: "customer".into(),
            })
            .collect();
        g.handle_input(
            Instant::ZERO,
            Input::ConversationPut {
                id: format!("conv-{c:031}"),
                members,
                last_seq: 0,
            },
        )
        .expect("put");
        while g.poll_output().is_some() {}
    }
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "state: {conversations} conversations x {per} members of {users} users = {} bytes \
         per membership (empty gateway {} bytes)",
        (after - empty) / (conversations * per) as isize,
        empty - before
    );
    drop(g);
}

/// One `message:send` through the gateway: parse, check, admit, store (completed at
/// once), acknowledge and fan out to the room.
fn send_path(c: &mut Criterion) {
    state_size();
    membership_size();
    let users = 1_000;
    let mut g = populate(users, true);
    let mut seqs = vec![0u64; users / MEMBERS];
    let mut now = Instant::ZERO;
    let mut i = 0usize;
    let mut group = c.benchmark_group("gateway");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));
    group.bench_function("message_send_persist_fanout_10_members", |b| {
        b.iter(|| {
            let u = i % users;
            i += 1;
            now = now.add_ms(1);
            let frame = text(format!(
                r#"42/chat,7["message:send",{{"conversationId":"c{}","content":"hello there, how are you?","tempId":"t{i}"}}]"#,
                u / MEMBERS
            ));
            g.handle_input(
                now,
                Input::Network(engine::Input::WsFrame {
                    transport: TransportId(u as u64),
                    frame,
                }),
            )
            .expect("input");
            let mut deliveries = 0;
            while let Some(out) = g.poll_output() {
                match out {
                    Output::Effect(Effect::Append { op, request }) => {
                        let conv = u / MEMBERS;
                        seqs[conv] += 1;
                        let m = Message {
                            id: request.id,
                            conversation_id: request.conversation_id,
                            seq: seqs[conv],
                            sender_id: request.sender_id,
                            sender_type: request.sender_type,
                            content: request.content,
                            temp_id: request.temp_id,
                            created_at_ms: request.created_at_ms,
                        };
                        g.handle_input(
                            now,
                            Input::Appended {
                                op,
                                result: Ok(AppendOutcome::Stored(m)),
                            },
                        )
                        .expect("appended");
                    }
                    Output::Transmit(t) => {
                        deliveries += 1;
                        black_box(t);
                    }
                    _ => {}
                }
            }
            deliveries
        })
    });
    group.finish();
}

criterion_group!(benches, send_path);
criterion_main!(benches);
