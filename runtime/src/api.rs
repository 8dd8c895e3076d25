//! The conversations API: `PUT /api/conversations/{id}` and
//! `GET /api/conversations/{id}/messages?afterSeq=N&limit=M`, behind a bearer key.
//!
//! Membership is the authority for who may join, read and send, so it only ever comes
//! from the operator's backend through this API (or the store at start). A write goes
//! through the store thread, which commits it and then tells the core, in order with the
//! messages it is storing. With `api.key` empty the API does not exist (404), so a
//! forgotten key never leaves it open.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use heartline_core::gateway::is_good_name;
use heartline_core::Instant;

use crate::context::Context;
use crate::http::{self, Body};
use crate::metrics::STORE_STALL;
use crate::query;
use crate::storage::Job;
use crate::store::{Member, StoreError};

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Most messages one read returns when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 100;

// Fields beyond these (a display name, a member's role) are not errors: the body is not
// malformed, and an admin tool that sends more than Heartline keeps should still work.
#[derive(Debug, Deserialize)]
struct PutBody {
    members: Vec<MemberBody>,
}

#[derive(Debug, Deserialize)]
struct MemberBody {
    #[serde(rename = "userId")]
    user_id: String,
    #[serde(rename = "userType")]
    user_type: String,
}

/// The body and each member must be JSON objects: serde would also take a struct from an
/// array of its fields in order, so `{"members":[["u1","customer"]]}` made a member.
fn objects_only(body: &Value) -> Result<(), serde_json::Error> {
    use serde::de::Error as _;
    let members = body.get("members").and_then(Value::as_array);
    if !body.is_object() || members.is_some_and(|ms| ms.iter().any(|m| !m.is_object())) {
        return Err(serde_json::Error::custom(
            "the body and each member must be JSON objects",
        ));
    }
    Ok(())
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    http::json(status, &json!({ "error": message }))
}

/// Serves a request under `/api/`; `rest` is the path after `/api/`.
/// Serves `/api/{rest}`; `began` is when the request began (see
/// [`crate::engineio::ConnInfo::request_began`]), which its body's deadline counts from.
pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<Context>,
    rest: &str,
    began: Instant,
) -> Response<Body> {
    let key = &ctx.config.api.key;
    if key.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "the HTTP API is disabled (api.key is empty)",
        );
    }
    if !authorized(req.headers().get(header::AUTHORIZATION), key) {
        let mut resp = error(StatusCode::UNAUTHORIZED, "a valid API key is required");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["conversations", id] if !id.is_empty() => {
            if req.method() != Method::PUT {
                return not_allowed("PUT");
            }
            let Some(id) = query::percent_decode_path(id) else {
                return bad_escape();
            };
            put_conversation(req, ctx, id, began).await
        }
        ["conversations", id, "messages"] if !id.is_empty() => {
            // HEAD as GET (RFC 9110 9.3.2); hyper sends the head without the body.
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                return not_allowed("GET, HEAD");
            }
            let Some(id) = query::percent_decode_path(id) else {
                return bad_escape();
            };
            messages(req, ctx, id).await
        }
        _ => error(StatusCode::NOT_FOUND, "no such API route"),
    }
}

/// Whether a request to the API carries the API key (an enabled API's): the operator's own
/// traffic, which a per-IP rate meant for clients does not count.
pub fn is_operator(req: &Request<Incoming>, ctx: &Context) -> bool {
    let key = &ctx.config.api.key;
    !key.is_empty() && authorized(req.headers().get(header::AUTHORIZATION), key)
}

/// Compares the bearer token with the key in time independent of where they differ.
fn authorized(header: Option<&HeaderValue>, key: &str) -> bool {
    let Some(given) = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), key.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A refusal for a conversation id whose escapes do not decode to one string.
/// 405 for a route that takes only `method`, which the `Allow` header names (RFC 9110
/// requires it with a 405).
fn not_allowed(method: &'static str) -> Response<Body> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {method}"));
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(method));
    resp
}

fn bad_escape() -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        "conversation id must be percent-encoded UTF-8",
    )
}

/// A refusal for a malformed conversation id.
fn bad_id(id: &str) -> Option<Response<Body>> {
    (!is_good_name(id)).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "conversation id must be 1 to 256 bytes without control characters",
        )
    })
}

async fn put_conversation(
    req: Request<Incoming>,
    ctx: Arc<Context>,
    id: String,
    began: Instant,
) -> Response<Body> {
    if let Some(resp) = bad_id(&id) {
        return resp;
    }
    // A body declared too large is refused at once, not read until the deadline.
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB");
    }
    // Bounded in size and in time, like an Engine.IO POST body.
    let read = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let body: Bytes = match tokio::time::timeout_at(ctx.request_deadline(began), read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB")
        }
        Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "body unreadable"),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body not received within server.handshake_timeout_ms",
            )
        }
    };
    // Read into the struct from the bytes, not from the `Value`: a `Value` keeps the last
    // of a key given twice, where the struct refuses the body, and a member list or a
    // member with two ids is ambiguous, not the last one's.
    let parsed: PutBody = match serde_json::from_slice::<Value>(&body)
        .and_then(|v| objects_only(&v))
        .and_then(|()| serde_json::from_slice(&body))
    {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"members\":[{{\"userId\":..,\"userType\":..}}]}}: {e}"),
            )
        }
    };
    if parsed
        .members
        .iter()
        .any(|m| !is_good_name(&m.user_id) || !is_good_name(&m.user_type))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "userId and userType must be 1 to 256 bytes without control characters",
        );
    }
    let members: Vec<Member> = parsed
        .members
        .into_iter()
        .map(|m| Member::new(m.user_id, m.user_type))
        .collect();
    let (tx, rx) = oneshot::channel();
    if !ctx.store.send(Job::Put {
        id,
        members,
        reply: tx,
    }) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
    }
    match store_answer(rx, || ctx.store_stalled()).await {
        Ok(Ok((conv, last_seq))) => http::json(
            StatusCode::OK,
            &json!({
                "id": conv.id,
                "members": conv.members.iter().map(|m| json!({
                    "userId": m.user_id,
                    "userType": m.user_type,
                })).collect::<Vec<Value>>(),
                "lastSeq": last_seq,
            }),
        ),
        Ok(Err(e)) => store_error(&e),
        Err(e) => e.response(),
    }
}

/// Why the store gave an API request no answer.
#[derive(Debug, PartialEq, Eq)]
enum NoAnswer {
    /// The store thread is gone.
    Gone,
    /// It kept the request waiting past [`STORE_STALL`] without answering anyone: a
    /// flush or a write that does not return (what `/healthz` calls stalled).
    Stalled,
    /// It kept the request waiting past [`STORE_STALL`] while answering others: a
    /// backlog it is working through.
    Busy,
}

impl NoAnswer {
    fn response(&self) -> Response<Body> {
        match self {
            NoAnswer::Gone => error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
            NoAnswer::Stalled => {
                tracing::warn!(
                    "an API request waited {} s for the store; answered 503",
                    STORE_STALL.as_secs()
                );
                error(StatusCode::SERVICE_UNAVAILABLE, "store stalled")
            }
            NoAnswer::Busy => {
                tracing::warn!(
                    "an API request waited {} s behind the store's backlog; answered 503",
                    STORE_STALL.as_secs()
                );
                error(StatusCode::SERVICE_UNAVAILABLE, "store busy")
            }
        }
    }
}

/// The store's answer to a job, waited for at most [`STORE_STALL`] (what `/healthz` calls
/// a stalled store): a store that stopped answering must not hold each API request, and
/// its connection, for ever. `stalled` says then whether it has stopped answering anyone
/// (`/healthz`'s rule) or is only behind. A PUT so answered may still be committed when
/// the store gets to it; as it sets the whole member list, sending it again is safe.
async fn store_answer<T>(
    rx: oneshot::Receiver<T>,
    stalled: impl Fn() -> bool,
) -> Result<T, NoAnswer> {
    match tokio::time::timeout(STORE_STALL, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(NoAnswer::Gone),
        Err(_) if stalled() => Err(NoAnswer::Stalled),
        Err(_) => Err(NoAnswer::Busy),
    }
}

/// The answer to a store failure: `503` when the store cannot serve now (its log could
/// not be flushed, so it takes nothing until a restart; the database is locked by another
/// process; SQLite failed), as `/healthz` says of the same state and a client may retry
/// elsewhere or later; `500` for anything else. What failed is logged, not told.
fn store_error(e: &StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "an API request failed in the store");
    match e {
        StoreError::LogSync(_)
        | StoreError::Checkpoint(_)
        | StoreError::Stopped
        | StoreError::Sqlite(_) => error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

async fn messages(req: Request<Incoming>, ctx: Arc<Context>, id: String) -> Response<Body> {
    if let Some(resp) = bad_id(&id) {
        return resp;
    }
    let q = req.uri().query();
    let after_seq = match query::param(q, "afterSeq").map(|v| v.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "afterSeq must be an integer >= 0"),
    };
    let limit = match query::param(q, "limit").map(|v| v.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=crate::store::MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "limit must be an integer from 1 to {}",
                    crate::store::MAX_PAGE
                ),
            )
        }
    };
    let (tx, rx) = oneshot::channel();
    if !ctx.store.send(Job::Messages {
        id: id.clone(),
        after_seq,
        limit,
        reply: tx,
    }) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
    }
    match store_answer(rx, || ctx.store_stalled()).await {
        Ok(Ok(ms)) => http::json(
            StatusCode::OK,
            &json!({
                "conversationId": id,
                "messages": ms.iter().map(crate::store::StoredMessage::to_json).collect::<Vec<Value>>(),
            }),
        ),
        Ok(Err(StoreError::UnknownConversation(_))) => {
            error(StatusCode::NOT_FOUND, "no such conversation")
        }
        Ok(Err(e)) => store_error(&e),
        Err(e) => e.response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_key_must_match_exactly() {
        let v = |s: &str| HeaderValue::from_str(s).expect("header");
        assert!(authorized(Some(&v("Bearer k1")), "k1"));
        assert!(authorized(Some(&v("bearer  k1 ")), "k1"));
        assert!(!authorized(Some(&v("Bearer k2")), "k1"));
        assert!(!authorized(Some(&v("Basic k1")), "k1"));
        assert!(!authorized(Some(&v("Bearer k1x")), "k1"));
        assert!(!authorized(None, "k1"));
    }

    /// A store that does not answer has the request answered 503 once it waited past
    /// the stall bound, not held for ever; one that answers late, but within it, is
    /// waited for; a store gone is said at once.
    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_the_store_at_most_the_stall_bound() {
        let (_keep, rx) = oneshot::channel::<u32>();
        let began = tokio::time::Instant::now();
        assert_eq!(store_answer(rx, || true).await, Err(NoAnswer::Stalled));
        assert_eq!(began.elapsed(), STORE_STALL);
        // The same wait behind a store still answering others: busy, not stalled.
        let (_keep, rx) = oneshot::channel::<u32>();
        assert_eq!(store_answer(rx, || false).await, Err(NoAnswer::Busy));

        let (tx, rx) = oneshot::channel::<u32>();
        let late = STORE_STALL - std::time::Duration::from_secs(1);
        tokio::spawn(async move {
            tokio::time::sleep(late).await;
            let _ = tx.send(7);
        });
        assert_eq!(store_answer(rx, || true).await, Ok(7));

        let (tx, rx) = oneshot::channel::<u32>();
        drop(tx);
        let began = tokio::time::Instant::now();
        assert_eq!(store_answer(rx, || true).await, Err(NoAnswer::Gone));
        assert_eq!(began.elapsed(), std::time::Duration::ZERO);
    }
}
