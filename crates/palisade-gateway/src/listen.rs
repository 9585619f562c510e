//! Serving a router on a TCP listener: what `axum::serve` does (HTTP/1 and HTTP/2 on one port,
//! graceful shutdown), plus what a server facing untrusted clients needs and it leaves out:
//! deadlines. `axum::serve` gives hyper no timer, and without one hyper enforces no header
//! timeout, so a client that sent its headers a byte at a time (slowloris), or connected and sent
//! nothing, held a connection, and its task, for as long as it liked; and nothing closes an
//! HTTP/2 connection that stays open with no request in it. Connections are not upgraded (no
//! WebSockets, no CONNECT): nothing here uses them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::Router;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::GatewayError;

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a new connection may take to bring its first request (any protocol), and an
    /// HTTP/1 client each request's headers; past it the connection is closed. The HTTP/1 clock
    /// starts when the server is ready for the next request, so this also closes a keep-alive
    /// connection left idle that long. (A REST body has its own deadline, the model policy's
    /// `input.body_timeout_ms`.)
    pub header_read_timeout: Duration,
    /// How long a connection that has had requests may stay open with none in progress, whatever
    /// its protocol; past it the server asks it to close (HTTP/2: `GOAWAY`, which clients answer
    /// by reconnecting when they next need to) and drops it one `header_read_timeout` later if
    /// it has not, unless a request is then being handled on it or one answered since is still
    /// being written (it is left to end; such writes count for up to this long after the request
    /// to close). A request is in progress from its headers until the socket has taken the last
    /// of its response: a response the client reads slowly keeps its connection, one it has
    /// stopped reading for this long does not. Any write counts, HTTP/2 `PING` answers too: a
    /// client that pings keeps its connection, as one sending a cheap request now and then
    /// would. HTTP/1 connections are usually closed sooner, by the header deadline.
    pub idle_timeout: Duration,
}

impl Default for ServeOptions {
    /// 30 s for headers, hyper's own default once it has a timer; 60 s idle (nginx keeps an idle
    /// connection 75 s, Envoy one hour; hyper and `axum::serve` forever).
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, with [`ServeOptions::default`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    serve_with(listener, router, shutdown, ServeOptions::default()).await
}

/// How long shutdown waits for open connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish the requests it has begun (for up to 30 s), and returns.
///
/// A connection must bring its first request within the header deadline, whatever its
/// protocol: hyper's own HTTP/1 deadline starts only once the connection is known to be HTTP/1,
/// after its first bytes, and HTTP/2 has none, so a client that connected and sent nothing, or
/// only part of HTTP/2's opening, would otherwise hold its connection for good. Afterwards it
/// must not stay idle (no request in progress) past [`ServeOptions::idle_timeout`].
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> Result<(), GatewayError> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    // `stop` tells the connections to finish; each holds an `open` receiver until it ends.
    let (stop_tx, stop_rx) = watch::channel(());
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let activity = Arc::new(Activity::new());
        let counted = activity.clone();
        let router = router.clone();
        let service = service_fn(move |req: axum::http::Request<Incoming>| {
            let request = Request::begin(counted.clone());
            let call = router.clone().oneshot(req);
            async move {
                let response = call.await;
                drop(request);
                response
            }
        });
        let watched = Watched {
            tcp,
            activity: activity.clone(),
        };
        let conn = builder
            .serve_connection(TokioIo::new(watched), service)
            .into_owned();
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // Looked at when the first request is due or the connection could first be idle too
            // long, whichever comes first, and then as `idle_until` says.
            let first_look = options.header_read_timeout.min(options.idle_timeout);
            let mut due = std::pin::pin!(tokio::time::sleep(first_look));
            // When it was asked to close for idling: dropped at the next `due` if still open.
            let (mut asked, mut stopping) = (None, false);
            loop {
                tokio::select! {
                    done = conn.as_mut() => {
                        if let Err(e) = done {
                            tracing::debug!(error = %e, "connection closed with an error");
                        }
                        break;
                    }
                    () = &mut due => {
                        if let Some(asked) = asked {
                            // Asked to close: dropped unless a request is still in progress on it
                            // (one sent as the request to close crossed it, or its response still
                            // being read), which is left to end.
                            if !activity.busy_since(asked, &options) {
                                break;
                            }
                            due.as_mut().reset(
                                tokio::time::Instant::now() + options.header_read_timeout,
                            );
                            continue;
                        }
                        match activity.idle_until(&options) {
                            Some(next) => due.as_mut().reset(next),
                            None => {
                                // An HTTP/2 connection still in its handshake ignores the
                                // request to close, so it gets one more deadline and is dropped.
                                conn.as_mut().graceful_shutdown();
                                let now = tokio::time::Instant::now();
                                due.as_mut().reset(now + options.header_read_timeout);
                                asked = Some(now);
                            }
                        }
                    }
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop((stop_rx, open_rx));
    let _ = stop_tx.send(());
    if tokio::time::timeout(SHUTDOWN_GRACE, open_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {SHUTDOWN_GRACE:?} after shutdown began; leaving them"
        );
    }
    Ok(())
}

/// What a connection is doing, for its idle deadlines: requests being handled, when the last was
/// answered, and when bytes were last written to the client.
///
/// A response is sent for as long as the socket takes its bytes: hyper lets go of a body once it
/// has buffered the body's last frame, long before a slow reader has them all, so what counts
/// is the socket, not the body. A client that stops reading stops the writes, and its connection
/// is then idle like an empty one: it cannot hold the connection for good. Any write counts,
/// HTTP/2 `PING` answers too: a client that pings keeps its connection, as one sending a cheap
/// request now and then would.
struct Activity {
    opened: tokio::time::Instant,
    /// Requests begun whose response is not ready yet.
    handling: AtomicUsize,
    /// When the last request's response was ready: see [`Activity::stamp`].
    answered: AtomicU64,
    /// When bytes were last written to the socket: see [`Activity::stamp`].
    written: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: tokio::time::Instant::now(),
            handling: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    /// Notes now in `at`, as milliseconds from `opened` plus one (0: never).
    fn stamp(&self, at: &AtomicU64) {
        let since = self.opened.elapsed().as_millis() as u64 + 1;
        at.fetch_max(since, Ordering::AcqRel);
    }

    fn when(&self, at: &AtomicU64) -> Option<tokio::time::Instant> {
        match at.load(Ordering::Acquire) {
            0 => None,
            t => Some(self.opened + Duration::from_millis(t - 1)),
        }
    }

    /// `None` when the connection has been idle past its deadline (the first request's or, once
    /// it has had one, the idle timeout since its last answer or write, whichever is later);
    /// otherwise when to look again.
    fn idle_until(&self, options: &ServeOptions) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        if self.handling.load(Ordering::Acquire) > 0 {
            return Some(now + options.idle_timeout);
        }
        // Before its first request a connection's writes (HTTP/2's opening) do not count.
        let due = match self.when(&self.answered) {
            None => self.opened + options.header_read_timeout,
            Some(answered) => {
                let written = self.when(&self.written).unwrap_or(answered);
                answered.max(written) + options.idle_timeout
            }
        };
        (due > now).then_some(due)
    }

    /// For a connection asked to close at `asked`: whether a request is being handled on it, or,
    /// for up to an idle timeout after `asked`, one answered since is still being sent (a write
    /// within the idle timeout). Writes alone do not count: the request to close, and HTTP/2
    /// `PING` answers to a client that ignores it, are writes too; nor, past that time, do writes
    /// after an answer, or a client that ignores the request to close could keep the connection
    /// by sending one request and then only `PING`s.
    fn busy_since(&self, asked: tokio::time::Instant, options: &ServeOptions) -> bool {
        // Stamps are whole milliseconds, rounded down.
        let answered_since = self
            .when(&self.answered)
            .is_some_and(|a| a + Duration::from_millis(1) >= asked);
        self.handling.load(Ordering::Acquire) > 0
            || (answered_since
                && asked.elapsed() < options.idle_timeout
                && self
                    .when(&self.written)
                    .is_some_and(|last| last.elapsed() < options.idle_timeout))
    }
}

/// A request being handled on a connection, from its headers until its response is ready (or it
/// is dropped: a reset HTTP/2 stream).
struct Request(Arc<Activity>);

impl Request {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.handling.fetch_add(1, Ordering::AcqRel);
        Request(activity)
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.0.stamp(&self.0.answered);
        self.0.handling.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's socket, noting each write that goes through on its [`Activity`].
struct Watched {
    tcp: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn noted(&self, written: &Poll<std::io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.stamp(&self.activity.written);
        }
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.noted(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.noted(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// After a failed `accept`: a connection that went away before it was accepted is nothing; any
/// other error (out of file descriptors, say) is logged and the loop waits a second before
/// trying again, rather than spinning on it.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Sends `bytes` on a new connection and returns how long the server took to close it
    /// (failing if it kept it open 10 s).
    async fn closed_after(addr: std::net::SocketAddr, bytes: &[u8]) -> Duration {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(bytes).await.unwrap();
        let t = Instant::now();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("the server kept open a connection that sent {bytes:?}"))
            .unwrap();
        t.elapsed()
    }

    #[tokio::test]
    async fn connections_that_never_complete_a_request_are_cut_off_and_others_are_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = Router::new().route("/", get(|| async { "ok" }));
        let options = ServeOptions {
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(60),
        };
        let server = tokio::spawn(serve_with(
            listener,
            router,
            async {
                let _ = stopped.await;
            },
            options,
        ));

        // Headers trickled (hyper's HTTP/1 deadline), nothing at all, part of HTTP/2's opening,
        // and all of it with no request after (the first-request deadline): all cut off.
        let h2_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for bytes in [
            &b"GET / HTTP/1.1\r\nHost: t\r\n"[..],
            b"",
            b"PRI * HTTP/2.0\r\n",
            h2_preface,
        ] {
            let took = closed_after(addr, bytes).await;
            assert!(took >= Duration::from_millis(150), "{bytes:?}: {took:?}");
        }

        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        ok.read_to_end(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("ok"), "{reply}");

        // A keep-alive connection that has had its first request is not cut by that deadline
        // (only by hyper's header deadline once idle, here 200 ms as well).
        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("graceful shutdown finished")
            .unwrap()
            .unwrap();
    }

    /// A body of `chunks` chunks of `size` bytes, `every` apart (forever if `chunks` is `None`,
    /// or until the connection is gone).
    fn trickled(chunks: Option<usize>, size: usize, every: Duration) -> axum::body::Body {
        let (mut tx, body) =
            http_body_util::channel::Channel::<axum::body::Bytes, std::convert::Infallible>::new(1);
        tokio::spawn(async move {
            let mut sent = 0;
            while chunks.is_none_or(|n| sent < n) {
                if tx.send_data(vec![b'x'; size].into()).await.is_err() {
                    return;
                }
                sent += 1;
                tokio::time::sleep(every).await;
            }
        });
        axum::body::Body::new(body)
    }

    async fn serve_on_loopback(router: Router, options: ServeOptions) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(
            listener,
            router,
            std::future::pending(),
            options,
        ));
        addr
    }

    #[tokio::test]
    async fn a_response_still_being_read_keeps_its_connection_and_a_stalled_one_does_not() {
        use axum::body::Body;
        use http_body_util::BodyExt as _;

        let router = Router::new()
            .route(
                "/slow",
                get(|| async { trickled(Some(6), 10, Duration::from_millis(200)) }),
            )
            .route(
                "/endless",
                get(|| async { trickled(None, 64 << 10, Duration::ZERO) }),
            );
        let options = ServeOptions {
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
        };
        let addr = serve_on_loopback(router, options).await;

        // HTTP/2: a body sent over 1.2 s, four idle timeouts, arrives whole (the connection
        // is not taken for idle while it is sent, nor dropped under it).
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = axum::http::Request::get(format!("http://{addr}/slow"))
            .body(Body::empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("the whole body");
        assert_eq!(body.to_bytes().len(), 60);

        // HTTP/1: a client that asks for an endless body and stops reading it has its
        // connection closed (what it then reads ends), not held for as long as it likes.
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut buf = vec![0u8; 1 << 16];
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(n) = stalled.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "a client that stopped reading kept its connection"
        );
    }

    /// A raw HTTP/2 connection to a server of `GET /` with a 200 ms header deadline and an
    /// `idle` timeout, past HTTP/2's opening (the preface and an empty SETTINGS frame).
    async fn raw_http2(
        idle: Duration,
    ) -> (
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        let router = Router::new().route("/", get(|| async { "ok" }));
        let options = ServeOptions {
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: idle,
        };
        let addr = serve_on_loopback(router, options).await;
        let conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (rx, mut tx) = conn.into_split();
        tx.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        (rx, tx)
    }

    /// Sends an HTTP/2 PING on `tx` every 50 ms, never acknowledging the server's.
    fn pinging(mut tx: tokio::net::tcp::OwnedWriteHalf) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let ping = b"\0\0\x08\x06\0\0\0\0\0pingping";
            while tx.write_all(ping).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    #[tokio::test]
    async fn an_http2_client_that_only_pings_is_cut_off_all_the_same() {
        // No request, a PING every 50 ms; the server's own PING, sent with its GOAWAY, is never
        // answered.
        let (mut rx, tx) = raw_http2(Duration::from_secs(60)).await;
        let pinger = pinging(tx);
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = rx.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        pinger.abort();
        assert!(
            closed.is_ok(),
            "a connection that only pinged was kept open"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_request_after_the_goaway_does_not_let_pings_keep_the_connection() {
        let (mut rx, mut tx) = raw_http2(Duration::from_millis(300)).await;
        // A GET / on a stream of HTTP/2, its headers in HPACK's static table but the authority.
        let get = |stream: u8| {
            let mut f = vec![0, 0, 6, 0x1, 0x5, 0, 0, 0, stream];
            f.extend_from_slice(&[0x82, 0x86, 0x84, 0x41, 0x01, b't']);
            f
        };
        tx.write_all(&get(1)).await.unwrap();
        // Reads frames until the connection ends; says when the GOAWAY comes.
        let (goaway_tx, goaway) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            let mut goaway_tx = Some(goaway_tx);
            let mut head = [0u8; 9];
            while rx.read_exact(&mut head).await.is_ok() {
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                if rx.read_exact(&mut payload).await.is_err() {
                    break;
                }
                if head[3] == 0x7
                    && let Some(tx) = goaway_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        // Idle until asked to close; then a request, which the GOAWAY still allows (the
        // server's PING is never acknowledged), and PINGs every 50 ms.
        tokio::time::timeout(Duration::from_secs(5), goaway)
            .await
            .expect("asked to close once idle")
            .unwrap();
        tx.write_all(&get(3)).await.unwrap();
        let pinger = pinging(tx);
        let closed = tokio::time::timeout(Duration::from_secs(5), reader).await;
        pinger.abort();
        assert!(
            closed.is_ok(),
            "one request and PINGs kept a connection asked to close"
        );
    }

    #[tokio::test]
    async fn a_large_response_read_slowly_keeps_its_connection() {
        // One frame, which hyper takes whole and lets go of at once: what keeps the connection
        // is the socket taking its bytes, more than the kernel's buffers hold, over ~2 s.
        const SIZE: usize = 32 << 20;
        let router = Router::new().route(
            "/big",
            get(|| async { axum::body::Body::from(vec![b'x'; SIZE]) }),
        );
        let options = ServeOptions {
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
        };
        let addr = serve_on_loopback(router, options).await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let (mut got, mut buf) = (0, vec![0u8; 1 << 20]);
        while got <= SIZE {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(got > SIZE, "the connection was cut after {got} bytes");
    }

    #[tokio::test]
    async fn an_http2_connection_left_idle_is_closed_and_a_busy_one_is_not() {
        use axum::body::Body;
        use http_body_util::BodyExt as _;

        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(900)).await;
                "slow"
            }),
        );
        let options = ServeOptions {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_millis(300),
        };
        let addr = serve_on_loopback(router, options).await;

        let get_on = |sender: &mut hyper::client::conn::http2::SendRequest<Body>, path: &str| {
            let req = axum::http::Request::get(format!("http://{addr}{path}"))
                .body(Body::empty())
                .unwrap();
            let sent = sender.send_request(req);
            async move {
                let resp = sent.await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap().to_bytes()
            }
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);

        // Requests 200 ms apart, and one that runs three times the idle timeout: never idle.
        for _ in 0..3 {
            assert_eq!(&get_on(&mut sender, "/").await[..], b"ok");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(&get_on(&mut sender, "/slow").await[..], b"slow");
        assert!(!conn.is_finished(), "a connection in use was closed");

        // Then idle: the server says GOAWAY and the connection ends at once (not 5 s later,
        // when the server would drop it).
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the idle connection was closed")
            .unwrap()
            .unwrap();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
}
