//! `cleave serve`: an edge or cloud node.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cleave_engine::EngineConfig;
use cleave_graph::InputShapes;
use cleave_node::server::batcher::BatchConfig;
use cleave_node::server::registry::{ModelEntry, Registry};
use cleave_node::{RunningServer, ServerConfig, ServerTls};
use cleave_proto::wire::Limits;

/// Serve models over the Open Inference Protocol (KServe V2 gRPC), as an edge or cloud node.
///
/// Any OIP client (Triton's tritonclient, MLServer's, KServe's) can run the whole models by
/// name. A cleave device (`cleave run --edge`) sends the tensors crossing a cut, encoded by a
/// codec, and the server runs the tail. Requests for the same model, shapes and cut are batched
/// dynamically (when the model's batch dimension is symbolic); the queue is bounded, and past it
/// requests are refused with RESOURCE_EXHAUSTED and a retry hint. Deadlines (grpc-timeout) are
/// honoured. Prometheus metrics (Triton's names) are at http://HOST:METRICS_PORT/metrics.
/// SIGTERM or Ctrl-C drains: in-flight requests finish, new ones get UNAVAILABLE.
///
/// Security: `--tls-cert/--tls-key` serve gRPC over TLS (rustls); `--tls-client-ca` also
/// requires clients to present a certificate signed by that CA (mutual TLS). With
/// `--auth-token-file` (or the CLEAVE_AUTH_TOKEN environment variable) every RPC must carry
/// `authorization: Bearer <token>`, else UNAUTHENTICATED; ServerLive and ServerReady stay open
/// for health probes. The metrics port is always plain HTTP: keep it on a private interface.
///
/// Fleet mode (--coordinate): devices that report their options are planned jointly so that
/// together they do not saturate this server (`cleave bench fleet` measures it).
///
/// Examples:
///   cleave serve --model resnet=resnet50.onnx
///   cleave serve --model-repository models/ --grpc-port 9001 --max-batch 16
///   cleave serve --model resnet=resnet50.onnx --tls-cert server.pem --tls-key server.key \
///       --tls-client-ca ca.pem --auth-token-file token.txt
///   cleave serve --model m=model.onnx --coordinate --fleet-objective max-latency
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A model to serve, NAME=PATH (repeatable).
    #[arg(long = "model", value_name = "NAME=PATH")]
    pub models: Vec<String>,

    /// A directory of models: NAME.onnx or NAME/<version>/model.onnx (Triton's layout).
    #[arg(long, value_name = "DIR")]
    pub model_repository: Option<PathBuf>,

    /// Default shape of a model input with symbolic dimensions, INPUT=d0,d1,… (repeatable; a
    /// symbolic batch defaults to 1). Requests may use other shapes the model allows.
    #[arg(long = "shape", value_name = "INPUT=DIMS")]
    pub shapes: Vec<String>,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// gRPC port (0: pick a free one).
    #[arg(long, default_value_t = 8001)]
    pub grpc_port: u16,

    /// Prometheus metrics port (0: pick a free one).
    #[arg(long, default_value_t = 8002)]
    pub metrics_port: u16,

    /// Inference engine: tract (built in), or ort (onnxruntime, in a binary built with
    /// `--features ort`; the library comes from ORT_DYLIB_PATH, else from python3's
    /// `onnxruntime` package).
    #[arg(long, default_value = "tract")]
    pub engine: cleave_engine::Backend,

    /// Threads per inference.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Batches computed at once (default: cores ÷ threads).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Largest dynamic batch (1, the default, disables batching). Requests for the same tail
    /// are then stacked on the batch axis and run together. With tract on a CPU that was slower
    /// than running them one by one (measured 0.68–0.92× the throughput at 8, release build,
    /// docs/FLEET.md), so turn it on only where batches pay (e.g. --engine ort on an
    /// accelerator) and check with `cleave bench load --max-batch`.
    #[arg(long, default_value_t = 1)]
    pub max_batch: usize,

    /// Longest a request waits to be batched with others (0: batch only what is already waiting).
    #[arg(long, default_value = "0ms", value_parser = crate::cmd::duration)]
    pub max_queue_delay: Duration,

    /// Most requests waiting; past it, RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,

    /// Largest gRPC message accepted (e.g. 64MiB).
    #[arg(long, default_value = "64MiB", value_parser = size)]
    pub max_message_size: u64,

    /// How many compiled parts to keep.
    #[arg(long, default_value_t = 64)]
    pub cache: usize,

    /// Serve gRPC over TLS with this certificate chain (PEM, leaf first; needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: clients must present a certificate signed by this CA (PEM; needs --tls-cert).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Require `authorization: Bearer <token>` on every RPC but ServerLive/ServerReady; the token
    /// is this file's contents, surrounding whitespace dropped (default: the CLEAVE_AUTH_TOKEN
    /// environment variable, if set).
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// Fleet mode: devices that send `cleave.device` and their options (`cleave.fleet.report`)
    /// are planned jointly every 250 ms, subject to this server's capacity, and each answer
    /// carries the device's recommended cut and codec (`cleave.fleet.plan`). Devices that do not
    /// report are unaffected. Every answer carries `cleave.server_util` either way.
    #[arg(long)]
    pub coordinate: bool,

    /// With --coordinate: what the joint plan minimises: mean-latency, max-latency or energy.
    #[arg(long, default_value = "mean-latency")]
    pub fleet_objective: cleave_plan::fleet::FleetObjective,

    /// With --coordinate: the share of the workers' time the plan may fill (0..1); the rest
    /// absorbs bursts.
    #[arg(long, default_value_t = 0.8)]
    pub fleet_max_utilization: f64,
}

fn size(s: &str) -> Result<u64, String> {
    cleave_cost::parse_bytes(s).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> Result<()> {
    let mut shapes = InputShapes::none();
    for s in &args.shapes {
        let (name, dims) = InputShapes::parse_one(s).map_err(anyhow::Error::msg)?;
        shapes = shapes.with(name, dims);
    }
    let mut registry = Registry::default();
    for m in &args.models {
        let (name, path) = m.split_once('=').with_context(|| format!("--model `{m}` is not NAME=PATH"))?;
        if name.is_empty() {
            bail!("--model `{m}` has an empty name");
        }
        let entry = ModelEntry::load(name, std::path::Path::new(path), &shapes).map_err(anyhow::Error::msg)?;
        registry.add(entry).map_err(anyhow::Error::msg)?;
    }
    if let Some(dir) = &args.model_repository {
        registry.load_repository(dir, &shapes).map_err(anyhow::Error::msg)?;
    }
    if registry.is_empty() {
        bail!("no model to serve: give --model NAME=PATH or --model-repository DIR");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::load(cert, key, args.tls_client_ca.as_deref())?),
        _ => None,
    };
    let auth_token = crate::cmd::auth_token(args.auth_token_file.as_deref())?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let workers = args.workers.unwrap_or((cores / args.threads.max(1)).max(1));
    let config = ServerConfig {
        grpc_addr: SocketAddr::new(args.host, args.grpc_port),
        metrics_addr: Some(SocketAddr::new(args.host, args.metrics_port)),
        max_message_bytes: usize::try_from(args.max_message_size).context("--max-message-size is too large")?,
        batch: BatchConfig {
            max_batch: args.max_batch.max(1),
            max_queue_delay: args.max_queue_delay,
            max_queue: args.max_queue.max(1),
            workers,
        },
        engine: EngineConfig { threads: args.threads, cache_capacity: args.cache.max(1) },
        limits: Limits::default(),
        backend: args.engine,
        tls,
        auth_token,
        dedup: Default::default(),
        coordination: args.coordinate.then(|| cleave_node::server::coord::CoordConfig {
            objective: args.fleet_objective,
            max_utilization: args.fleet_max_utilization,
            ..Default::default()
        }),
    };
    if !(args.fleet_max_utilization > 0.0 && args.fleet_max_utilization < 1.0) {
        bail!("--fleet-max-utilization {} must be between 0 and 1", args.fleet_max_utilization);
    }
    if args.engine == cleave_engine::Backend::Ort {
        crate::cmd::load_onnxruntime()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        // Tails compute on the blocking pool, at most `workers` batches at once, plus a tail
        // being compiled now and then. Uncapped, the pool grew a thread whenever a batch was
        // handed out before the previous batch's thread was back in the pool, which under load
        // happens late in a run as well as early, and every new thread brought its own malloc
        // arena: the edge's RSS rose by ~10 MiB per thread (`cleave bench load`, docs/LOAD.md).
        .max_blocking_threads(workers + 2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = RunningServer::start(registry, config).await.map_err(anyhow::Error::msg)?;
        // One line a supervisor or test can parse for the actual ports.
        println!(
            "listening grpc={} metrics={} models={}",
            server.grpc_addr,
            server.metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            server.state.registry.names().join(",")
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        wait_for_signal().await;
        eprintln!("shutting down: finishing in-flight requests, refusing new ones");
        server.shutdown().await.map_err(anyhow::Error::msg)?;
        eprintln!("stopped");
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
