//! The connections of one load point: HTTP/1.1 keep-alive connections, each used by one request at a
//! time, opened ahead of the measured phase or on demand, and counted.
//!
//! Invariants:
//! - A connection goes back to the pool only after its response ended cleanly and the connection is
//!   ready for the next request, and the request that used it puts it back itself before it ends. So a
//!   stream that sends its next request at once always finds a connection: the measured phase opens a
//!   connection only when fewer are open than requests are in flight (or the server closed one).
//! - Whoever opens a connection knows it ([`Pool::checkout`] says so), so every request that paid for a
//!   connect is flagged in its record.
//! - A connection is driven by the task that uses it ([`Conn::drive`]): reading a chunk wakes one task,
//!   not a connection task and then the request's task. An idle connection is not polled; one the
//!   server closed meanwhile is noticed when it is taken out of the pool, or by the send failing.
//! - Connections of a point are closed when the point ends (the pool is dropped).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::health::Histogram;
use super::net::{self, Socket};

/// At most this many connections are opened at once while warming up: a thousand SYNs at once overflow
/// small accept queues, and each dropped SYN costs a second.
const OPEN_AT_ONCE: usize = 64;
/// How long opening the connections of a point may take in all. Some servers serve a kept-alive
/// connection with a thread of a small pool and cannot hold many; the point then goes on with the
/// connections that did open (their number is recorded).
const WARM_UP_LIMIT: Duration = Duration::from_secs(30);
/// The path of the cheap request that proves a new connection is served (no engine work).
const PROBE_PATH: &str = "/v1/models";

/// Where the server is: resolved once per point.
#[derive(Debug, Clone)]
pub struct Dest {
    addrs: Vec<SocketAddr>,
    host: HeaderValue,
    /// `Authorization: Bearer …` for engines started with an API key (marked sensitive, so hyper never
    /// shows it).
    authorization: Option<HeaderValue>,
    /// The base URL's path, without a trailing slash (usually empty).
    prefix: String,
}

impl Dest {
    /// Resolves `base_url` (`http://host:port[/prefix]`).
    pub async fn resolve(base_url: &str) -> anyhow::Result<Dest> {
        let uri: Uri = base_url
            .parse()
            .with_context(|| format!("`{base_url}` is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            other => bail!(
                "`{base_url}`: the load client speaks plain HTTP only (scheme {})",
                other.unwrap_or("missing")
            ),
        }
        let authority = uri
            .authority()
            .with_context(|| format!("`{base_url}` has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("resolving {}", authority.host()))?
            .collect();
        if addrs.is_empty() {
            bail!("{} resolves to no address", authority.host());
        }
        Ok(Dest {
            addrs,
            host: HeaderValue::from_str(authority.as_str())
                .with_context(|| format!("`{base_url}`: bad host"))?,
            prefix: uri.path().trim_end_matches('/').to_string(),
            authorization: None,
        })
    }

    /// Every request (the measured ones and those that open connections) carries `key`.
    pub fn with_api_key(mut self, key: Option<&crate::secret::ApiKey>) -> anyhow::Result<Dest> {
        self.authorization = match key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&key.bearer())
                    .map_err(|_| anyhow::anyhow!("the API key is not a valid header value"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(self)
    }

    /// The origin-form target of an API path (`/v1/completions` under the base URL's path).
    pub fn path(&self, api_path: &str) -> anyhow::Result<Uri> {
        format!("{}{api_path}", self.prefix)
            .parse()
            .with_context(|| format!("bad request path {}{api_path}", self.prefix))
    }

    /// A request to `uri` on this server.
    pub fn request(&self, method: Method, uri: &Uri, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, self.host.clone());
        if let Some(auth) = &self.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        if req.method() == Method::POST {
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        req
    }
}

type Driver = http1::Connection<Socket, Full<Bytes>>;

/// One HTTP/1.1 connection.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Driving,
}

/// The connection's I/O future, polled by whoever uses the connection.
struct Driving {
    io: Pin<Box<Driver>>,
    ended: bool,
}

impl Driving {
    /// Runs `fut` while moving the connection's bytes. If the connection ends first, `fut` still runs to
    /// its end (a response's last bytes may be buffered; a pending send fails once the connection is gone).
    async fn run<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        std::future::poll_fn(|cx| {
            // The connection first: a read it makes now is handed to `fut` in the same wake-up.
            if !self.ended && self.io.as_mut().poll(cx).is_ready() {
                self.ended = true;
            }
            fut.as_mut().poll(cx)
        })
        .await
    }
}

impl Conn {
    async fn open(dest: &Dest, read_lag: Arc<Histogram>) -> anyhow::Result<Conn> {
        let socket = net::connect(&dest.addrs, read_lag)
            .await
            .with_context(|| format!("connecting to {}", dest.host.to_str().unwrap_or("?")))?;
        let (sender, io) = http1::Builder::new()
            .handshake(socket)
            .await
            .context("starting HTTP/1.1")?;
        Ok(Conn {
            sender,
            driver: Driving {
                io: Box::pin(io),
                ended: false,
            },
        })
    }

    /// Sends a request and waits for the response head.
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> hyper::Result<hyper::Response<hyper::body::Incoming>> {
        let sent = self.sender.send_request(req);
        self.driver.run(sent).await
    }

    /// The next frame of `body`: `None` at its end.
    pub async fn frame(
        &mut self,
        body: &mut hyper::body::Incoming,
    ) -> Option<hyper::Result<hyper::body::Frame<Bytes>>> {
        self.driver.run(body.frame()).await
    }

    /// Reads `body` to its end, handing each data frame to `on_data`.
    pub async fn read_to_end(
        &mut self,
        body: &mut hyper::body::Incoming,
        mut on_data: impl FnMut(Bytes),
    ) -> hyper::Result<()> {
        while let Some(frame) = self.frame(body).await {
            if let Ok(data) = frame?.into_data() {
                on_data(data);
            }
        }
        Ok(())
    }

    /// Whether the connection can carry another request (after its response ended). Drives it until
    /// it says so.
    pub async fn reusable(&mut self) -> bool {
        !self.driver.ended && self.driver.run(self.sender.ready()).await.is_ok()
    }

    /// Whether the server closed the connection while it was idle: one poll, no waiting.
    fn closed_while_idle(&mut self) -> bool {
        if self.driver.ended || self.sender.is_closed() {
            return true;
        }
        if self.driver.io.as_mut().now_or_never().is_some() {
            self.driver.ended = true;
        }
        self.driver.ended
    }
}

/// The idle connections of one point.
pub struct Pool {
    dest: Dest,
    idle: Mutex<Vec<Conn>>,
    read_lag: Arc<Histogram>,
}

/// What opening connections before the measured phase achieved.
#[derive(Debug, Clone, Copy)]
pub struct Warmed {
    /// Connections open and idle when the measured phase starts.
    pub open: u32,
    /// How long opening the missing ones took, ms.
    pub ms: f64,
}

impl Pool {
    pub fn new(dest: Dest, read_lag: Arc<Histogram>) -> Pool {
        Pool {
            dest,
            idle: Mutex::new(Vec::new()),
            read_lag,
        }
    }

    pub fn dest(&self) -> &Dest {
        &self.dest
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        // A panic while holding this lock cannot leave the vector inconsistent: use it anyway.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection, or a new one: `(connection, newly opened)`.
    pub async fn checkout(&self) -> anyhow::Result<(Conn, bool)> {
        loop {
            let Some(mut conn) = self.idle().pop() else {
                break;
            };
            if !conn.closed_while_idle() {
                return Ok((conn, false));
            }
        }
        Ok((self.connect().await?, true))
    }

    /// A new connection (never an idle one).
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        Conn::open(&self.dest, Arc::clone(&self.read_lag)).await
    }

    /// Puts a connection whose response ended back, if it can carry another request.
    pub async fn checkin(&self, mut conn: Conn) {
        if conn.reusable().await {
            self.idle().push(conn);
        }
    }

    /// Opens connections until `want` are idle, each proven by a cheap request that the server answers
    /// without engine work (`GET /v1/models`; any status will do, the connection is what counts), at
    /// most [`OPEN_AT_ONCE`] at a time and for at most [`WARM_UP_LIMIT`] (or `limit`, if shorter).
    pub async fn warm(self: &Arc<Self>, want: u32, limit: Duration) -> Warmed {
        let started = Instant::now();
        let have = self.idle().len() as u32;
        let missing = want.saturating_sub(have);
        let gate = Arc::new(Semaphore::new(OPEN_AT_ONCE));
        let mut set = JoinSet::new();
        for _ in 0..missing {
            let (pool, gate) = (Arc::clone(self), Arc::clone(&gate));
            set.spawn(async move {
                let _permit = gate.acquire().await.ok()?;
                pool.probe().await.ok()
            });
        }
        let deadline = tokio::time::Instant::now() + limit.min(WARM_UP_LIMIT);
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(Ok(Some(conn)))) => self.idle().push(conn),
                Ok(Some(_)) => {}
                // All done, or out of time: the rest are dropped with the set (their connections close).
                Ok(None) | Err(_) => break,
            }
        }
        Warmed {
            open: self.idle().len() as u32,
            ms: started.elapsed().as_secs_f64() * 1000.0,
        }
    }

    /// Opens a connection and sends the probe request on it; the connection, ready for reuse.
    async fn probe(&self) -> anyhow::Result<Conn> {
        let mut conn = self.connect().await?;
        let uri = self.dest.path(PROBE_PATH)?;
        let mut response = conn
            .send(self.dest.request(Method::GET, &uri, Bytes::new()))
            .await
            .context("probe request")?;
        conn.read_to_end(response.body_mut(), drop)
            .await
            .context("probe response")?;
        if !conn.reusable().await {
            bail!("the server closed the connection after the probe request");
        }
        Ok(conn)
    }
}
