//! One TCP connection: HTTP/1.1 with upgrades, watched from accept by the handshake
//! deadline.
//!
//! `server.handshake_timeout_ms` counts from TCP accept. Until a request is complete enough
//! to reach a handler, only this task sees the connection, so it enforces the deadline
//! itself: a connection that is idle, or dribbles a request line and headers (slowloris),
//! is dropped when its time runs out. The same rule applies between requests on a
//! keep-alive connection, counted from the end of the last one. A request being served
//! (a held polling GET) is never cut; once a WebSocket is upgraded the core enforces the
//! rest of the handshake (a namespace connect) from the same accept instant.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::admission::Permit;
use crate::context::Context;
use crate::engineio::ConnInfo;
use crate::metrics::RuntimeMetrics;
use crate::routes;

/// Requests in flight on a connection and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds on the core's clock.
    idle_since_ms: AtomicU64,
}

struct InFlight {
    activity: Arc<Activity>,
    ctx: Arc<Context>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity
            .idle_since_ms
            .store(self.ctx.clock.now().as_millis(), Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves a TCP connection until it closes, is upgraded, or runs out of time.
pub async fn serve(stream: TcpStream, remote: SocketAddr, ctx: Arc<Context>, permit: Permit) {
    let accepted_at = ctx.clock.now();
    let _ = stream.set_nodelay(true);
    RuntimeMetrics::inc(&ctx.metrics.tcp_accepted);
    let info = ConnInfo {
        remote,
        accepted_at,
        request_began: accepted_at,
        permit: Arc::new(permit),
        first_request: true,
    };
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        idle_since_ms: AtomicU64::new(accepted_at.as_millis()),
    });
    let service = {
        let ctx = ctx.clone();
        let activity = activity.clone();
        let served = Arc::new(AtomicU64::new(0));
        service_fn(move |req| {
            activity.in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = InFlight {
                activity: activity.clone(),
                ctx: ctx.clone(),
            };
            let mut info = info.clone();
            // A later request on a kept-alive connection (a client reconnecting over its
            // pooled connection) starts its own handshake clock: counting from the
            // original accept would time its new session out at once.
            info.first_request = served.fetch_add(1, Ordering::Relaxed) == 0;
            if !info.first_request {
                info.accepted_at = ctx.clock.now();
                // Its headers were coming in since the request before it ended.
                info.request_began = heartline_core::Instant::from_millis(
                    activity.idle_since_ms.load(Ordering::Relaxed),
                );
            }
            let ctx = ctx.clone();
            async move {
                let resp = routes::route(req, ctx, info).await;
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let timeout_ms = ctx.config.server.handshake_timeout_ms;
    loop {
        let busy = activity.in_flight.load(Ordering::Acquire) > 0;
        let idle_since =
            heartline_core::Instant::from_millis(activity.idle_since_ms.load(Ordering::Relaxed));
        let due = if busy {
            // A request is being served; look again later.
            tokio::time::Instant::now() + Duration::from_millis(timeout_ms.clamp(1, 1000))
        } else {
            ctx.clock.deadline(idle_since.add_ms(timeout_ms))
        };
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::trace!(%remote, error = %e, "http connection ended with an error");
                }
                break;
            }
            _ = tokio::time::sleep_until(due) => {
                let idle = activity.in_flight.load(Ordering::Acquire) == 0;
                let since = activity.idle_since_ms.load(Ordering::Relaxed);
                let expired = ctx.clock.now().as_millis() >= since.saturating_add(timeout_ms);
                if idle && expired {
                    RuntimeMetrics::inc(&ctx.metrics.http_timeouts);
                    tracing::debug!(%remote, "connection idle past handshake_timeout_ms; closed");
                    break;
                }
            }
        }
    }
}
