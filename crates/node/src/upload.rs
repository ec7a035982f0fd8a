//! Watching an upload from the device's own socket, to see the link stall under it.
//!
//! A cellular uplink can stop for seconds. The device cannot see that coming, but once it has
//! sent, its kernel knows how far the bytes got: the TCP stack counts the bytes the other end
//! has acknowledged (`TCP_INFO`'s `tcpi_bytes_acked`) and holds the rest in the send queue
//! (`SIOCOUTQ`). While bytes are queued and the acknowledged count does not move, the link is
//! not carrying them. [`UploadWatch`] reads those two numbers from the connection under an
//! [`EdgeClient`](crate::EdgeClient); [`StallWatch`] (pure) turns a series of readings into "the
//! link has stalled", which lets a racing device start its own tail early (see "Racing the
//! server" in [`crate::adaptive`]).
//!
//! What it sees is the path up to the next hop that acknowledges: the far end of the TCP
//! connection. Behind a proxy that reads greedily (a TLS terminator, a load balancer on the
//! device's side of the bottleneck) acknowledgements stop meaning delivery, and the watch sees
//! no stall; the device then races when the answer is due, as without it. The bench's trace
//! link reads only as fast as the trace carries (`cleave_link::LinkProxy`), so its sender's
//! socket behaves as behind a real bottleneck.
//!
//! The readings are Linux-only (`TCP_INFO` and `SIOCOUTQ` on the connection's descriptor);
//! elsewhere [`UploadWatch::progress`] is `None`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the device's socket says about its upload. The default (all zero) is a fresh
/// connection's: the baseline of a request written while the client had no connection (it
/// connects for that call).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadProgress {
    /// Bytes the far end has acknowledged since the connection opened.
    pub acked: u64,
    /// Bytes in the send queue: written by the device and not yet acknowledged.
    pub pending: u64,
    /// Bytes received from the far end since the connection opened (`tcpi_bytes_received`):
    /// an answer arriving moves it.
    pub received: u64,
}

impl UploadProgress {
    /// Whether `payload` more bytes than at `base` have been acknowledged and nothing is left
    /// in the send queue: a request of that size written after `base` has reached the far end.
    /// (A new connection restarts the count, and reads as not delivered.)
    pub fn delivered_since(&self, base: UploadProgress, payload: u64) -> bool {
        self.pending == 0 && self.acked.saturating_sub(base.acked) >= payload
    }
}

/// A handle on the TCP connection an [`EdgeClient`](crate::EdgeClient) currently uses (cheap to
/// clone; all clones see the same connection). Empty until the client connects and after its
/// connection closes.
#[derive(Clone, Debug, Default)]
pub struct UploadWatch {
    /// The connection's descriptor while it is open. Locked while the descriptor is used, and
    /// cleared (under the lock) before it closes, so a reading or an abort never reaches a
    /// descriptor number the process has reused for something else.
    fd: Arc<Mutex<Option<i32>>>,
}

impl UploadWatch {
    fn slot(&self) -> MutexGuard<'_, Option<i32>> {
        self.fd.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, fd: i32) {
        *self.slot() = Some(fd);
    }

    /// The next reading of the connection a request was written to, where `connected` says
    /// whether a reading has been taken of it yet: `None` once that connection has closed. A
    /// request written while the client had no connection goes out on the one it makes next,
    /// so until a first reading this waits for it, looking every `poll`. (Without it, every
    /// frame sent just after the device dropped its connection went unwatched: PP-OCR det's
    /// first frame on the EVDO trace, after its bootstrap probe was dropped, in every round.)
    pub(crate) async fn next_reading(&self, connected: &mut bool, poll: Duration) -> Option<UploadProgress> {
        loop {
            match self.progress() {
                Some(p) => {
                    *connected = true;
                    return Some(p);
                }
                None if *connected => return None,
                None => tokio::time::sleep(poll).await,
            }
        }
    }

    /// Forgets `fd` if it is still the one watched (a newer connection may have replaced it).
    fn clear(&self, fd: i32) {
        let mut slot = self.slot();
        if *slot == Some(fd) {
            *slot = None;
        }
    }

    /// The socket's current counts, or `None` without a connection or off Linux.
    pub fn progress(&self) -> Option<UploadProgress> {
        let slot = self.slot();
        read_progress((*slot)?)
    }

    /// Drops the current connection at once, with every byte still in its send queue: the
    /// kernel discards the queue and resets the connection (a TCP disconnect), and the client
    /// opens a new connection at its next call. Calls still on the old connection fail. For
    /// bytes of a request nobody waits for any more, which would otherwise cross the uplink
    /// ahead of the next one (see "Racing the server" in [`crate::adaptive`]). Returns whether
    /// there was a connection to drop (always `false` off Linux).
    pub fn abort(&self) -> bool {
        let slot = self.slot();
        slot.is_some_and(abort_connection)
    }
}

/// Resets the TCP connection on `fd` and purges its send queue, leaving the descriptor open
/// (its owner sees the reset at its next read or write): `connect` with an `AF_UNSPEC` address,
/// which Linux turns into a disconnect (`tcp_disconnect`: an RST to the peer, the write queue
/// dropped).
#[cfg(target_os = "linux")]
fn abort_connection(fd: i32) -> bool {
    // SAFETY: `fd` is the watched connection's descriptor, open while registered (the caller
    // holds the lock that `Watched::drop` takes before the descriptor closes); the address is
    // ours and sized for the call.
    unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(fd, &addr, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn abort_connection(_fd: i32) -> bool {
    false
}

#[cfg(target_os = "linux")]
fn read_progress(fd: i32) -> Option<UploadProgress> {
    // SAFETY: `fd` is a socket descriptor kept registered only while the connection owning it
    // is alive (cleared under the watch's lock in `Watched::drop`, before the descriptor
    // closes); the buffers are ours and sized for the calls.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let ok = libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len);
        // Kernels before 4.1 return a shorter struct without the two counts.
        let received_end = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8;
        if ok != 0 || (len as usize) < received_end {
            return None;
        }
        let mut pending: libc::c_int = 0;
        if libc::ioctl(fd, libc::TIOCOUTQ, &mut pending) != 0 {
            return None;
        }
        Some(UploadProgress {
            acked: info.tcpi_bytes_acked,
            pending: u64::try_from(pending).unwrap_or(0),
            received: info.tcpi_bytes_received,
        })
    }
}

#[cfg(not(target_os = "linux"))]
fn read_progress(_fd: i32) -> Option<UploadProgress> {
    None
}

/// Decides, from readings taken while an upload is under way, when the link has stalled: bytes
/// are pending and the acknowledged count has not moved for the quiet time. Pure: the caller
/// passes the time since sending.
#[derive(Clone, Debug)]
pub struct StallWatch {
    quiet: Duration,
    grace: Duration,
    last: Option<u64>,
    moved_at: Option<Duration>,
}

impl StallWatch {
    /// Quiet time before a stall is called: `max(floor, 4 packets at up_bps)`, as a trace's
    /// packets come in bursts and a working link can pause between them (see the module docs
    /// of [`crate::adaptive`]). Until the first acknowledgement after sending, `rtt` more.
    pub fn new(up_bps: f64, rtt: Duration, floor: Duration) -> StallWatch {
        let packets = four_packets(up_bps).unwrap_or(floor);
        StallWatch { quiet: floor.max(packets).min(Duration::from_secs(10)), grace: rtt, last: None, moved_at: None }
    }

    /// The quiet time this watch calls a stall after.
    pub fn quiet(&self) -> Duration {
        self.quiet
    }

    /// Takes the reading at `at` after sending (the first reading, taken just before sending, is
    /// the baseline) and says whether the link has stalled.
    pub fn observe(&mut self, at: Duration, p: UploadProgress) -> bool {
        match self.last {
            None => {
                self.last = Some(p.acked);
                return false;
            }
            Some(a) if p.acked != a => {
                self.last = Some(p.acked);
                self.moved_at = Some(at);
                return false;
            }
            Some(_) => {}
        }
        if p.pending == 0 {
            // Nothing in the queue: whatever is late is not waiting for the link here.
            self.moved_at = Some(at);
            return false;
        }
        match self.moved_at {
            Some(t) => at.saturating_sub(t) >= self.quiet,
            None => at >= self.quiet + self.grace,
        }
    }
}

/// Decides, from the same readings, while a racing device's tail should yield to its own
/// upload: as long as the link is carrying the request, the server will have it soon and the
/// tail would only take CPU from the threads sending it and reading the answer (see "Racing the
/// server" in [`crate::adaptive`]). The upload counts as moving for `window` after each reading
/// whose acknowledged count moved (or that had nothing queued: the device is still writing),
/// and, before the first acknowledgement, for an RTT more; never past `cap` after sending, the
/// time by which the upload should have been done. Pure, like [`StallWatch`].
#[derive(Clone, Debug)]
pub struct UploadYield {
    window: Duration,
    grace: Duration,
    cap: Duration,
    last: Option<u64>,
    moved_at: Option<Duration>,
}

impl UploadYield {
    /// The window is four packets' time at `up_bps` plus `slack`: acknowledgements come in
    /// bursts, as the receiver reopens its window a few packets at a time (on a 1 Mbit/s link
    /// behind the bench's trace proxy, 4–6 KB every 45–56 ms as read every 10 ms), and a
    /// working link has acknowledged something within it. Past it, or at an unknown rate, the
    /// upload has stopped moving.
    pub fn new(up_bps: f64, rtt: Duration, slack: Duration, cap: Duration) -> UploadYield {
        UploadYield { window: Self::window_for(up_bps, slack), grace: rtt, cap, last: None, moved_at: None }
    }

    /// How long after the last movement an upload at `up_bps` still counts as moving.
    pub fn window_for(up_bps: f64, slack: Duration) -> Duration {
        four_packets(up_bps).unwrap_or(Duration::ZERO) + slack
    }

    /// Takes the reading at `at` after sending (the first is the baseline) and returns until when,
    /// after sending, the tail should yield: `None` once the upload has stopped moving for the
    /// window or the cap has passed.
    pub fn observe(&mut self, at: Duration, p: UploadProgress) -> Option<Duration> {
        match self.last {
            None => self.last = Some(p.acked),
            Some(a) if p.acked != a || p.pending == 0 => {
                self.last = Some(p.acked);
                self.moved_at = Some(at);
            }
            Some(_) => {}
        }
        let until = match self.moved_at {
            Some(t) => t + self.window,
            None => self.grace + self.window,
        }
        .min(self.cap);
        (until > at).then_some(until)
    }
}

/// Decides, from readings taken once the request is delivered, while a racing device's tail
/// should hold because the answer is arriving: the tail would take the CPU quota the thread
/// reading the answer needs between the answer's bursts (see "Racing the server" in
/// [`crate::adaptive`]). The answer counts as arriving for `window` after each reading whose
/// received count moved. Pure, like [`UploadYield`].
#[derive(Clone, Debug)]
pub struct AnswerWatch {
    window: Duration,
    last: Option<u64>,
    moved_at: Option<Duration>,
}

impl AnswerWatch {
    /// `window`: how long the answer still counts as arriving after its last bytes came. Bytes
    /// of a download come in bursts about a round trip apart while the sender's window opens.
    pub fn new(window: Duration) -> AnswerWatch {
        AnswerWatch { window, last: None, moved_at: None }
    }

    /// Takes the reading at `at` (the first is the baseline) and returns until when the tail
    /// should hold, or `None` when no answer has been seen arriving for the window.
    pub fn observe(&mut self, at: Duration, p: UploadProgress) -> Option<Duration> {
        match self.last {
            Some(r) if p.received != r => self.moved_at = Some(at),
            _ => {}
        }
        self.last = Some(p.received);
        let until = self.moved_at? + self.window;
        (until > at).then_some(until)
    }
}

/// Finds, from readings of an upload's socket, where the link last came back from an outage:
/// a stretch of at least `gap` in which the acknowledged count did not move while bytes were
/// queued. What the link carried since then, over the time since, is a measurement of the link
/// as it is *now*; the whole upload's time also counts the outage (see "Abandoned uploads still
/// measure" in [`crate::adaptive`]). Pure, like [`StallWatch`].
#[derive(Clone, Copy, Debug)]
pub struct ResumeWatch {
    gap: Duration,
    /// The last reading: when, and the acknowledged count.
    last: Option<(Duration, u64)>,
    /// When the acknowledged count last moved (or the first reading), and to what.
    moved: Option<(Duration, u64)>,
    /// Where the link came back: the reading before the count moved again, and the count then.
    resumed: Option<(Duration, u64)>,
}

impl ResumeWatch {
    /// `gap`: the shortest silence that counts as an outage.
    pub fn new(gap: Duration) -> ResumeWatch {
        ResumeWatch { gap, last: None, moved: None, resumed: None }
    }

    /// Takes the reading at `at` (any origin, increasing; the first is the baseline). A
    /// reading with nothing queued is no silence of the link's (the sender had nothing for it).
    pub fn observe(&mut self, at: Duration, p: UploadProgress) {
        match (self.moved, self.last) {
            _ if p.pending == 0 => self.moved = Some((at, p.acked)),
            (Some((since, count)), Some((before, _))) if p.acked > count => {
                // The bytes came somewhere between the last reading and this one: counting the
                // whole interval errs toward a slower link.
                if at.saturating_sub(since) >= self.gap {
                    self.resumed = Some((before, count));
                }
                self.moved = Some((at, p.acked));
            }
            (None, _) => self.moved = Some((at, p.acked)),
            _ => {}
        }
        self.last = Some((at, p.acked));
    }

    /// Whether any reading was taken.
    pub fn has_readings(&self) -> bool {
        self.last.is_some()
    }

    /// The bytes acknowledged since the link came back from the last outage, and the time from
    /// then to the last reading; `None` when the readings saw no outage end.
    pub fn since_resumed(&self) -> Option<(u64, Duration)> {
        let (from, count) = self.resumed?;
        let (at, acked) = self.last?;
        Some((acked.saturating_sub(count), at.saturating_sub(from)))
    }
}

/// Four 1500-byte packets' time at `up_bps` (at most an hour); `None` at no known rate.
fn four_packets(up_bps: f64) -> Option<Duration> {
    (up_bps > 0.0).then(|| Duration::from_secs_f64((4.0 * 1500.0 * 8.0 / up_bps).min(3600.0)))
}

/// A connector for [`tonic`] channels that registers each new connection's socket with an
/// [`UploadWatch`]. Plain TCP as tonic's own (TLS, when configured, goes on top of it).
#[derive(Clone, Debug)]
pub(crate) struct WatchedConnector {
    http: HttpConnector,
    watch: UploadWatch,
}

impl WatchedConnector {
    pub(crate) fn new(connect_timeout: Duration, watch: UploadWatch) -> WatchedConnector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        WatchedConnector { http, watch }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for WatchedConnector {
    type Response = TokioIo<Watched>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let watch = self.watch.clone();
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            Ok(TokioIo::new(Watched::new(stream, watch)))
        })
    }
}

/// A connection registered with an [`UploadWatch`] for as long as it lives.
#[derive(Debug)]
pub(crate) struct Watched {
    stream: TcpStream,
    fd: i32,
    watch: UploadWatch,
}

impl Watched {
    pub(crate) fn new(stream: TcpStream, watch: UploadWatch) -> Watched {
        #[cfg(unix)]
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        #[cfg(not(unix))]
        let fd = -1;
        if fd >= 0 {
            watch.set(fd);
        }
        Watched { stream, fd, watch }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.watch.clear(self.fd);
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_delivered_once_its_bytes_are_acked_and_the_queue_is_empty() {
        let base = UploadProgress { acked: 1_000, pending: 0, received: 0 };
        let at = |acked, pending| UploadProgress { acked, pending, received: 0 };
        assert!(!at(1_000, 5_000).delivered_since(base, 5_000), "nothing acknowledged yet");
        assert!(!at(5_000, 1_000).delivered_since(base, 5_000), "bytes still queued");
        assert!(!at(5_999, 0).delivered_since(base, 5_000), "the queue drained before all was written");
        assert!(at(6_000, 0).delivered_since(base, 5_000));
        assert!(at(6_300, 0).delivered_since(base, 5_000), "headers and framing count too");
        // A new connection restarts the count.
        assert!(!at(300, 0).delivered_since(base, 5_000));
    }

    fn p(acked: u64, pending: u64) -> UploadProgress {
        UploadProgress { acked, pending, received: 0 }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_stall_is_called_after_the_quiet_time_with_bytes_pending() {
        // 1 Mbit/s: 4 packets are 48 ms, so the 100 ms floor rules.
        let mut w = StallWatch::new(1e6, MS(40), MS(100));
        assert_eq!(w.quiet(), MS(100));
        assert!(!w.observe(MS(0), p(1000, 0)));
        assert!(!w.observe(MS(10), p(8000, 12_000)));
        assert!(!w.observe(MS(60), p(9500, 10_500)));
        assert!(!w.observe(MS(159), p(9500, 10_500)));
        assert!(w.observe(MS(160), p(9500, 10_500)));
        // The link moves again: no stall until it is quiet again for as long.
        assert!(!w.observe(MS(170), p(11_000, 9000)));
        assert!(!w.observe(MS(260), p(11_000, 9000)));
        assert!(w.observe(MS(270), p(11_000, 9000)));
    }

    #[test]
    fn no_stall_without_pending_bytes_or_before_the_first_ack_can_come() {
        let mut w = StallWatch::new(1e6, MS(40), MS(100));
        w.observe(MS(0), p(0, 0));
        // Nothing acknowledged yet: the first acknowledgement may take an RTT more.
        assert!(!w.observe(MS(139), p(0, 20_000)));
        assert!(w.observe(MS(140), p(0, 20_000)));
        // Everything acknowledged: a late answer is the server's, not the link's.
        let mut w = StallWatch::new(1e6, MS(40), MS(100));
        w.observe(MS(0), p(0, 0));
        assert!(!w.observe(MS(5), p(20_000, 0)));
        assert!(!w.observe(MS(900), p(20_000, 0)));
    }

    #[test]
    fn a_slow_link_waits_for_four_packets() {
        // 0.2 Mbit/s: a packet every 60 ms, so 240 ms.
        assert_eq!(StallWatch::new(0.2e6, MS(40), MS(100)).quiet(), MS(240));
        assert_eq!(StallWatch::new(0.0, MS(40), MS(100)).quiet(), MS(100));
    }

    #[test]
    fn the_race_yields_while_the_upload_moves() {
        // 2 Mbit/s: 4 packets are 24 ms, plus 20; the upload is due by 300 ms.
        let mut y = UploadYield::new(2e6, MS(40), MS(20), MS(300));
        // Before the first acknowledgement: an RTT and a window.
        assert_eq!(y.observe(MS(0), p(1000, 0)), Some(MS(84)));
        assert_eq!(y.observe(MS(10), p(1000, 20_000)), Some(MS(84)));
        // Acknowledgements move: a window from each.
        assert_eq!(y.observe(MS(30), p(4000, 17_000)), Some(MS(74)));
        assert_eq!(y.observe(MS(50), p(5500, 15_500)), Some(MS(94)));
        // They stop: the race runs once the window has passed.
        assert_eq!(y.observe(MS(90), p(5500, 15_500)), Some(MS(94)));
        assert_eq!(y.observe(MS(100), p(5500, 15_500)), None);
        // They move again: it yields again.
        assert_eq!(y.observe(MS(110), p(7000, 14_000)), Some(MS(154)));
        // Never past the cap.
        assert_eq!(y.observe(MS(290), p(20_000, 1000)), Some(MS(300)));
        assert_eq!(y.observe(MS(300), p(20_500, 500)), None);
    }

    #[test]
    fn an_upload_that_never_moves_lets_the_race_run_after_the_first_window() {
        // An outage from the start: nothing is acknowledged. At 8 Mbit/s 4 packets are 6 ms.
        let mut y = UploadYield::new(8e6, MS(40), MS(20), MS(300));
        assert_eq!(y.observe(MS(0), p(0, 0)), Some(MS(66)));
        assert_eq!(y.observe(MS(10), p(0, 30_000)), Some(MS(66)));
        assert_eq!(y.observe(MS(66), p(0, 30_000)), None);
        // Nothing queued yet is the device still writing: that counts as moving.
        let mut y = UploadYield::new(8e6, MS(40), MS(20), MS(300));
        y.observe(MS(0), p(0, 0));
        assert_eq!(y.observe(MS(100), p(0, 0)), Some(MS(126)));
        // A slow link gets a longer window: 0.2 Mbit/s is a packet every 60 ms.
        let mut y = UploadYield::new(0.2e6, MS(40), MS(20), MS(900));
        assert_eq!(y.observe(MS(0), p(0, 0)), Some(MS(300)));
        // An unknown rate: the slack alone.
        let mut y = UploadYield::new(0.0, MS(40), MS(20), MS(900));
        assert_eq!(y.observe(MS(0), p(0, 0)), Some(MS(60)));
    }

    #[test]
    fn the_race_holds_while_the_answer_arrives() {
        let r = |received| UploadProgress { acked: 30_000, pending: 0, received };
        let mut a = AnswerWatch::new(MS(70));
        // The baseline at delivery: nothing seen arriving yet.
        assert_eq!(a.observe(MS(0), r(500)), None);
        assert_eq!(a.observe(MS(150), r(500)), None, "the server is still computing");
        // The answer's first burst: hold for a window from each reading that moved.
        assert_eq!(a.observe(MS(160), r(15_000)), Some(MS(230)));
        assert_eq!(a.observe(MS(200), r(15_000)), Some(MS(230)));
        assert_eq!(a.observe(MS(210), r(44_000)), Some(MS(280)));
        // It stops arriving (the link went down under it): the race goes on after the window.
        assert_eq!(a.observe(MS(279), r(44_000)), Some(MS(280)));
        assert_eq!(a.observe(MS(280), r(44_000)), None);
        assert_eq!(a.observe(MS(400), r(44_000)), None);
    }

    #[test]
    fn an_upload_is_measured_from_where_the_link_came_back() {
        let mut w = ResumeWatch::new(MS(500));
        w.observe(MS(0), p(1_000, 26_000));
        w.observe(MS(100), p(7_000, 20_000));
        assert_eq!(w.since_resumed(), None, "moving from the start: no outage ended");
        // Bursty but moving: silences under the gap are the link's usual pace.
        w.observe(MS(400), p(7_000, 20_000));
        w.observe(MS(410), p(9_000, 18_000));
        assert_eq!(w.since_resumed(), None);
        // Nothing queued for a while (the sender had nothing to send): no outage either.
        w.observe(MS(420), p(9_000, 0));
        w.observe(MS(1_000), p(9_000, 0));
        w.observe(MS(1_010), p(9_000, 18_000));
        w.observe(MS(1_020), p(10_000, 17_000));
        assert_eq!(w.since_resumed(), None);
        // An outage: 690 ms without a byte while bytes wait, then the link carries the rest.
        w.observe(MS(1_700), p(10_000, 17_000));
        w.observe(MS(1_710), p(13_000, 14_000));
        assert_eq!(w.since_resumed(), Some((3_000, MS(10))), "from the reading before it moved");
        w.observe(MS(1_810), p(20_000, 7_000));
        w.observe(MS(1_910), p(27_000, 0));
        assert_eq!(w.since_resumed(), Some((17_000, MS(210))));
        // Readings after the last movement stretch the time, not the bytes.
        w.observe(MS(1_920), p(27_000, 0));
        assert_eq!(w.since_resumed(), Some((17_000, MS(220))));
    }

    #[test]
    fn a_silence_before_the_first_acknowledgement_is_an_outage_too() {
        let mut w = ResumeWatch::new(MS(500));
        w.observe(MS(0), p(500, 20_000));
        w.observe(MS(590), p(500, 20_000));
        assert_eq!(w.since_resumed(), None, "not seen moving yet");
        w.observe(MS(600), p(4_500, 16_000));
        assert_eq!(w.since_resumed(), Some((4_000, MS(10))));
    }

    /// A connection on loopback whose accepting side has a 4 KiB receive buffer, so that most of
    /// a large write waits in the client's send queue; the client is registered with `watch`.
    #[cfg(target_os = "linux")]
    async fn narrow_pair(watch: &UploadWatch) -> (Watched, TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Watched::new(client.unwrap(), watch.clone()), server.unwrap().0)
    }

    /// The watch reads a real socket: bytes written to a peer that does not read stay pending,
    /// and the acknowledged count stops, until the peer reads; bytes the peer sends are counted
    /// as received.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_watch_reads_a_real_sockets_counts() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let watch = UploadWatch::default();
        assert_eq!(watch.progress(), None);
        let (mut client, mut server) = narrow_pair(&watch).await;
        let start = watch.progress().expect("a connected socket has counts");
        assert_eq!(start.pending, 0);
        // Far more than the peer's receive window: most of it stays in the send queue.
        let payload = vec![7u8; 256 * 1024];
        let writer = tokio::spawn(async move {
            client.write_all(&payload).await.unwrap();
            client
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stuck = watch.progress().unwrap();
        assert!(stuck.pending > 0, "{stuck:?}");
        assert!(stuck.acked < 256 * 1024, "{stuck:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(watch.progress().unwrap().acked, stuck.acked, "nothing moves while the peer does not read");
        let mut sink = vec![0u8; 256 * 1024];
        server.read_exact(&mut sink).await.unwrap();
        let client = writer.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done = watch.progress().unwrap();
        assert!(done.acked >= stuck.acked + 200 * 1024, "{done:?}");
        assert_eq!(done.pending, 0);
        assert_eq!(done.received, start.received, "the peer has sent nothing");
        // An answer the other way moves the received count.
        server.write_all(&[9u8; 3000]).await.unwrap();
        let mut client = client;
        let mut answer = vec![0u8; 3000];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(watch.progress().unwrap().received, start.received + 3000);
        drop(client);
        assert_eq!(watch.progress(), None, "a closed connection is forgotten");
    }

    /// An abort drops what the send queue still holds: the peer gets a reset, not the bytes
    /// of a request nobody waits for, and the writer's next write fails.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_aborted_connection_sends_nothing_more_of_its_queue() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let watch = UploadWatch::default();
        assert!(!watch.abort(), "no connection to abort yet");
        let (mut client, mut server) = narrow_pair(&watch).await;
        // Queue far more than the peer's window, then abort while most of it waits.
        let writer = tokio::spawn(async move {
            let r = client.write_all(&vec![7u8; 4 << 20]).await;
            (r, client)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stuck = watch.progress().unwrap();
        assert!(stuck.pending > 64 * 1024, "{stuck:?}");
        assert!(watch.abort());
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            match server.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => got += n,
                Err(e) => break Some(e.kind()),
            }
        };
        assert_eq!(end, Some(io::ErrorKind::ConnectionReset), "after {got} bytes");
        assert!((got as u64) < stuck.acked + 16 * 1024, "the queue was sent anyway: {got} bytes, {stuck:?}");
        let (r, mut client) = writer.await.unwrap();
        assert!(r.is_err(), "the write of 4 MiB cannot have finished");
        assert!(client.write_all(b"more").await.is_err(), "the aborted connection takes no more bytes");
    }
}
