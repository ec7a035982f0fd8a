//! `cleave-link`'s proxy between a client and a server, with the estimators a device would run.
//!
//! ```text
//! cargo run -p cleave-link --example proxy
//! ```
//! An echo server stands in for the edge; the client connects to the proxy instead of the server
//! and sends 200 kB "tensors" over a generated 0.5–20 Mbit/s uplink with 20 ms each way, feeding
//! each transfer's throughput to a [`BandwidthEstimator`]. Halfway through, the uplink is capped at
//! 1 Mbit/s at run time.

use std::time::Duration;

use cleave_link::{BandwidthEstimator, Direction, LinkConfig, LinkProxy, Trace};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The "edge server": echoes a 1-byte acknowledgement per received tensor.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; TENSOR];
                while conn.read_exact(&mut buf).await.is_ok() {
                    if conn.write_all(b"k").await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    // The link: a reproducible cellular-like uplink, unlimited downlink, 20 ms each way.
    let up = Trace::markov(42, 120_000, &[0.5, 2.0, 5.0, 10.0, 20.0], 1_500.0)?;
    println!("uplink trace: period {} s, mean {:.2} Mbit/s", up.period_ms() / 1000, up.mean_bps() / 1e6);
    let config = LinkConfig { up: Some(up.clone()), delay: Duration::from_millis(20), ..LinkConfig::default() };
    let proxy = LinkProxy::start(server, config).await?;
    let link = proxy.handle();

    // The "device" connects to the proxy instead of the server.
    let mut conn = TcpStream::connect(proxy.local_addr()).await?;
    conn.set_nodelay(true)?;
    let mut bandwidth = BandwidthEstimator::default();
    let tensor = vec![1u8; TENSOR];
    let mut ack = [0u8; 1];

    for frame in 0..12 {
        if frame == 6 {
            link.rate_limit(Direction::Up, Some(1e6))?;
            println!("-- uplink capped at 1 Mbit/s --");
        }
        let t = Instant::now();
        conn.write_all(&tensor).await?;
        conn.read_exact(&mut ack).await?;
        let elapsed = t.elapsed();
        // A real device subtracts the server's reported compute time; the echo server has none,
        // and the round trip's two propagation delays are not bandwidth either.
        let wire = elapsed.saturating_sub(Duration::from_millis(40));
        bandwidth.observe(TENSOR as u64, wire);
        // What the pure model predicts for an idle link: the trace's transfer time plus 2 delays.
        let at_ms = (t - link.origin()).as_millis() as u64;
        let predicted =
            if frame < 6 { format!("{:6} ms", up.transfer_ms(at_ms, TENSOR as u64) + 40) } else { "   capped".into() };
        println!(
            "frame {frame:2}: {TENSOR} B in {:6.1} ms (trace predicts {predicted}); estimate {:5.2} Mbit/s, robust {:5.2}",
            elapsed.as_secs_f64() * 1000.0,
            bandwidth.estimate_bps().unwrap_or(0.0) / 1e6,
            bandwidth.robust_bps().unwrap_or(0.0) / 1e6,
        );
    }
    let stats = link.stats();
    println!(
        "proxy carried {} B up, {} B down over {} connection(s)",
        stats.up_bytes, stats.down_bytes, stats.connections
    );
    Ok(())
}

const TENSOR: usize = 200_000;
