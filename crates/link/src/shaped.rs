//! [`LinkProxy`]: a user-space TCP proxy on loopback that paces real bytes by a trace.
//!
//! The device connects to the proxy instead of the edge server; the proxy connects to the server
//! and forwards both directions, each through its own [`Shaper`]: client → server by the uplink
//! trace, server → client by the downlink trace (unlimited when none), both after the one-way
//! delay. Nothing in the client or server changes, so gRPC code runs over it as it is.
//!
//! ## Pacing
//! Each direction of each connection reads what the sender offers (at most the shaper's
//! [`room`](Shaper::room), so a full queue stops reading and TCP flow control blocks the sender),
//! submits it to its shaper at the current time, and sleeps (`tokio::time::sleep_until`) until
//! the shaper's next event: an opportunity with bytes queued, or bytes finishing their delay.
//! Then it writes every delivery that is due. The shaper runs on a virtual clock (µs since the
//! proxy started), so a late wake-up delivers late but loses no capacity: opportunities are only
//! lost when the queue really was empty at their time. Writes are thus chunked per opportunity
//! millisecond, and the pacing granularity is tokio's timer, about 1 ms.
//!
//!
//! A direction reads no further ahead than the link will carry in the next few milliseconds
//! ([`Shaper::read_room`]; nothing while it carries nothing then, as in an outage, until shortly
//! before it does: [`Shaper::next_read_us`]), and the client-facing sockets have a small receive buffer
//! ([`RECV_BUFFER_BYTES`]). The bytes the link has not carried yet therefore wait in the
//! sender's own socket, unacknowledged, as they would behind a real bottleneck: a client that
//! watches its socket (`TCP_INFO`, `SIOCOUTQ`) sees the link stall, a few kilobytes late.
//!
//! ## What it does not model
//! - Every connection has its own shaper on the same trace clock: two simultaneous connections
//!   each get the full rate (gRPC multiplexes on one connection, so this rarely matters).
//! - The kernel's socket buffers between the sender and the proxy are not part of the link: a
//!   sender's `write` may return before its bytes entered the emulated queue, and its socket
//!   sees the first few kilobytes acknowledged at once (what the receive buffer holds, and, when
//!   the link carries something in the next few milliseconds, the read-ahead).
//!   Acknowledgements also come back without the one-way delay.
//! - No loss, no header overhead; a blackhole holds bytes instead of dropping them (TCP would
//!   retransmit them later, and a byte stream must not lose any).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::LinkError;
use crate::schedule::Shaper;
use crate::trace::Trace;

/// Default bound on each direction's emulated queue: 64 KiB, about 30 ms at 17 Mbit/s and 1 s at
/// 0.5 Mbit/s (cellular bottleneck buffers are deep).
pub const DEFAULT_QUEUE_LIMIT: u64 = 64 * 1024;

/// The receive buffer of the proxy's client-facing sockets. Small, so that bytes the link has not
/// carried wait in the sender's socket rather than in the proxy's kernel (see "Pacing").
pub const RECV_BUFFER_BYTES: u32 = 4096;

/// A direction through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server (the device's uplink).
    Up,
    /// Server → client.
    Down,
}

/// How the proxy shapes traffic when it starts.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Client → server trace; `None`: unlimited.
    pub up: Option<Trace>,
    /// Server → client trace; `None`: unlimited.
    pub down: Option<Trace>,
    /// Trace millisecond at which both traces start when the proxy starts.
    pub start_offset_ms: u64,
    /// One-way delay added in each direction.
    pub delay: Duration,
    /// Bound on each direction's emulated queue, bytes (`None`: unbounded).
    pub queue_limit: Option<u64>,
}

impl Default for LinkConfig {
    /// Unlimited both ways, no delay, [`DEFAULT_QUEUE_LIMIT`].
    fn default() -> Self {
        LinkConfig {
            up: None,
            down: None,
            start_offset_ms: 0,
            delay: Duration::ZERO,
            queue_limit: Some(DEFAULT_QUEUE_LIMIT),
        }
    }
}

impl LinkConfig {
    /// An uplink shaped by `up`, everything else default.
    pub fn uplink(up: Trace) -> Self {
        LinkConfig { up: Some(up), ..LinkConfig::default() }
    }
}

/// One direction's trace as it currently applies.
#[derive(Clone, Debug)]
struct DirState {
    /// The configured trace, anchored at (origin µs, offset ms).
    trace: Option<Trace>,
    origin_us: u64,
    offset_ms: u64,
    /// A constant-rate override from [`LinkHandle::rate_limit`], anchored at its own origin.
    rate: Option<(Trace, u64)>,
}

impl DirState {
    /// (trace, origin µs, offset ms) in force.
    fn effective(&self) -> (Option<Trace>, u64, u64) {
        match &self.rate {
            Some((t, origin)) => (Some(t.clone()), *origin, 0),
            None => (self.trace.clone(), self.origin_us, self.offset_ms),
        }
    }
}

#[derive(Clone, Debug)]
struct Settings {
    up: DirState,
    down: DirState,
    delay: Duration,
    queue_limit: Option<u64>,
    blackhole: bool,
}

impl Settings {
    fn dir(&self, d: Direction) -> &DirState {
        match d {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    fn dir_mut(&mut self, d: Direction) -> &mut DirState {
        match d {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }
}

/// Counters since the proxy started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes delivered to the server.
    pub up_bytes: u64,
    /// Bytes delivered to the client.
    pub down_bytes: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections currently open.
    pub active: u64,
}

struct Shared {
    origin: Instant,
    settings: watch::Sender<Settings>,
    reset: watch::Sender<u64>,
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
    connections: AtomicU64,
    active: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn delivered(&self, d: Direction) -> &AtomicU64 {
        match d {
            Direction::Up => &self.up_bytes,
            Direction::Down => &self.down_bytes,
        }
    }
}

/// Controls a running [`LinkProxy`]; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct LinkHandle {
    shared: Arc<Shared>,
}

impl LinkHandle {
    /// Replaces `dir`'s trace (`None`: unlimited), starting at its millisecond 0 now. Queued bytes
    /// stay queued. A [`rate_limit`](Self::rate_limit) in force keeps precedence.
    pub fn set_trace(&self, dir: Direction, trace: Option<Trace>) {
        let now = self.shared.now_us();
        self.shared.settings.send_modify(|s| {
            let d = s.dir_mut(dir);
            d.trace = trace;
            d.origin_us = now;
            d.offset_ms = 0;
        });
    }

    /// Sets the one-way delay of both directions, for bytes leaving the link from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.settings.send_modify(|s| s.delay = delay);
    }

    /// Replaces `dir`'s link by a constant `bits_per_second` until called with `None`, which
    /// restores the trace (continuing on its own clock, as if it had run meanwhile).
    pub fn rate_limit(&self, dir: Direction, bits_per_second: Option<f64>) -> Result<(), LinkError> {
        let rate = bits_per_second.map(Trace::constant).transpose()?;
        let now = self.shared.now_us();
        self.shared.settings.send_modify(|s| s.dir_mut(dir).rate = rate.map(|t| (t, now)));
        Ok(())
    }

    /// While `on`, nothing crosses in either direction: the proxy stops reading and delivering
    /// (senders block once buffers fill) and the link's opportunities are lost. Held bytes are
    /// delivered once it is turned off, as TCP would after retransmitting.
    pub fn blackhole(&self, on: bool) {
        self.shared.settings.send_modify(|s| s.blackhole = on);
    }

    /// Aborts every open connection with a TCP RST on both sides (zero linger). Connections made
    /// afterwards work normally.
    pub fn reset(&self) {
        self.shared.reset.send_modify(|epoch| *epoch += 1);
    }

    /// Sets the bound on each direction's emulated queue, bytes (`None`: unbounded).
    pub fn set_queue_limit(&self, limit: Option<u64>) {
        self.shared.settings.send_modify(|s| s.queue_limit = limit);
    }

    /// Counters since the proxy started.
    pub fn stats(&self) -> LinkStats {
        let s = &self.shared;
        LinkStats {
            up_bytes: s.up_bytes.load(Ordering::Relaxed),
            down_bytes: s.down_bytes.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            active: s.active.load(Ordering::Relaxed),
        }
    }

    /// The instant at which trace millisecond `start_offset_ms` was current (the virtual clock's
    /// zero), for lining measurements up with [`Trace::bytes_between`].
    pub fn origin(&self) -> Instant {
        self.shared.origin
    }
}

/// A shaping TCP proxy: listens on loopback, forwards to a target. Dropping it stops accepting
/// and aborts every connection.
pub struct LinkProxy {
    addr: SocketAddr,
    handle: LinkHandle,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `target`, shaped per `config`.
    /// Must be called inside a tokio runtime.
    pub async fn start(target: SocketAddr, config: LinkConfig) -> io::Result<LinkProxy> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), target, config).await
    }

    /// Like [`start`](Self::start), listening on `listen`.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr, config: LinkConfig) -> io::Result<LinkProxy> {
        let socket = if listen.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // Accepted connections inherit it (it must be set before listening to apply to the
        // window they advertise).
        socket.set_recv_buffer_size(RECV_BUFFER_BYTES)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let dir = |trace| DirState { trace, origin_us: 0, offset_ms: config.start_offset_ms, rate: None };
        let settings = Settings {
            up: dir(config.up),
            down: dir(config.down),
            delay: config.delay,
            queue_limit: config.queue_limit,
            blackhole: false,
        };
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            settings: watch::Sender::new(settings),
            reset: watch::Sender::new(0),
            up_bytes: AtomicU64::new(0),
            down_bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            active: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, target, shared.clone()));
        Ok(LinkProxy { addr, handle: LinkHandle { shared }, task })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The run-time control.
    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve(client, target, shared.clone()));
                }
                // Out of descriptors and the like: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Decrements the active count however the connection ends (including abort).
struct Active<'a>(&'a Shared);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(mut client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    shared.active.fetch_add(1, Ordering::Relaxed);
    let _active = Active(&shared);
    let mut reset = shared.reset.subscribe();
    reset.borrow_and_update();
    let mut server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => {
            // The client sees the refusal as a reset, as it would connecting directly.
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let was_reset = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let up = pump(cr, sw, Direction::Up, &shared);
        let down = pump(sr, cw, Direction::Down, &shared);
        tokio::select! {
            _ = async { tokio::try_join!(up, down) } => false,
            _ = reset.changed() => true,
        }
    };
    if was_reset {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// Moves bytes from `src` to `dst` through a shaper that follows the `dir` settings, until `src`
/// ends and everything has been delivered (then half-closes `dst`).
async fn pump(mut src: ReadHalf<'_>, mut dst: WriteHalf<'_>, dir: Direction, shared: &Shared) -> io::Result<()> {
    let mut settings = shared.settings.subscribe();
    let mut shaper = Shaper::new(None);
    let mut applied: Option<(Option<Trace>, u64, u64)> = None;
    let mut blackhole = false;
    let mut data = std::collections::VecDeque::<u8>::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    let mut changed = true;
    loop {
        let now = shared.now_us();
        if changed {
            shaper.advance(now);
            let s = settings.borrow_and_update().clone();
            shaper.set_delay(s.delay);
            shaper.set_queue_limit(s.queue_limit);
            let effective = s.dir(dir).effective();
            if applied.as_ref() != Some(&effective) {
                let (trace, origin, offset) = effective.clone();
                shaper.set_trace(trace, origin, offset);
                applied = Some(effective);
            }
            if blackhole && !s.blackhole {
                shaper.outage(now);
            }
            blackhole = s.blackhole;
            changed = false;
        }
        if blackhole {
            shaper.outage(now);
        } else {
            while let Some(d) = shaper.pop_due(now) {
                let n = usize::try_from(d.bytes).expect("deliveries are bounded by what was read");
                let (a, b) = data.as_slices();
                let first = n.min(a.len());
                dst.write_all(&a[..first]).await?;
                dst.write_all(&b[..n - first]).await?;
                data.drain(..n);
                shared.delivered(dir).fetch_add(d.bytes, Ordering::Relaxed);
            }
            if eof && shaper.is_idle() {
                dst.shutdown().await?;
                return Ok(());
            }
        }
        let room = usize::try_from(shaper.read_room()).unwrap_or(usize::MAX).min(buf.len());
        let can_read = !eof && !blackhole && room > 0;
        let wake = if blackhole {
            None
        } else {
            // Held back while the link carries nothing soon: look again shortly before it does.
            let read = if eof || can_read { None } else { shaper.next_read_us() };
            match (shaper.next_wake_us(), read) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        tokio::select! {
            // Settings first: a change made before bytes were written applies to those bytes.
            biased;
            r = settings.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                changed = true;
            }
            _ = tokio::time::sleep_until(shared.origin + Duration::from_micros(wake.unwrap_or(0))), if wake.is_some() => {}
            r = src.read(&mut buf[..room]), if can_read => {
                let n = r?;
                if n == 0 {
                    eof = true;
                } else {
                    let accepted = shaper.submit(shared.now_us(), n as u64);
                    debug_assert_eq!(accepted, n as u64);
                    data.extend(&buf[..n]);
                }
            }
        }
    }
}
