//! The Engine.IO endpoint, `/socket.io/`: WebSocket upgrades and HTTP long-polling, handed
//! to the core as inputs.
//!
//! The runtime only does what needs a socket: it checks the `Origin` of browser requests
//! against `server.cors_origins` (a disallowed one gets 403 and no session), refuses new
//! sessions while draining, completes the WebSocket opening handshake, bounds polling
//! bodies to `max_payload_bytes + 1` (the core answers 413 past the limit), and waits for
//! the core's response to each polling request. Everything Engine.IO means is the core's.
//!
//! A polling GET can be held by the core for a long time. If the client gives up on it,
//! hyper drops the handler, and its guard tells the core (`HttpAborted`), which ends the
//! session as the protocol requires.

use std::sync::Arc;

use bytes::Bytes;
use heartline_core::engine::{self, ContentType, Handshake, Method, Query};
use heartline_core::{Instant, RequestId};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::actor::{HttpReply, Msg};
use crate::admission::Permit;
use crate::arriving::{grown_capacity, Reservation};
use crate::context::{Context, PostReading};
use crate::http::{self, Body};
use crate::metrics::RuntimeMetrics;
use crate::query;
use crate::websocket;

/// Facts about the TCP connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: std::net::SocketAddr,
    /// When it was accepted, on the core's clock; for a later request on a kept-alive
    /// connection, when that request was handed over (a new session's handshake clock
    /// starts there).
    pub accepted_at: Instant,
    /// When this request began: the accept for the first request, the end of the one
    /// before for a later one (its headers were arriving from then on). Its body must be
    /// in by this plus `server.handshake_timeout_ms`.
    pub request_began: Instant,
    /// Its slot under the socket bound ([`crate::admission::socket_bound`]), kept by a
    /// WebSocket after the upgrade.
    pub permit: Arc<Permit>,
    /// Whether this request is the first on its connection (see [`pays_ip_rate`]).
    pub first_request: bool,
}

/// Whether a request takes a token of `server.connect_rate_per_ip`. The rate is on new
/// clients, and a client is new by its connection or by its handshake, not by every TCP
/// connection it uses: a polling client opens several for one session (the held GET, the
/// POSTs beside it, the upgrade) and a browser reuses them. So a connection pays with its
/// first request, unless that request names a session already admitted (a `sid`); and a
/// handshake (a GET without `sid`) on a kept-alive connection pays for itself; a first
/// request whose `sid` is turned away pays afterwards, and it, a first preflight and a
/// first request from a refused origin keep no connection open ([`handle`]). Counting
/// every connection refused the requests of clients it had let in (five polling clients
/// against a rate of 3: none got in); counting only connections let a kept-alive one open
/// sessions past the rate. A connection that sends nothing is bounded by the socket bound
/// ([`crate::admission::socket_bound`]) and `server.handshake_timeout_ms`.
pub fn pays_ip_rate(first_request: bool, engine_path: bool, sid: bool, get: bool) -> bool {
    if engine_path && sid {
        return false;
    }
    first_request || (engine_path && get)
}

/// Serves one request on the Engine.IO path.
pub async fn handle(req: Request<Incoming>, ctx: Arc<Context>, conn: ConnInfo) -> Response<Body> {
    let raw_origin = req.headers().get(header::ORIGIN);
    let origin = raw_origin.and_then(|v| v.to_str().ok()).map(str::to_owned);
    // An Origin that is not text matches no listed origin, only "*".
    let unreadable = raw_origin.is_some() && origin.is_none();
    if let Some(o) = origin.as_deref().or(unreadable.then_some("")) {
        if !ctx.origin_allowed(o) {
            RuntimeMetrics::inc(&ctx.metrics.refused_origin);
            tracing::debug!(origin = %o, remote = %conn.remote, "origin refused");
            let mut resp = http::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"code": 4, "message": "Forbidden"}),
            );
            if conn.first_request {
                keep_no_connection(&mut resp);
            }
            return resp;
        }
    }
    let query = query::engine_query(req.uri().query());
    if req.method() == hyper::Method::OPTIONS {
        let mut resp = http::empty(StatusCode::NO_CONTENT);
        preflight_headers(req.headers(), resp.headers_mut());
        cors_headers(origin.as_deref(), resp.headers_mut());
        if conn.first_request {
            keep_no_connection(&mut resp);
        }
        return resp;
    }
    // A WebSocket the server does not offer, or of another protocol version, is refused
    // before the 101, as the reference server refuses it: answered, the upgrade would only
    // be closed at once, which a client reads as a network failure and retries.
    if is_websocket_upgrade(req.headers()) {
        let offered = ctx.config.engine.offers("websocket");
        let refusal = if query.transport.as_deref() != Some("websocket") || !offered {
            Some((0, "Transport unknown"))
        } else if query.eio.as_deref() != Some("4") {
            Some((5, "Unsupported protocol version"))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            let mut resp = http::json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"code": code, "message": message}),
            );
            cors_headers(origin.as_deref(), resp.headers_mut());
            if conn.first_request {
                keep_no_connection(&mut resp);
            }
            return resp;
        }
    }
    if query.sid.is_none() && ctx.is_draining() {
        RuntimeMetrics::inc(&ctx.metrics.refused_draining);
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is shutting down",
            origin.as_deref(),
        );
    }
    // Not ready (`/readyz`) for new clients: it could store none of their messages.
    if query.sid.is_none() && ctx.store_failed() {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server cannot store messages",
            origin.as_deref(),
        );
    }
    if query.sid.is_none() && is_websocket_upgrade(req.headers()) && ctx.sessions_full() {
        RuntimeMetrics::inc(&ctx.metrics.refused_sessions_early);
        tracing::debug!(remote = %conn.remote, "WebSocket handshake refused: max_connections");
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sessions",
            origin.as_deref(),
        );
    }
    let get = req.method() == hyper::Method::GET;
    if pays_ip_rate(conn.first_request, true, query.sid.is_some(), get)
        && !ctx.ip_rate.allow(conn.remote.ip(), ctx.clock.now())
    {
        RuntimeMetrics::inc(&ctx.metrics.refused_rate_per_ip);
        tracing::debug!(remote = %conn.remote, "handshake refused: per-IP rate");
        let message = "Too many new sessions from this address";
        return refusal(StatusCode::TOO_MANY_REQUESTS, message, origin.as_deref());
    }
    let handshake = Handshake {
        accepted_at: conn.accepted_at,
        authorization: req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(Box::from),
        remote: Some(conn.remote.to_string().into()),
    };
    // A first request let through on its `sid` without paying: if that sid is turned
    // away, the connection was never a session's, so it pays now and is not kept alive
    // (otherwise any made-up sid would hold a TCP connection without a token). A WebSocket
    // upgrade is answered 101 before the core sees its sid: it pays once the core closes
    // it (`websocket::accept`).
    let on_credit = conn.first_request && query.sid.is_some();
    let (ip, now) = (conn.remote.ip(), ctx.clock.now());
    let ws_upgrade = is_websocket_upgrade(req.headers()) && req.method() == hyper::Method::GET;
    // An upgrade naming a session the core does not hold gets the polling answer for an
    // unknown sid, not a 101 and a close: the client's probe fails with the reason in hand.
    // A POST naming one gets it before its body is read: a made-up sid must not have the
    // server take up to `max_payload_bytes` from anyone, or hold a reading mark for it.
    let asks_first = ws_upgrade || req.method() == hyper::Method::POST;
    if let (true, Some(sid)) = (asks_first, query.sid.as_deref()) {
        if !knows_sid(&ctx, sid).await {
            let mut resp = http::json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"code": 1, "message": "Session ID unknown"}),
            );
            cors_headers(origin.as_deref(), resp.headers_mut());
            if on_credit {
                let _ = ctx.ip_rate.allow(ip, now);
                keep_no_connection(&mut resp);
            }
            return resp;
        }
    }
    let mut resp = if ws_upgrade {
        let credit = on_credit.then_some(ip);
        upgrade(req, ctx.clone(), query, handshake, conn.permit, credit)
    } else {
        let mut resp = poll(req, ctx.clone(), query, handshake, conn.request_began).await;
        cors_headers(origin.as_deref(), resp.headers_mut());
        resp
    };
    if on_credit && resp.status().is_client_error() {
        let _ = ctx.ip_rate.allow(ip, now);
        keep_no_connection(&mut resp);
    }
    resp
}

/// Asks the actor whether the core holds a session with `sid`; yes if it cannot answer
/// (the core then decides after the 101, as it always may).
async fn knows_sid(ctx: &Context, sid: &str) -> bool {
    let (tx, rx) = oneshot::channel();
    let msg = Msg::KnowsSid {
        sid: sid.into(),
        reply: tx,
    };
    if ctx.actor.send(msg).await.is_err() {
        return true;
    }
    rx.await.unwrap_or(true)
}

/// A handshake refused for a reason the client may retry later (Engine.IO code 4, as the
/// reference server uses for its own "forbidden"), with the CORS headers a browser needs
/// to read it.
fn refusal(status: StatusCode, message: &str, origin: Option<&str>) -> Response<Body> {
    let mut resp = http::json(status, &serde_json::json!({"code": 4, "message": message}));
    cors_headers(origin, resp.headers_mut());
    resp
}

/// Closes the connection after `resp`. For a connection's first request answered without
/// paying the per-IP rate (a preflight, a refused origin, a sid turned away): the client's
/// next request comes on a new connection, which pays if it opens a session. Otherwise
/// requests that never pay could hold TCP connections for as long as they keep coming.
fn keep_no_connection(resp: &mut Response<Body>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// Answers 101 and hands the upgraded connection to a WebSocket task.
fn upgrade(
    mut req: Request<Incoming>,
    ctx: Arc<Context>,
    query: Query,
    handshake: Handshake,
    permit: Arc<Permit>,
    credit: Option<std::net::IpAddr>,
) -> Response<Body> {
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return http::text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let Ok(subprotocol) = first_subprotocol(req.headers()) else {
        return http::text(
            StatusCode::BAD_REQUEST,
            "invalid Sec-WebSocket-Protocol header",
        );
    };
    if !version_ok {
        let mut resp = http::text(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    tokio::spawn(websocket::accept(websocket::Upgrade {
        on_upgrade: hyper::upgrade::on(&mut req),
        ctx,
        query,
        handshake,
        permit,
        credit,
    }));
    let mut resp = http::empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(chosen) = subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, chosen);
    }
    resp
}

/// The subprotocol to answer a WebSocket handshake with: the first the client offers, as
/// the reference server (Node's `ws` without a `handleProtocols`) chooses. A client that
/// offers any (socket.io-client's `protocols` option) fails the handshake unless one is
/// chosen, and what is spoken is Engine.IO whatever it is called. `Err` for a header that
/// is not a comma-separated list of tokens (RFC 6455 §4.1), which `ws` refuses with 400 too.
fn first_subprotocol(headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
    let mut first = None;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let text = value.to_str().map_err(|_| ())?;
        for offered in text.split(',').map(str::trim) {
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if offered.is_empty() || !offered.chars().all(token) {
                return Err(());
            }
            if first.is_none() {
                first = Some(HeaderValue::from_str(offered).map_err(|_| ())?);
            }
        }
    }
    Ok(first)
}

/// Tells the core a held request was abandoned, unless it was answered.
struct AbortGuard {
    request: RequestId,
    actor: mpsc::Sender<Msg>,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let msg = Msg::Net(engine::Input::HttpAborted {
            request: self.request,
        });
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.actor.try_send(msg) {
            let actor = self.actor.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = actor.send(msg).await;
                });
            }
        }
    }
}

/// A polling request: read the body (bounded), hand it to the core, wait for its answer.
async fn poll(
    req: Request<Incoming>,
    ctx: Arc<Context>,
    query: Query,
    handshake: Handshake,
    request_began: Instant,
) -> Response<Body> {
    let method = match *req.method() {
        hyper::Method::GET => Method::Get,
        hyper::Method::POST => Method::Post,
        _ => Method::Other,
    };
    // A second POST while the first is being read: the engine ends the session (it sees
    // POSTs only once read, so the runtime tells it).
    let reading = match (&query.sid, method) {
        (Some(sid), Method::Post) => match ctx.begin_post(sid) {
            Some(reading) => Some(reading),
            None => {
                let request = ctx.request_id();
                let input = engine::Input::HttpPostOverlap { request, query };
                return ask(&ctx, request, input, None, Reservation::default()).await;
            }
        },
        _ => None,
    };
    let mut arriving = Reservation::default();
    // Only a POST to a polling session can be answered for its body; any other (no sid,
    // another transport or protocol version, polling not offered at all) is refused
    // whatever it carries, so its body is not read: anyone could otherwise have the server
    // take up to `max_payload_bytes` of the budgets all connections share, for nothing.
    let for_a_session = query.sid.is_some()
        && query.transport.as_deref() == Some("polling")
        && query.eio.as_deref() == Some("4")
        && ctx.config.engine.offers("polling");
    let body = if method == Method::Post && for_a_session {
        let limit = usize::try_from(ctx.config.engine.max_payload_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let due = ctx.request_deadline(request_began);
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let read = read_bounded(req.into_body(), limit, announced, &ctx, &mut arriving);
        match tokio::time::timeout_at(due, read).await {
            Ok(Ok(body)) => body,
            Ok(Err(Unread::Failed)) => {
                return http::json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"code": 3, "message": "Request body could not be read"}),
                )
            }
            Ok(Err(Unread::OverBudget)) => {
                return http::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many large messages arriving; try again later",
                )
            }
            Ok(Err(Unread::TooSlow)) => {
                return http::text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body arrived too slowly while others waited",
                )
            }
            Err(_) => {
                return http::text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                )
            }
        }
    } else {
        Bytes::new()
    };
    let request = ctx.request_id();
    let input = engine::Input::Http {
        request,
        method,
        query,
        body,
        handshake,
    };
    ask(&ctx, request, input, reading, arriving).await
}

/// Hands an HTTP request to the core and waits for its answer. `reading`, a POST's mark,
/// goes once the request is in the actor's inbox, so that a POST after it is in order;
/// `arriving`, its body's bytes of the arriving budget, once the inbox's budget counts
/// them.
async fn ask(
    ctx: &Arc<Context>,
    request: RequestId,
    input: engine::Input,
    reading: Option<PostReading>,
    arriving: Reservation,
) -> Response<Body> {
    let (tx, rx) = oneshot::channel();
    let msg = Msg::Http {
        input,
        request,
        reply: tx,
    };
    let msg = ctx.inbox_bytes.admitted(msg).await;
    drop(arriving);
    if ctx.actor.send(msg).await.is_err() {
        return http::empty(StatusCode::SERVICE_UNAVAILABLE);
    }
    drop(reading);
    let mut guard = AbortGuard {
        request,
        actor: ctx.actor.clone(),
        armed: true,
    };
    let reply = rx.await;
    guard.armed = false;
    match reply {
        Ok(HttpReply {
            status,
            content_type,
            body,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = match content_type {
                ContentType::Text => http::text(status, body),
                ContentType::Json => http::with_body(status, "application/json", body),
            };
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(_) => http::empty(StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// Why a body was not read.
enum Unread {
    /// The connection failed or broke HTTP.
    Failed,
    /// A large body (sent in chunks, with no length announced) needed more of the
    /// arriving budget than was free while it held some.
    OverBudget,
    /// A large body arrived too slowly while another message waited for the budget.
    TooSlow,
}

/// Reads at most `limit` bytes of a body; what lies beyond is not read (the core sees a
/// body of exactly `limit` bytes and knows it is too large). A large body's bytes are
/// reserved from the arriving budget before they are read ([`crate::arriving`]): all at
/// once for the length announced, waiting for them if need be, or as they come when none
/// was announced, never waiting then (a chunk in hand is bytes the budget does not
/// count). A body arriving too slowly while another message waits for the budget is
/// given up ([`Unread::TooSlow`]); with the defaults its request's own deadline
/// (`server.handshake_timeout_ms` from the accept, 10 s) comes first.
async fn read_bounded(
    mut body: Incoming,
    limit: usize,
    announced: Option<usize>,
    ctx: &Context,
    arriving: &mut Reservation,
) -> Result<Bytes, Unread> {
    let mut buf = Vec::new();
    if let Some(n) = announced.map(|n| n.min(limit)) {
        // Holding nothing yet, this waits rather than fails.
        arriving
            .cover(&ctx.arriving, n)
            .await
            .map_err(|_| Unread::OverBudget)?;
        buf.reserve_exact(n);
    }
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = arriving.evicted() => return Err(Unread::TooSlow),
        };
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(|_| Unread::Failed)?;
        if let Ok(data) = frame.into_data() {
            let take = data.len().min(limit.saturating_sub(buf.len()));
            let cap = grown_capacity(buf.len(), buf.capacity(), take, limit);
            arriving
                .try_cover(&ctx.arriving, cap)
                .map_err(|_| Unread::OverBudget)?;

            buf.reserve_exact(cap - buf.len());
            buf.extend_from_slice(&data[..take]);
            arriving.note_received(buf.len());
            if buf.len() >= limit {
                break;
            }
        }
    }
    arriving.arrived();
    // Handed on as `Bytes`, which keeps the whole allocation.
    buf.shrink_to_fit();
    Ok(Bytes::from(buf))
}

/// CORS headers for an allowed browser origin (credentials allowed, so the origin is
/// echoed rather than `*`).
pub fn cors_headers(origin: Option<&str>, headers: &mut HeaderMap) {
    let Some(origin) = origin else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn preflight_headers(req: &HeaderMap, headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let asked = req
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("content-type, authorization"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
}

#[cfg(test)]
mod tests {
    use super::pays_ip_rate;

    #[test]
    fn who_pays_the_per_ip_rate() {
        // (first request, Engine.IO path, sid, GET) -> pays
        let table = [
            (
                (true, true, false, true),
                true,
                "a handshake on a new connection",
            ),
            (
                (false, true, false, true),
                true,
                "a handshake on a kept-alive connection",
            ),
            (
                (true, true, true, true),
                false,
                "a session's held GET on a new connection",
            ),
            (
                (true, true, true, false),
                false,
                "a session's POST on a new connection",
            ),
            (
                (false, true, true, false),
                false,
                "a session's POST on a kept-alive one",
            ),
            (
                (true, true, false, false),
                true,
                "a new connection's first request",
            ),
            (
                (false, true, false, false),
                false,
                "a POST without sid, kept alive",
            ),
            (
                (true, false, false, true),
                true,
                "/healthz on a new connection",
            ),
            (
                (false, false, false, true),
                false,
                "/healthz on a kept-alive one",
            ),
        ];
        for ((first, engine, sid, get), pays, what) in table {
            assert_eq!(pays_ip_rate(first, engine, sid, get), pays, "{what}");
        }
    }
}
