//! The real [`LinkProxy`] on loopback.
//!
//! The two `replay_*` tests run for **30 s each** (concurrently, so about 32 s of wall time for
//! the file): a sender writes as fast as it can through the proxy and the bytes the server
//! receives over a 30 s window must be within 3 % of the trace's capacity over that window. The
//! generated-trace one always runs; the recorded one needs `../shared/traces` and skips, saying
//! why, when it is absent. The other tests take a few seconds at most.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cleave_link::{Direction, LinkConfig, LinkProxy, Trace};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// The workplace's `shared/` directory: `../shared` beside the workspace, else `$CLEAVE_SHARED`.
fn shared_dir() -> Result<PathBuf, String> {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    if beside.is_dir() {
        return Ok(beside);
    }
    match std::env::var_os("CLEAVE_SHARED") {
        Some(d) if PathBuf::from(&d).is_dir() => Ok(PathBuf::from(d)),
        _ => Err(format!("shared data not found at {} and CLEAVE_SHARED is not set", beside.display())),
    }
}

/// Writes as fast as possible to `proxy` until `until`, while the server counts what arrives in
/// `(from, until]`. Returns the bytes counted.
async fn saturate(proxy: SocketAddr, listener: TcpListener, from: Instant, until: Instant) -> u64 {
    let receiver = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("proxy connects");
        let mut buf = vec![0u8; 64 * 1024];
        let mut counted = 0u64;
        loop {
            let n = match timeout(until.saturating_duration_since(Instant::now()), conn.read(&mut buf)).await {
                Ok(r) => r.expect("server reads"),
                Err(_) => break, // past the window
            };
            let now = Instant::now();
            if n == 0 || now > until {
                break;
            }
            if now > from {
                counted += n as u64;
            }
        }
        counted
    });
    let mut client = TcpStream::connect(proxy).await.expect("connect to the proxy");
    let chunk = vec![0x5au8; 64 * 1024];
    while Instant::now() < until {
        match timeout(until.saturating_duration_since(Instant::now()), client.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            // The receiver closes at the end of the window, possibly while a write is under way
            // (a reset, seen in CI). An early failure would show as missing bytes in the count.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    receiver.await.expect("receiver task")
}

/// 30 s through the proxy with `trace` as the uplink; asserts the 3 % acceptance criterion.
async fn replay(name: &str, trace: Trace) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = LinkProxy::start(listener.local_addr().unwrap(), LinkConfig::uplink(trace.clone())).await.unwrap();
    let origin = proxy.handle().origin();
    // Skip the first second (connection set-up), then count 30 s.
    let (from_ms, until_ms) = (1_000, 31_000);
    let wall = std::time::Instant::now();
    let got = saturate(
        proxy.local_addr(),
        listener,
        origin + Duration::from_millis(from_ms),
        origin + Duration::from_millis(until_ms),
    )
    .await;
    let capacity = trace.bytes_between(from_ms, until_ms);
    let ratio = got as f64 / capacity as f64;
    println!(
        "replay {name}: delivered {got} B, trace capacity {capacity} B ({:.2} Mbit/s), ratio {ratio:.4}, wall {:.1} s",
        capacity as f64 * 8.0 / 30e6,
        wall.elapsed().as_secs_f64()
    );
    assert!((ratio - 1.0).abs() < 0.03, "{name}: delivered/capacity = {ratio:.4}, outside 3 %");
}

/// 30 s. Always runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_30s_markov_trace_delivers_its_capacity_within_3_percent() {
    let trace = Trace::markov(2024, 60_000, &[0.5, 2.0, 5.0, 10.0, 17.0], 2_000.0).unwrap();
    replay("markov(2024)", trace).await;
}

/// 30 s. Skips when `../shared` is absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_30s_recorded_trace_delivers_its_capacity_within_3_percent() {
    let path = match shared_dir() {
        Ok(d) => d.join("traces/TMobile-LTE-short.up"),
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("SKIP: {} is absent", path.display());
        return;
    };
    replay("TMobile-LTE-short.up", Trace::parse(&text).unwrap()).await;
}

/// Echoes every connection; returns its address.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn round_trip(client: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    client.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    client.read_exact(&mut back).await.unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_one_way_delay_is_honoured_in_each_direction() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let delay = Duration::from_millis(150);
    let config = LinkConfig { delay, ..LinkConfig::default() };
    let proxy = LinkProxy::start(listener.local_addr().unwrap(), config).await.unwrap();
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();

    let sent = Instant::now();
    client.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).await.unwrap();
    let one_way = sent.elapsed();
    server.write_all(b"y").await.unwrap();
    client.read_exact(&mut byte).await.unwrap();
    let rtt = sent.elapsed();
    println!("delay 150 ms: first byte after {one_way:?}, round trip {rtt:?}");
    assert!(one_way >= delay, "{one_way:?}");
    assert!(rtt >= 2 * delay, "{rtt:?}");
    assert!(rtt < Duration::from_secs(2), "{rtt:?}");

    // A new delay applies to bytes sent afterwards.
    proxy.handle().set_delay(Duration::ZERO);
    let sent = Instant::now();
    client.write_all(b"z").await.unwrap();
    server.read_exact(&mut byte).await.unwrap();
    assert!(sent.elapsed() < delay, "{:?}", sent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_holds_bytes_until_lifted() {
    let proxy = LinkProxy::start(echo_server().await, LinkConfig::default()).await.unwrap();
    let link = proxy.handle();
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut client, b"hello").await, b"hello");

    link.blackhole(true);
    client.write_all(b"lost?").await.unwrap();
    let mut back = [0u8; 5];
    let waited = timeout(Duration::from_millis(400), client.read_exact(&mut back)).await;
    assert!(waited.is_err(), "nothing crosses a blackhole");

    link.blackhole(false);
    timeout(Duration::from_secs(2), client.read_exact(&mut back)).await.expect("delivered once lifted").unwrap();
    assert_eq!(&back, b"lost?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_aborts_open_connections_with_an_error() {
    let proxy = LinkProxy::start(echo_server().await, LinkConfig::default()).await.unwrap();
    let link = proxy.handle();
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut client, b"ping").await, b"ping");

    link.reset();
    let mut buf = [0u8; 16];
    let read = timeout(Duration::from_secs(2), client.read(&mut buf)).await.expect("the reset arrives");
    let err = read.expect_err("a reset connection fails instead of ending cleanly");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    // The proxy itself keeps working.
    let mut again = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut again, b"pong").await, b"pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_paces_the_downlink_only() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = LinkProxy::start(listener.local_addr().unwrap(), LinkConfig::default()).await.unwrap();
    let link = proxy.handle();
    link.rate_limit(Direction::Down, Some(1e6)).unwrap();
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();

    // 62 500 B at 1 Mbit/s: 0.5 s down; the uplink stays unlimited.
    let payload = vec![7u8; 62_500];
    let t = Instant::now();
    client.write_all(&payload).await.unwrap();
    let mut got = vec![0u8; payload.len()];
    server.read_exact(&mut got).await.unwrap();
    let up = t.elapsed();
    let t = Instant::now();
    server.write_all(&payload).await.unwrap();
    client.read_exact(&mut got).await.unwrap();
    let down = t.elapsed();
    println!("62.5 kB: up (unlimited) {up:?}, down (1 Mbit/s) {down:?}");
    assert!(down >= Duration::from_millis(480), "{down:?}");
    assert!(down < Duration::from_secs(3), "{down:?}");
    assert!(up < Duration::from_millis(250), "{up:?}");
    let stats = link.stats();
    assert_eq!((stats.up_bytes, stats.down_bytes, stats.connections), (62_500, 62_500, 1));

    // Lifting the limit restores the (unlimited) downlink.
    link.rate_limit(Direction::Down, None).unwrap();
    let t = Instant::now();
    server.write_all(&payload).await.unwrap();
    client.read_exact(&mut got).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(250), "{:?}", t.elapsed());
}
