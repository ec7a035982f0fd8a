//! # cleave-link
//!
//! Emulated network links for testing collaborative inference, and the online estimates a device
//! needs to decide where to cut each frame.
//!
//! - [`trace`] (pure): [`Trace`], a packet-delivery schedule in mahimahi's format, parsed from
//!   real cellular recordings or generated ([`Trace::markov`], [`Trace::constant`]), with its
//!   capacity over any interval ([`Trace::bytes_between`]).
//! - [`schedule`] (pure): [`Shaper`], a state machine on a virtual clock that says when bytes
//!   handed to a trace-driven link come out of it.
//! - [`shaped`] (tokio): [`LinkProxy`], a TCP proxy on loopback that paces real bytes with a
//!   [`Shaper`] per direction, controllable at run time through a [`LinkHandle`] (trace, delay,
//!   rate limit, blackhole, reset).
//! - [`estimate`] (pure): [`BandwidthEstimator`], [`RttEstimator`], [`LoadEstimator`].
//!
//! ## Mahimahi semantics
//! A trace file holds one integer millisecond per line, never decreasing; each line is one
//! chance for a 1500-byte packet to cross, and several lines may share a millisecond. The trace
//! loops: after its last line it repeats shifted by its last timestamp (the period). An
//! opportunity that finds the queue empty is lost, and bytes queued at millisecond `t` can only
//! use opportunities after `t`. So a sender that keeps the queue full from `t0` receives exactly
//! [`Trace::bytes_between`]`(t0, t1)` by `t1`, which the replay test checks through real sockets.
//!
//! ## Pacing model
//! The proxy does not sleep per byte. Each direction reads what its sender offers into the
//! shaper's queue, no more than the link carries in the next 10 ms ([`Shaper::read_room`]; the
//! rest waits, unacknowledged, in the sender's own socket, as behind a real bottleneck, so a
//! sender watching its socket sees the link stall), sleeps until the shaper's next event, and
//! writes everything due. The shaper's clock is virtual (µs since the proxy started), so a
//! late wake-up delays bytes by the lateness but loses no capacity. See [`shaped`] for what the
//! proxy does not model.
//!
//! ## Estimators
//! Bandwidth is the harmonic mean of the last few transfer throughputs (as in MPC video
//! adaptation), ignoring transfers too small to measure a rate: it errs low after a slow
//! transfer, the cheap direction to err for a device choosing how much to send. RTT is RFC 6298's
//! smoothed RTT and deviation. Server load is an EWMA of the reported queue and compute time. See
//! [`estimate`].
//!
//! ## Wiring it between a client and a server
//! ```no_run
//! # async fn demo(server_addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use cleave_link::{Direction, LinkConfig, LinkProxy, Trace};
//!
//! // A reproducible 0.5–20 Mbit/s cellular-like uplink, 20 ms each way.
//! let up = Trace::markov(42, 120_000, &[0.5, 2.0, 5.0, 10.0, 20.0], 3_000.0)?;
//! let config = LinkConfig { up: Some(up), delay: Duration::from_millis(20), ..LinkConfig::default() };
//! let proxy = LinkProxy::start(server_addr, config).await?;
//! // Point the client at the proxy instead of the server (e.g. http://{addr} for tonic).
//! let addr = proxy.local_addr();
//! # let _ = addr;
//! // Change conditions while it runs.
//! let link = proxy.handle();
//! link.rate_limit(Direction::Up, Some(1e6))?;
//! link.blackhole(true);
//! link.blackhole(false);
//! link.reset(); // every open connection gets a TCP RST
//! # Ok(()) }
//! ```
//! `examples/proxy.rs` runs this against a local echo server.

pub mod estimate;
pub mod schedule;
pub mod shaped;
pub mod trace;

pub use estimate::{BandwidthEstimator, LoadEstimator, RttEstimator};
pub use schedule::{Delivery, Shaper};
pub use shaped::{DEFAULT_QUEUE_LIMIT, Direction, LinkConfig, LinkHandle, LinkProxy, LinkStats};
pub use trace::{PACKET_BYTES, SplitMix64, Trace};

/// Errors of this crate: malformed traces and invalid parameters.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A line is not a non-negative integer.
    #[error("trace line {line}: expected a millisecond timestamp (a non-negative integer), found {text:?}")]
    BadTimestamp { line: usize, text: String },
    /// A timestamp is smaller than the one before it.
    #[error(
        "trace line {line}: timestamp {ms} ms is before the previous one ({prev} ms); timestamps must not decrease"
    )]
    Decreasing { line: usize, ms: u64, prev: u64 },
    /// No timestamps at all.
    #[error("trace is empty: it has no timestamps")]
    Empty,
    /// The last timestamp is 0, so the trace would loop with period 0.
    #[error("trace lasts 0 ms: its last timestamp (the period) must be positive")]
    ZeroPeriod,
    /// Reading the trace failed.
    #[error("reading trace: {0}")]
    Io(#[from] std::io::Error),
    /// Invalid parameters for a generated trace.
    #[error("invalid trace generator parameters: {0}")]
    Generator(String),
    /// A rate that is not positive and finite.
    #[error("invalid rate {0} bit/s: it must be positive and finite")]
    BadRate(f64),
}
