//! The checkers have teeth: with one of the core's deliberate bugs switched on, a bounded
//! swarm finds a violation, and the checker that fires is the one meant for that bug.

use heartline_sim::{FaultKind, Options, Sim};

/// Runs seeds until one fails; returns the checker that fired.
fn first_violation(name: &str, seeds: u64, make: impl Fn(u64) -> Options) -> (u64, &'static str) {
    for seed in 0..seeds {
        let report = Sim::new(make(seed), None, None)
            .expect("valid options")
            .run();
        if let Some(v) = report.violation {
            return (seed, v.checker);
        }
    }
    panic!("mutation {name}: no violation in {seeds} seeds");
}

/// A swarm seed's knobs, without member lists replaced or devices frozen (the tests that
/// want them add them) and with every device on WebSocket, so that each test meets its
/// bug in the fault mixes it was written against, and where the checker meant for it
/// reads the frames of each connection (most do not on polling, see `world/polling.rs`).
fn base(seed: u64) -> Options {
    let mut o = Options::swarm(seed, 10, 60_000);
    o.faults.remove(&FaultKind::Members);
    o.faults.remove(&FaultKind::Freeze);
    o.polling_pct = 0;
    o.trace_tail = 0;
    o
}

#[test]
fn ack_before_persist_is_caught() {
    // No store faults needed: the ack is judged when the server writes it, before the
    // store has committed what it names (by the time it arrives, it usually has).
    let (seed, checker) = first_violation("ack-before-persist", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.ack_before_persist = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::message_frames::NAME);
    assert_eq!(seed, 0, "caught at once");
}

#[test]
fn fixed_window_limiter_is_caught() {
    let (_, checker) = first_violation("fixed-window", 40, |s| {
        let mut o = base(s);
        o.burst_pct = 50;
        o.gateway_hook = Some(|c| c.engine.mutations.fixed_window_limiter = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::rate_window::NAME);
}

#[test]
fn late_close_unregistering_successor_is_caught() {
    let (_, checker) = first_violation("close-unregisters-successor", 40, |s| {
        let mut o = base(s);
        o.devices_per_user = 2;
        o.per_user = 1;
        o.gateway_hook = Some(|c| c.engine.mutations.close_unregisters_successor = true);
        o
    });
    assert!(
        [
            heartline_sim::check::per_user::NAME,
            heartline_sim::check::presence::NAME,
            // The successor is unregistered, so its user is announced offline while it
            // is still connected.
            heartline_sim::check::presence_flaps::NAME
        ]
        .contains(&checker),
        "caught by {checker}"
    );
}

#[test]
fn reconnect_after_replaced_is_caught() {
    let (_, checker) = first_violation("reconnect-after-replaced", 40, |s| {
        let mut o = base(s);
        o.devices_per_user = 2;
        o.per_user = 1;
        o.client_hook = Some(|c| c.mutations.reconnect_after_replaced = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::ping_pong::NAME);
}

#[test]
fn missing_ping_timeout_is_caught() {
    let (_, checker) = first_violation("no-ping-timeout", 40, |s| {
        let mut o = base(s);
        o.faults.insert(FaultKind::HalfOpen);
        o.gateway_hook = Some(|c| c.engine.mutations.no_ping_timeout = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::dead_peer::NAME);
}

#[test]
fn a_join_without_membership_is_caught() {
    let (_, checker) = first_violation("any-user-may-read", 40, |s| {
        let mut o = base(s);
        o.faults.insert(FaultKind::Hostile);
        o.hostile = o.hostile.max(2);
        o.gateway_hook = Some(|c| c.engine.mutations.any_user_may_read = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::members::NAME);
}

#[test]
fn an_expired_token_taken_is_caught() {
    let (_, checker) = first_violation("expired-tokens-accepted", 40, |s| {
        let mut o = base(s);
        o.faults.insert(FaultKind::Hostile);
        o.hostile = o.hostile.max(2);
        o.gateway_hook = Some(|c| c.engine.mutations.expired_tokens_accepted = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::bad_token::NAME);
}

#[test]
fn an_expired_token_taken_over_polling_is_caught() {
    // Every attack on long-polling: what a bad token's session is told comes in GET
    // answers.
    let (_, checker) = first_violation("expired-tokens-accepted", 30, |s| {
        let mut o = base(s);
        o.polling_pct = 100;
        o.hostile_polling_pct = 100;
        o.faults.insert(FaultKind::Hostile);
        o.hostile = o.hostile.max(2);
        o.gateway_hook = Some(|c| c.engine.mutations.expired_tokens_accepted = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::bad_token::NAME);
}

#[test]
fn a_client_that_retries_refused_sends_at_once_is_caught() {
    let (_, checker) = first_violation("retry-refused-at-once", 40, |s| {
        let mut o = base(s);
        // Bursts over a small limit, refused quickly: each retry comes a round trip later.
        o.burst_pct = 50;
        o.rate_messages = 2;
        o.latency_ms = 1;
        o.jitter_ms = 0;
        o.store_latency_ms = 1;
        o.client_hook = Some(|c| c.mutations.retry_refused_at_once = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::blame::NAME);
}

#[test]
fn an_offline_without_grace_is_caught() {
    let (_, checker) = first_violation("no-offline-grace", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.no_offline_grace = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::presence_flaps::NAME);
}

#[test]
fn presence_told_to_everyone_is_caught() {
    let (_, checker) = first_violation("presence-to-everyone", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.presence_to_everyone = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::presence_frames::NAME);
}

#[test]
fn offline_frames_that_never_go_out_are_caught() {
    // The server's own notices are right (presence-transitions-only passes): only what
    // partners were told shows the offline missing.
    let (_, checker) = first_violation("offline-frames-lost", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.offline_frames_lost = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::presence_frames::NAME);
}

#[test]
fn a_client_that_never_notices_a_silent_server_is_caught() {
    // After a crash that closes nothing, or a half-open link, such a client takes itself
    // for connected for ever: liveness counts a device connected only over a link the
    // running server holds. Idle clients, so that no unacknowledged send or missed
    // message gives the dead link away by other means.
    let (_, checker) = first_violation("client-trusts-silence", 40, |s| {
        let mut o = base(s);
        o.idle_pct = 100;
        o.faults.insert(FaultKind::Crash);
        o.client_hook = Some(|c| c.mutations.client_trusts_silence = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::liveness::NAME);
}

#[test]
fn a_server_that_turns_every_client_away_is_caught() {
    // Not one of the core's bugs: a server whose secret no client's token matches refuses
    // every connect. Every client then fails, and no one is left whose delivery or
    // presence could look wrong: only liveness, which asks failed clients to connect
    // again once the faults heal, can see it.
    let (_, checker) = first_violation("turns-everyone-away", 1, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.jwt_secret = b"not the clients' secret".to_vec());
        o
    });
    assert_eq!(checker, heartline_sim::check::liveness::NAME);
}

#[test]
fn expired_connections_kept_past_the_grace_are_caught() {
    let (_, checker) = first_violation("expired-connections-kept", 40, |s| {
        let mut o = base(s);
        o.expiring_pct = 100;
        o.gateway_hook = Some(|c| c.engine.mutations.expired_connections_kept = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::token_expiry::NAME);
}

#[test]
fn a_refreshed_connection_closed_for_its_old_token_is_caught() {
    let (_, checker) = first_violation("refresh-keeps-grace", 40, |s| {
        let mut o = base(s);
        o.expiring_pct = 100;
        o.gateway_hook = Some(|c| c.engine.mutations.refresh_keeps_grace = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::token_expiry::NAME);
}

#[test]
fn a_session_kept_with_no_namespace_past_the_handshake_deadline_is_caught() {
    // Silent hostile connections answer no PING: with a ping deadline longer than the
    // handshake's, only the handshake timeout closes them in time.
    let (_, checker) = first_violation("no-handshake-timeout", 40, |s| {
        let mut o = base(s);
        o.faults.insert(FaultKind::Hostile);
        o.hostile = o.hostile.max(2);
        o.ping_interval_ms = 25_000;
        o.ping_timeout_ms = 20_000;
        o.gateway_hook = Some(|c| c.engine.mutations.no_handshake_timeout = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::handshake::NAME);
}

#[test]
fn a_polling_session_kept_with_no_namespace_is_caught() {
    // Devices all on polling: a session whose CONNECT was refused, or whose client gave up
    // waiting for its answer, is left without a namespace; only the handshake timeout
    // lets it go before the heartbeat does.
    let (_, checker) = first_violation("no-handshake-timeout", 30, |s| {
        let mut o = base(s);
        o.polling_pct = 100;
        o.ping_interval_ms = 25_000;
        o.ping_timeout_ms = 20_000;
        o.gateway_hook = Some(|c| c.engine.mutations.no_handshake_timeout = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::handshake::NAME);
}

#[test]
fn a_session_left_by_its_namespace_and_kept_is_caught() {
    // Hostile clients that disconnect their namespace and keep answering PINGs: with the
    // handshake deadline not armed again when they leave, nothing ever closes them.
    let (_, checker) = first_violation("handshake-not-rearmed", 40, |s| {
        let mut o = base(s);
        o.faults.insert(FaultKind::Hostile);
        o.hostile = o.hostile.max(2);
        o.gateway_hook = Some(|c| c.engine.mutations.handshake_not_rearmed = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::handshake::NAME);
}

#[test]
fn a_fan_out_that_leaves_the_sender_out_is_caught() {
    // The project's client would fill the gap from its own ack, so only the frames show it.
    let (_, checker) = first_violation("fan-out-skips-sender", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.fan_out_skips_sender = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::message_frames::NAME);
}

#[test]
fn a_send_queue_that_sheds_messages_is_caught() {
    // Small queues and clients that stop reading: a full queue that makes room by dropping
    // messages and acks, not only heartbeats and presence, loses them on a connection
    // that goes on.
    let (_, checker) = first_violation("queue-sheds-anything", 60, |s| {
        let mut o = base(s);
        o.faults.insert(FaultKind::StopRead);
        o.outbound_bytes = 512;
        o.heartbeat_ms = 1_000;
        o.gateway_hook = Some(|c| c.engine.mutations.queue_sheds_anything = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::send_queue::NAME);
}

#[test]
fn a_presence_change_told_to_one_device_of_a_partner_is_caught() {
    // The server's notices are right and every frame that arrives alternates: only a
    // device that was connected and never told shows it.
    let (_, checker) = first_violation("presence-to-one-device", 40, |s| {
        let mut o = base(s);
        o.devices_per_user = 2;
        o.per_user = 2;
        o.gateway_hook = Some(|c| c.engine.mutations.presence_to_one_device = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::presence_frames::NAME);
}

#[test]
fn missing_ping_timeout_on_polling_is_caught() {
    // A device that freezes says nothing more: on polling, no request of its session
    // comes, and only the server's heartbeat can let the session go.
    let (_, checker) = first_violation("no-ping-timeout", 20, |s| {
        let mut o = base(s);
        o.polling_pct = 100;
        o.faults = [FaultKind::Freeze].into_iter().collect();
        o.gateway_hook = Some(|c| c.engine.mutations.no_ping_timeout = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::dead_peer::NAME);
}

#[test]
fn a_live_polling_peer_closed_as_dead_is_caught() {
    // Its PONG came in a POST: the session is closed before the schedule of its PINGs
    // allows.
    let (_, checker) = first_violation("pong-leaves-deadline-armed", 40, |s| {
        let mut o = base(s);
        o.polling_pct = 100;
        o.gateway_hook = Some(|c| c.engine.mutations.pong_leaves_deadline_armed = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::dead_peer::NAME);
}

#[test]
fn a_live_peer_closed_as_dead_is_caught() {
    // Its client reconnects at once and everything converges: only the close of a link
    // whose PING was answered shows it.
    let (_, checker) = first_violation("pong-leaves-deadline-armed", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.pong_leaves_deadline_armed = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::dead_peer::NAME);
}

#[test]
fn a_displaced_connection_left_connected_is_caught() {
    // The server's notices say it closed: only the wire shows it still connected.
    let (_, checker) = first_violation("replaced-left-connected", 40, |s| {
        let mut o = base(s);
        o.devices_per_user = 2;
        o.per_user = 1;
        o.gateway_hook = Some(|c| c.engine.mutations.replaced_left_connected = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::per_user::NAME);
}

#[test]
fn heartbeats_that_stop_are_caught() {
    // Engine.IO's PING keeps the connection alive either way: only the cadence shows it.
    let (_, checker) = first_violation("heartbeat-not-rearmed", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.heartbeat_not_rearmed = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::heartbeat::NAME);
}

#[test]
fn hs512_tokens_taken_are_caught() {
    // Only a hostile connect with an HS512 token signed with the server's own secret
    // shows it: one of the forged tokens drawn.
    let (_, checker) = first_violation("any-hmac-accepted", 60, |s| {
        let mut o = base(s);
        o.hostile = o.hostile.max(4);
        o.gateway_hook = Some(|c| c.engine.mutations.any_hmac_accepted = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::bad_token::NAME);
}

#[test]
fn an_offline_announcement_that_comes_far_too_late_is_caught() {
    // Offline still comes, long after the run: nothing announced early, no flap; only
    // the deadline shows it.
    let (_, checker) = first_violation("offline-grace-in-seconds", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.offline_grace_in_seconds = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::presence_flaps::NAME);
}

#[test]
fn a_connect_without_its_welcome_is_caught() {
    // The client connects on the CONNECT answer alone, and the checkers that start
    // watching a link at its welcome (heartbeat cadence among them) see nothing to watch.
    let (seed, checker) = first_violation("success-not-sent", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.success_not_sent = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::connection_success::NAME);
    assert_eq!(seed, 0, "caught at once");
}

#[test]
fn reconnections_without_backoff_are_caught() {
    // Every client still comes back, sooner: only the spacing of its attempts shows it.
    let (_, checker) = first_violation("reconnect-at-once", 40, |s| {
        let mut o = base(s);
        o.client_hook = Some(|c| c.mutations.reconnect_at_once = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::reconnect::NAME);
}

#[test]
fn a_refresh_with_another_users_token_is_caught() {
    let (_, checker) = first_violation("refresh-any-user", 40, |s| {
        let mut o = base(s);
        o.faults.insert(FaultKind::Hostile);
        o.hostile = o.hostile.max(2);
        o.gateway_hook = Some(|c| c.engine.mutations.refresh_any_user = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::members::NAME);
}

#[test]
fn a_displaced_connection_closed_without_a_disconnect_is_caught() {
    // The project's client stays away on the event alone; socket.io-client would not.
    let (_, checker) = first_violation("replaced-closed-not-disconnected", 40, |s| {
        let mut o = base(s);
        o.devices_per_user = 2;
        o.per_user = 1;
        o.gateway_hook = Some(|c| c.engine.mutations.replaced_closed_not_disconnected = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::ping_pong::NAME);
}

#[test]
fn removed_members_left_in_the_room_are_caught() {
    // Only member lists replaced while their users are joined show it.
    let (_, checker) = first_violation("removed-members-stay-in-room", 40, |s| {
        let mut o = base(s);
        o.faults.insert(FaultKind::Members);
        o.gateway_hook = Some(|c| c.engine.mutations.removed_members_stay_in_room = true);
        o
    });
    // Written to a removed member (members-only), or to a connection that was let back
    // in and has not joined again (message-frames).
    assert!(
        [
            heartline_sim::check::members::NAME,
            heartline_sim::check::message_frames::NAME
        ]
        .contains(&checker),
        "{checker}"
    );
}

#[test]
fn displacing_the_previous_connection_is_caught() {
    let (_, checker) = first_violation("displaces-the-previous", 60, |s| {
        let mut o = base(s);
        o.per_user = 2;
        o.devices_per_user = 2;
        o.gateway_hook = Some(|c| c.engine.mutations.displaces_the_previous = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::per_user::NAME);
}

#[test]
fn a_join_that_misses_nothing_is_caught() {
    // The project's client reads on from `lastSeq` by itself, so the delivery checkers
    // would not see it: the frames do.
    let (_, checker) = first_violation("join-misses-nothing", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.join_misses_nothing = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::message_frames::NAME);
}

#[test]
fn closing_a_sender_on_a_store_failure_is_caught() {
    // Its client comes back and sends again, so nothing it ends up with shows it.
    let (_, checker) = first_violation("store-failure-closes", 40, |s| {
        let mut o = base(s);
        o.faults.insert(FaultKind::StoreFail);
        o.gateway_hook = Some(|c| c.engine.mutations.store_failure_closes = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::blame::CAUSE);
}

#[test]
fn presence_never_announced_is_caught() {
    // No notice and no frame: only the comparison with the wire shows it.
    let (_, checker) = first_violation("presence-never-announced", 40, |s| {
        let mut o = base(s);
        o.gateway_hook = Some(|c| c.engine.mutations.presence_never_announced = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::presence::NAME);
}

#[test]
fn a_polling_answer_that_loses_packets_is_caught() {
    // Devices on long-polling (which the swarm's other mutations leave out): packets
    // queued behind the first of an answer are lost, and with them messages, acks and
    // connects. A device that lost a message sees the gap at the next one; one that lost
    // its CONNECT's answer or a join's never gets anywhere, which only the run's end shows.
    let (_, checker) = first_violation("poll-answers-first-only", 20, |s| {
        let mut o = base(s);
        o.polling_pct = 100;
        o.gateway_hook = Some(|c| c.engine.mutations.poll_answers_first_only = true);
        o
    });
    assert!(
        [
            heartline_sim::check::delivery::NAME,
            heartline_sim::check::liveness::NAME
        ]
        .contains(&checker),
        "{checker}"
    );
}

#[test]
fn a_close_sent_with_the_last_packets_is_caught() {
    // On polling, socket.io-client closes the transport as it reads the CLOSE and hands
    // the Socket.IO packets before it over only afterwards: a DISCONNECT (after a
    // replacement, say) in the same answer as the CLOSE is never seen, and the client
    // comes back.
    let (_, checker) = first_violation("close-with-last-packets", 60, |s| {
        let mut o = base(s);
        o.polling_pct = 100;
        o.upgrade_pct = 0;
        o.devices_per_user = 2;
        o.per_user = 1;
        o.gateway_hook = Some(|c| c.engine.mutations.close_with_last_packets = true);
        o
    });
    assert_eq!(checker, heartline_sim::check::ping_pong::NAME);
}
