//! One TCP connection: HTTP/1.1 with upgrades, watched from accept by the handshake
//! deadline.
//!
//! `server.handshake_timeout_ms` counts from TCP accept. Until a request is complete enough
//! to reach a handler, only this task sees the connection, so it enforces the deadline
//! itself: a connection that is idle, or dribbles a request line and headers (slowloris),
//! is dropped when its time runs out. The same rule applies between requests on a
//! keep-alive connection, counted from the end of the last one, or from the last bytes of
//! its response to leave, as a response to a slow reader is still being written after its
//! handler returned. A request being served (a held polling GET) is never cut; once a
//! WebSocket is upgraded the core enforces the rest of the handshake (a namespace connect)
//! from the same accept instant. Closing a kept-alive connection that simply stayed idle
//! is routine; only one that never completed a request, or was sending one, counts as
//! refused (`heartline_admission_refused_total{reason="http_timeout"}`). Until then, a
//! connection with no request being served is listed as quiet, and closed sooner if the
//! socket bound is reached and a newcomer needs its socket
//! ([`crate::admission::QuietConnections`]).
//!
//! A request answered with an error before its body was all read (a polling POST over
//! `max_payload_bytes` answered 413, say) leaves its client still sending. Closing the
//! socket with those bytes unread, or arriving after, makes the kernel answer them with a
//! reset, and a client still writing its body then reports a broken connection
//! (`EPIPE`, "connection reset") instead of the answer it was sent. So after such an
//! answer, when hyper ends the connection (its side already shut for writing), the socket
//! lingers: what the client still sends is read and dropped until it closes its side, for
//! at most [`LINGER`] and [`LINGER_BYTES`], as web servers do (Apache's lingering close,
//! nginx's `lingering_close`). A WebSocket the server closes on what its peer was still
//! sending (a frame over the limit, say) lingers the same way after its close frame
//! ([`linger_closed`]). Not when the client has closed already, nor near the socket
//! bound, whose sockets go to newcomers, nor past [`MAX_LINGERING`] at once: a lingering
//! socket is no longer listed as quiet, so clients answered errors on purpose could
//! otherwise hold sockets no newcomer can take.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::admission::{Permit, QuietHandle};
use crate::clock::Clock;
use crate::context::Context;
use crate::engineio::ConnInfo;
use crate::metrics::RuntimeMetrics;
use crate::routes;

/// No time recorded.
const NONE: u64 = u64::MAX;

/// Longest a closed connection reads what its client still sends after an error answer.
const LINGER: Duration = Duration::from_secs(2);

/// Most bytes a lingering connection reads and drops.
const LINGER_BYTES: usize = 16 << 20;

/// Most sockets lingering at once; past it, a socket closes at once as before.
const MAX_LINGERING: u64 = 1024;

/// Requests in flight on a connection, when the last one ended, and what its socket saw.
/// Times are milliseconds on the core's clock.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Requests that reached a handler.
    requests: AtomicU64,
    idle_since_ms: AtomicU64,
    /// The last time bytes of a response were written.
    last_write_ms: AtomicU64,
    /// When the first bytes arrived since the last request reached its handler, or
    /// [`NONE`]: a request is coming in.
    next_began_ms: AtomicU64,
    /// The socket refused the last write (its buffer full): a response is still being
    /// written, however long ago its handler returned.
    write_blocked: AtomicBool,
    /// A request was answered `101`: the connection is becoming a WebSocket.
    upgrading: AtomicBool,
    /// The last request had a body and was answered with an error, perhaps before its body
    /// was all read: a close after it lingers.
    error_with_body: AtomicBool,
    /// The connection ended after such an answer: its socket lingers when dropped.
    linger: AtomicBool,
}

impl Activity {
    fn new(now_ms: u64) -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            last_write_ms: AtomicU64::new(now_ms),
            next_began_ms: AtomicU64::new(NONE),
            write_blocked: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            error_with_body: AtomicBool::new(false),
            linger: AtomicBool::new(false),
        }
    }

    /// When the connection last did something: a request ended or response bytes left.
    fn quiet_since_ms(&self) -> u64 {
        let ended = self.idle_since_ms.load(Ordering::Relaxed);
        ended.max(self.last_write_ms.load(Ordering::Relaxed))
    }
}

struct InFlight {
    activity: Arc<Activity>,
    quiet: Arc<QuietHandle>,
    ctx: Arc<Context>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.ctx.clock.now().as_millis();
        self.activity.idle_since_ms.store(now, Ordering::Relaxed);
        if self.activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.quiet.idle(now);
        }
    }
}

/// The connection's socket as hyper sees it: notes when the bytes of a request begin to
/// arrive (to tell a request cut short from an idle connection) and when those of a
/// response leave. After an upgrade the WebSocket takes the
/// plain stream back ([`Watched::into_inner`]) and pays for none of this. Dropped after a
/// connection that ended on an error answer, it lingers (see the module docs).
#[derive(Debug)]
pub(crate) struct Watched {
    /// Always `Some` until taken by [`Watched::into_inner`] or a linger.
    tcp: Option<TcpStream>,
    activity: Arc<Activity>,
    clock: Clock,
    /// The connection's slot, kept while the socket lingers.
    permit: Arc<Permit>,
    metrics: Arc<RuntimeMetrics>,
}

impl Watched {
    /// The socket (`None` only if already taken, which nothing does before a drop).
    pub(crate) fn into_inner(mut self) -> Option<TcpStream> {
        self.tcp.take()
    }

    fn tcp(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.tcp
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Notes what a write to the socket came to.
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        let blocked = polled.is_pending();
        if let Poll::Ready(Ok(n)) = polled {
            if *n > 0 {
                let now = self.clock.now().as_millis();
                self.activity.last_write_ms.store(now, Ordering::Relaxed);
            }
        }
        self.activity
            .write_blocked
            .store(blocked, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match self.tcp() {
            Ok(tcp) => tcp.poll_read(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        let between_requests = self.activity.in_flight.load(Ordering::Acquire) == 0;
        if buf.filled().len() > before && between_requests {
            let now = self.clock.now().as_millis();
            let _ = self.activity.next_began_ms.compare_exchange(
                NONE,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.tcp() {
            Ok(tcp) => tcp.poll_write(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.tcp() {
            Ok(tcp) => tcp.poll_write_vectored(cx, bufs),
            Err(e) => return Poll::Ready(Err(e)),
        };
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.tcp() {
            Ok(tcp) => tcp.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.tcp() {
            Ok(tcp) => tcp.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.activity.linger.load(Ordering::Relaxed) {
            return;
        }
        if let Some(tcp) = self.tcp.take() {
            linger_closed(tcp, self.permit.clone(), &self.metrics);
        }
    }
}

/// A socket the server has answered and closed its side of, its peer perhaps still
/// sending (an HTTP body after an error answer, a WebSocket message after a refusing
/// close frame): lingers, reading and dropping what comes (see the module docs), unless
/// its peer has closed too, the sockets are running out ([`near_socket_bound`]),
/// [`MAX_LINGERING`] linger already, or there is no runtime to linger on; then it closes
/// at once. `permit` is its connection's slot, kept meanwhile.
pub(crate) fn linger_closed(tcp: TcpStream, permit: Arc<Permit>, metrics: &Arc<RuntimeMetrics>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if sockets_nearly_out(metrics) {
        return;
    }
    // A peer that has closed its side (an HTTP body read whole after all) is owed nothing
    // more.
    let mut peek = [0u8; 512];
    match tcp.try_read(&mut peek) {
        Ok(0) => return,
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => return,
    }
    if metrics
        .tcp_lingering
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_LINGERING).then_some(n + 1)
        })
        .is_err()
    {
        return;
    }
    RuntimeMetrics::inc(&metrics.tcp_lingered);
    let lingered = Lingered(metrics.clone());
    runtime.spawn(linger(tcp, permit, lingered));
}

/// One socket counted in `heartline_tcp_lingering` while it lingers.
struct Lingered(Arc<RuntimeMetrics>);

impl Drop for Lingered {
    fn drop(&mut self) {
        self.0.tcp_lingering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads and drops what the client still sends, until it closes its side, for at most
/// [`LINGER`] and [`LINGER_BYTES`]; then the socket closes with nothing unread, so the
/// client is not reset before it has read its answer. `_permit` keeps the slot counted;
/// the buffer lives only between waits, so a lingering socket's task stays small.
async fn linger(mut tcp: TcpStream, _permit: Arc<Permit>, _lingered: Lingered) {
    use tokio::io::AsyncWriteExt;
    // hyper shut the writing side after the answer; nothing more is sent either way.
    let _ = tcp.shutdown().await;
    let until = tokio::time::Instant::now() + LINGER;
    let mut dropped = 0usize;
    while dropped < LINGER_BYTES {
        match tokio::time::timeout_at(until, tcp.readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let mut buf = [0u8; 4096];
        loop {
            match tcp.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => dropped += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
            if dropped >= LINGER_BYTES {
                return;
            }
        }
    }
}

/// Whether the open TCP connections are near their bound
/// ([`crate::admission::socket_bound`]): at seven eighths of it, responses close their
/// connections instead of keeping them alive, so that room is kept for newcomers before
/// the bound is reached, and kept-alive connections too busy ever to be quiet long enough
/// to be taken ([`crate::admission::QuietConnections`]) cannot hold it.
fn near_socket_bound(ctx: &Context) -> bool {
    sockets_nearly_out(&ctx.metrics)
}

/// [`near_socket_bound`], from the counts themselves.
fn sockets_nearly_out(metrics: &RuntimeMetrics) -> bool {
    let bound = metrics.tcp_bound.load(Ordering::Relaxed);
    bound > 0 && metrics.tcp_open.load(Ordering::Relaxed) >= bound - bound / 8
}

/// Where a connection with no request being served counts its time from: a never-served
/// one from its accept (the handshake timeout's start); a kept-alive one from its last
/// activity, or, with the next request coming in, from that request's first bytes, so a
/// request begun late in the quiet time has the whole timeout to arrive.
fn timed_from_ms(activity: &Activity) -> u64 {
    let quiet = activity.quiet_since_ms();
    let began = activity.next_began_ms.load(Ordering::Relaxed);
    if began == NONE || activity.requests.load(Ordering::Relaxed) == 0 {
        quiet
    } else {
        began.max(quiet)
    }
}

/// Serves a TCP connection until it closes, is upgraded, or runs out of time.
pub async fn serve(stream: TcpStream, remote: SocketAddr, ctx: Arc<Context>, permit: Permit) {
    let accepted_at = ctx.clock.now();
    let _ = stream.set_nodelay(true);
    RuntimeMetrics::inc(&ctx.metrics.tcp_accepted);
    let permit = Arc::new(permit);
    let info = ConnInfo {
        remote,
        accepted_at,
        request_began: accepted_at,
        permit: permit.clone(),
        first_request: true,
    };
    let activity = Arc::new(Activity::new(accepted_at.as_millis()));
    let quiet = Arc::new(ctx.quiet.accepted(accepted_at.as_millis()));
    let service = {
        let ctx = ctx.clone();
        let activity = activity.clone();
        let quiet = quiet.clone();
        service_fn(move |req| {
            activity.in_flight.fetch_add(1, Ordering::AcqRel);
            quiet.busy();
            activity.error_with_body.store(false, Ordering::Relaxed);
            let has_body = !hyper::body::Body::is_end_stream(req.body());
            let guard = InFlight {
                activity: activity.clone(),
                quiet: quiet.clone(),
                ctx: ctx.clone(),
            };
            let began_ms = activity.next_began_ms.swap(NONE, Ordering::Relaxed);
            let mut info = info.clone();
            // A later request on a kept-alive connection (a client reconnecting over its
            // pooled connection) starts its own handshake clock: counting from the
            // original accept would time its new session out at once.
            info.first_request = activity.requests.fetch_add(1, Ordering::Relaxed) == 0;
            if !info.first_request {
                info.accepted_at = ctx.clock.now();
                // Its time to arrive counts from its first bytes, not from the response
                // before it: a POST a browser sends over a connection quiet for most of
                // the timeout has the whole timeout for its body too. Bytes read along
                // with the request before (pipelined) noted no start: those count from
                // that request's response.
                info.request_began = heartline_core::Instant::from_millis(if began_ms == NONE {
                    activity.quiet_since_ms()
                } else {
                    began_ms
                });
            }
            let ctx = ctx.clone();
            let answered = activity.clone();
            async move {
                let mut resp = routes::route(req, ctx.clone(), info).await;
                // A body is read whole before any success is answered; an error may have
                // been answered without it.
                let failed = resp.status().is_client_error() || resp.status().is_server_error();
                answered
                    .error_with_body
                    .store(has_body && failed, Ordering::Relaxed);
                let upgrade = resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS;
                if upgrade {
                    answered.upgrading.store(true, Ordering::Relaxed);
                } else if near_socket_bound(&ctx) {
                    // The sockets are running out: this one is given back after its
                    // response rather than kept alive.
                    resp.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(
            TokioIo::new(Watched {
                tcp: Some(stream),
                activity: activity.clone(),
                clock: ctx.clock,
                permit,
                metrics: ctx.metrics.clone(),
            }),
            service,
        )
        .with_upgrades();
    tokio::pin!(conn);
    let timeout_ms = ctx.config.server.handshake_timeout_ms;
    loop {
        let busy = activity.in_flight.load(Ordering::Acquire) > 0;
        let due = if busy {
            // A request is being served; look again later.
            tokio::time::Instant::now() + Duration::from_millis(timeout_ms.clamp(1, 1000))
        } else {
            ctx.clock.deadline(heartline_core::Instant::from_millis(
                timed_from_ms(&activity).saturating_add(timeout_ms),
            ))
        };
        tokio::select! {
            // The connection first: a request that has arrived is read, and so makes the
            // connection busy, before an eviction notice is looked at.
            biased;
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::trace!(%remote, error = %e, "http connection ended with an error");
                }
                // hyper ended it after an error answer, perhaps with the body still coming:
                // its socket lingers as it is dropped (see `linger_closed` for when not).
                if activity.error_with_body.load(Ordering::Relaxed) {
                    activity.linger.store(true, Ordering::Relaxed);
                }
                break;
            }
            _ = quiet.evicted() => {
                // A newcomer found the sockets all taken and this connection the one to
                // give way. It closes if it is still quiet: a never-served one as it is, a
                // kept-alive one if no request is coming in and it has been quiet long
                // enough. One serving a request, writing a response or being upgraded, or
                // with a request coming in, stays, and hands the eviction on so that the
                // newcomer admitted over the bound is paid for; a kept-alive one that only
                // wrote too recently is listed again.
                let idle = activity.in_flight.load(Ordering::Acquire) == 0
                    && !activity.write_blocked.load(Ordering::Relaxed)
                    && !activity.upgrading.load(Ordering::Relaxed);
                let never_served = activity.requests.load(Ordering::Relaxed) == 0;
                let arriving = activity.next_began_ms.load(Ordering::Relaxed) != NONE;
                let since = activity.quiet_since_ms();
                let now = ctx.clock.now().as_millis();
                let quiet_enough = now >= since.saturating_add(ctx.quiet.min_quiet_ms());
                if idle && (never_served || (!arriving && quiet_enough)) {
                    RuntimeMetrics::inc(&ctx.metrics.evicted_quiet);
                    tracing::debug!(%remote, "quiet connection closed: its socket went to a newcomer at the socket bound");
                    break;
                }
                ctx.quiet.evict_oldest(now);
                if idle && !arriving {
                    quiet.idle(since);
                }
            }
            _ = tokio::time::sleep_until(due) => {
                let idle = activity.in_flight.load(Ordering::Acquire) == 0;
                let since = timed_from_ms(&activity);
                let expired = ctx.clock.now().as_millis() >= since.saturating_add(timeout_ms);
                if idle && expired {
                    let never_served = activity.requests.load(Ordering::Relaxed) == 0;
                    let partial = activity.next_began_ms.load(Ordering::Relaxed) != NONE;
                    if never_served || partial {
                        RuntimeMetrics::inc(&ctx.metrics.http_timeouts);
                        tracing::debug!(%remote, "no complete request within handshake_timeout_ms; closed");
                    } else {
                        tracing::trace!(%remote, "kept-alive connection idle; closed");
                    }
                    break;
                }
            }
        }
    }
}
