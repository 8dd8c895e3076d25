//! The one port's routes: Engine.IO under its path (`/socket.io/` by default), health, readiness, metrics, the
//! conversations API, and the status page with its client module.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::oneshot;

use crate::actor::Msg;
use crate::api;
use crate::context::Context;
use crate::engineio::{self, ConnInfo};
use crate::http::{self, Body};
use crate::metrics::RuntimeMetrics;

/// The status page: connection indicator and a minimal chat, embedded in the binary.
const PAGE: &str = include_str!("../assets/index.html");
/// The page's client module: Heartline's reconnection rules in JavaScript.
const CLIENT_JS: &str = include_str!("../assets/heartline.js");

/// Routes one request.
pub async fn route(req: Request<Incoming>, ctx: Arc<Context>, conn: ConnInfo) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if ctx.is_engine_path(&path) {
        return engineio::handle(req, ctx, conn).await;
    }
    // Probes and scrapes are the operator's, not clients: a per-IP rate low enough for
    // clients must not fail a liveness probe (and restart the server) because a readiness
    // probe came from the same node in the same second. Nor must it turn away the
    // operator's backend writing member lists with the API key, nor count those calls
    // against the clients of the same address.
    let probe = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics")
        || (path.starts_with("/api/") && api::is_operator(&req, &ctx));
    if !probe
        && engineio::pays_ip_rate(conn.first_request, false, false, false)
        && !ctx.ip_rate.allow(conn.remote.ip(), ctx.clock.now())
    {
        RuntimeMetrics::inc(&ctx.metrics.refused_rate_per_ip);
        tracing::debug!(remote = %conn.remote, "connection refused: per-IP rate");
        return http::text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
    }
    // HEAD as GET (hyper leaves the body out), so that probes that use it see the status.
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    match path.as_str() {
        "/healthz" | "/readyz" | "/metrics" | "/" | "/index.html" | "/heartline.js" if !read => {
            let mut resp = http::text(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD");
            resp.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET, HEAD"),
            );
            resp
        }
        // A store whose log could not be flushed stores nothing until a restart: not
        // healthy (a supervisor restarts it) and not ready (no new clients sent to it).
        // Nor is one that has stopped answering (an operation waiting over 30 s).
        // A core that stopped serves nobody: the same.
        "/healthz" => {
            if ctx.store_failed() {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "store failed")
            } else if ctx.core_stopped() {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "core stopped")
            } else if ctx.store_stalled() {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "store stalled")
            } else {
                http::text(StatusCode::OK, "ok")
            }
        }
        // Ready: accepting new connections, which a server holding `max_connections`
        // sessions is not (a new handshake gets 503 "Too many sessions").
        "/readyz" => {
            if ctx.store_failed() {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "store failed")
            } else if ctx.core_stopped() {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "core stopped")
            } else if ctx.store_stalled() {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "store stalled")
            } else if ctx.is_draining() {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else if ctx.sessions_full() {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "full")
            } else {
                http::text(StatusCode::OK, "ready")
            }
        }
        "/metrics" => metrics(&ctx).await,
        "/" | "/index.html" => http::with_body(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/heartline.js" => {
            http::with_body(StatusCode::OK, "text/javascript; charset=utf-8", CLIENT_JS)
        }
        p => match p.strip_prefix("/api/") {
            Some(rest) => {
                let rest = rest.to_owned();
                api::handle(req, ctx, &rest, conn.request_began).await
            }
            None => http::text(StatusCode::NOT_FOUND, "not found"),
        },
    }
}

async fn metrics(ctx: &Context) -> Response<Body> {
    let (tx, rx) = oneshot::channel();
    if ctx.actor.send(Msg::Metrics(tx)).await.is_err() {
        return http::empty(StatusCode::SERVICE_UNAVAILABLE);
    }
    match rx.await {
        Ok(text) => http::with_body(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            text,
        ),
        Err(_) => http::empty(StatusCode::SERVICE_UNAVAILABLE),
    }
}
