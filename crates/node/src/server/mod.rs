//! The edge/cloud server: the Open Inference Protocol over gRPC, a Prometheus endpoint, dynamic
//! batching, bounded queues, deadlines and graceful shutdown.
//!
//! A request names a model. Without `cleave.cut` it runs the whole model on the request's
//! inputs (any OIP client works, e.g. Triton's). With `cleave.cut = N` and
//! `cleave.input_shapes`, it runs the tail after cut N on the tensors crossing that cut, which
//! may be codec-encoded. Every response carries `cleave.queue_ms` and `cleave.compute_ms`, and
//! every answer (probes too) the workers' utilization, `cleave.server_util`. With
//! [`ServerConfig::coordination`] the server also plans the devices that report their options
//! jointly and answers them with a recommendation ([`coord`]).

pub mod batcher;
pub mod coord;
pub mod dedup;
pub mod metrics;
pub mod registry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cleave_engine::{Engine, EngineConfig, TensorMap};
use cleave_graph::InputShapes;
use cleave_proto::inference::model_metadata_response::TensorMetadata;
use cleave_proto::inference::*;
use cleave_proto::wire::{self, Limits, WireError};
use cleave_proto::{GrpcInferenceService, GrpcInferenceServiceServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use batcher::{BatchConfig, Batcher, Work};
use dedup::{Admission, Dedup, DedupConfig};
use metrics::{Failure, Metrics};
use registry::Registry;

pub use cleave_proto::wire::{PARAM_INPUT_SHAPES, PARAM_PROBE};

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` is served (`None`: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    pub batch: BatchConfig,
    pub engine: EngineConfig,
    /// tract, or onnxruntime (needs the `ort` feature and a loaded library).
    pub backend: cleave_engine::Backend,
    pub limits: Limits,
    /// Serve gRPC over TLS (the metrics port stays plain HTTP).
    pub tls: Option<crate::security::ServerTls>,
    /// Require `authorization: Bearer <token>` on every RPC but the health ones.
    pub auth_token: Option<crate::security::AuthToken>,
    /// Bounds of the answers kept to de-duplicate retried requests ([`dedup`]).
    pub dedup: DedupConfig,
    /// Fleet mode: plan the reporting devices jointly ([`coord`]); `None`: reports are ignored.
    pub coordination: Option<coord::CoordConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_addr: ([127, 0, 0, 1], 8001).into(),
            metrics_addr: Some(([127, 0, 0, 1], 8002).into()),
            max_message_bytes: 64 << 20,
            batch: BatchConfig::default(),
            engine: EngineConfig::default(),
            backend: cleave_engine::Backend::Tract,
            limits: Limits::default(),
            tls: None,
            auth_token: None,
            dedup: DedupConfig::default(),
            coordination: None,
        }
    }
}

/// Formats input shapes as `cleave.input_shapes` carries them.
pub fn format_shapes(shapes: &InputShapes) -> String {
    shapes
        .0
        .iter()
        .map(|(k, v)| format!("{k}={}", v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")))
        .collect::<Vec<_>>()
        .join(";")
}

/// Shared state of a running server.
pub struct State {
    pub registry: Arc<Registry>,
    pub engine: Arc<Engine>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub shutting_down: AtomicBool,
    /// Answers of retried requests (same id), so that none is computed twice.
    pub dedup: Dedup,
    /// The workers' busy share, reported on every answer.
    pub load: coord::LoadMeter,
    /// Fleet mode's joint plan, when enabled.
    pub coordinator: Option<coord::Coordinator>,
}

/// HTTP/2 flow-control windows and frame size, on both ends (see [`crate::client`]).
pub const HTTP2_STREAM_WINDOW: u32 = 8 << 20;
pub const HTTP2_CONNECTION_WINDOW: u32 = 32 << 20;
pub const HTTP2_MAX_FRAME: u32 = 1 << 20;
/// Client resets of streams the server has not accepted yet, before h2 closes the connection.
pub const HTTP2_MAX_PENDING_RESETS: usize = 4096;

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    state: Arc<State>,
}

fn grpc_deadline<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    // tonic's own timeout layer fires at the same instant and answers CANCELLED; ending a little
    // earlier lets the handler answer DEADLINE_EXCEEDED, the code the gRPC spec asks for.
    let margin = (d / 10).min(Duration::from_millis(2));
    Instant::now().checked_add(d - margin)
}

impl Service {
    pub fn new(state: Arc<State>) -> Service {
        Service { state }
    }

    fn entry(&self, name: &str, version: &str) -> Result<&Arc<registry::ModelEntry>, Status> {
        let e = self.state.registry.get(name).ok_or_else(|| {
            Status::not_found(format!("unknown model `{name}` (served: {})", self.state.registry.names().join(", ")))
        })?;
        if !version.is_empty() && version != "1" {
            return Err(Status::not_found(format!("model `{name}` has no version `{version}` (served: 1)")));
        }
        Ok(e)
    }

    /// The load signal, and in fleet mode the device's report and recommendation.
    fn fleet_params(
        &self,
        req: &HashMap<String, InferParameter>,
        resp: &mut HashMap<String, InferParameter>,
    ) -> Result<(), Status> {
        let now = Instant::now();
        let util = self.state.load.utilization(now);
        resp.insert(wire::PARAM_SERVER_UTIL.into(), wire::f64_param(util));
        resp.insert(wire::PARAM_SERVER_WORKERS.into(), wire::int_param(self.state.load.workers() as i64));
        let Some(coordinator) = &self.state.coordinator else { return Ok(()) };
        let Some(id) = wire::get_str(req, wire::PARAM_DEVICE).map_err(Status::from)? else { return Ok(()) };
        let report = match wire::get_str(req, wire::PARAM_FLEET_REPORT).map_err(Status::from)? {
            Some(r) => Some(
                cleave_plan::fleet::DeviceReport::parse(r)
                    .map_err(|e| Status::invalid_argument(format!("{}: {e}", wire::PARAM_FLEET_REPORT)))?,
            ),
            None => None,
        };
        let rec = coordinator
            .visit(id, report, now, util)
            .map_err(|e| Status::invalid_argument(format!("{}: {e}", wire::PARAM_DEVICE)))?;
        if let Some(rec) = rec {
            resp.insert(wire::PARAM_FLEET_PLAN.into(), wire::str_param(rec));
        }
        Ok(())
    }

    async fn infer(&self, request: Request<ModelInferRequest>) -> Result<ModelInferResponse, Status> {
        let arrived = Instant::now();
        let state = &self.state;
        let deadline = grpc_deadline(&request);
        if deadline.is_some_and(|d| d <= arrived) {
            return Err(Status::deadline_exceeded("the request's deadline had passed when it arrived"));
        }
        let req = request.into_inner();
        if state.shutting_down.load(Ordering::Acquire) {
            return Err(Status::unavailable("the server is shutting down"));
        }
        let entry = self.entry(&req.model_name, &req.model_version)?.clone();
        let m = state.metrics.model(&entry.name);
        let reject = |e: Status| {
            m.fail(Failure::Rejected);
            e
        };
        if wire::get_int(&req.parameters, PARAM_PROBE).map_err(Status::from).map_err(reject)?.is_some_and(|v| v != 0) {
            let mut resp = ModelInferResponse {
                model_name: entry.name.clone(),
                model_version: "1".into(),
                id: req.id,
                ..Default::default()
            };
            self.fleet_params(&req.parameters, &mut resp.parameters).map_err(reject)?;
            return Ok(resp);
        }
        if let Some(sha) =
            wire::get_str(&req.parameters, wire::PARAM_MODEL_SHA256).map_err(Status::from).map_err(reject)?
            && sha != entry.sha256
        {
            return Err(reject(Status::failed_precondition(format!(
                "the device split another file than this server's model `{}` (sha256 {} here, {} there)",
                entry.name,
                &entry.sha256[..12],
                // The client's string may be anything: cut it at a character, not a byte.
                sha.chars().take(12).collect::<String>()
            ))));
        }
        let cut = wire::get_int(&req.parameters, wire::PARAM_CUT).map_err(Status::from).map_err(reject)?;
        // Decoding a large payload (dequantizing, decompressing) is compute: off the runtime's
        // threads, which must keep answering health probes.
        let raw: usize = req.raw_input_contents.iter().map(|b| b.len()).sum();
        let (req, tensors) = if raw > (256 << 10) {
            let limits = state.limits;
            tokio::task::spawn_blocking(move || {
                let t = wire::decode_inputs(&req, &limits);
                (req, t)
            })
            .await
            .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        } else {
            let t = wire::decode_inputs(&req, &state.limits);
            (req, t)
        };
        let tensors = tensors.map_err(Status::from).map_err(reject)?;
        let shapes = match cut {
            Some(_) => {
                let s = wire::get_str(&req.parameters, PARAM_INPUT_SHAPES)
                    .map_err(Status::from)
                    .map_err(reject)?
                    .ok_or_else(|| {
                        reject(Status::invalid_argument(format!("{} needs {PARAM_INPUT_SHAPES}", wire::PARAM_CUT)))
                    })?;
                wire::parse_input_shapes(s, &state.limits).map_err(Status::from).map_err(reject)?
            }
            None => InputShapes(tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect()),
        };
        // Analysing a new shape or compiling a part takes milliseconds: off the async threads,
        // once per (shapes, cut); then the route is remembered.
        let key = (shapes, cut);
        let route = match entry.route(&key) {
            Some((r, refresh)) => {
                if refresh {
                    // Let the engine's cache see that this part is in use. Inline: a blocking
                    // task per refresh grew the blocking pool under load, and every new thread
                    // brought its own malloc arena (RSS +10 MiB each, late in a run).
                    state.engine.keep(&r.graph_id, &r.part);
                }
                r
            }
            None => {
                let (engine, entry2) = (state.engine.clone(), entry.clone());
                tokio::task::spawn_blocking(move || {
                    let (shapes, cut) = &key;
                    let graph = entry2.graph(shapes)?;
                    let c = match *cut {
                        None => 0,
                        Some(c) => usize::try_from(c).ok().filter(|&c| c < graph.last_cut()).ok_or_else(|| {
                            WireError::invalid(format!(
                                "cut {c} is not a cut with a tail (this model has cuts 0..{} at these shapes)",
                                graph.last_cut()
                            ))
                        })?,
                    };
                    let part = engine.part(&graph, c, graph.last_cut()).map_err(|e| WireError {
                        code: tonic::Code::Internal,
                        message: format!("cannot compile the tail of `{}` after cut {c}: {e}", entry2.name),
                    })?;
                    let route = registry::Route { graph_id: graph.id().into(), graph, part };
                    entry2.remember_route(key, &route);
                    Ok::<_, WireError>(route)
                })
                .await
                .map_err(|e| Status::internal(format!("worker failed: {e}")))?
                .map_err(Status::from)
                .map_err(reject)?
            }
        };
        let part = &route.part;
        // The request must carry exactly the part's inputs, at their types and shapes.
        let mut inputs = TensorMap::new();
        let mut given: HashMap<&str, &wire::WireTensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        for spec in &part.inputs {
            let t = given.remove(spec.name.as_str()).ok_or_else(|| {
                reject(Status::invalid_argument(format!(
                    "missing input `{}` (this {} reads: {})",
                    spec.name,
                    if cut.is_some() { "tail" } else { "model" },
                    part.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                )))
            })?;
            if t.dtype != spec.dtype || t.shape != spec.shape {
                return Err(reject(Status::invalid_argument(format!(
                    "input `{}` is {} {:?}, expected {} {:?}",
                    spec.name,
                    wire::datatype_name(t.dtype),
                    t.shape,
                    wire::datatype_name(spec.dtype),
                    spec.shape
                ))));
            }
            inputs.insert(spec.name.clone(), crate::convert::to_tensor(t).map_err(Status::from).map_err(reject)?);
        }
        if let Some(extra) = given.keys().next() {
            return Err(reject(Status::invalid_argument(format!("unexpected input `{extra}`"))));
        }
        let requested: Vec<&str> = req.outputs.iter().map(|o| o.name.as_str()).collect();
        for r in &requested {
            if !part.outputs.iter().any(|o| o.name == *r) {
                return Err(reject(Status::invalid_argument(format!("unknown output `{r}`"))));
            }
        }
        let work = Work {
            entry: entry.clone(),
            graph: route.graph.clone(),
            graph_id: route.graph_id.clone(),
            cut: part.from_cut,
            part: part.clone(),
            metrics: m.clone(),
        };
        let result = match state.batcher.infer(&work, inputs, deadline).await {
            Err(e) if e.code() == tonic::Code::ResourceExhausted => return Err(reject(e)),
            r => r?,
        };

        let mut resp = ModelInferResponse {
            model_name: entry.name.clone(),
            model_version: "1".into(),
            id: req.id,
            ..Default::default()
        };
        for spec in &part.outputs {
            if !requested.is_empty() && !requested.contains(&spec.name.as_str()) {
                continue;
            }
            let t = result
                .outputs
                .get(&spec.name)
                .ok_or_else(|| Status::internal(format!("output `{}` missing", spec.name)))?;
            let (o, raw) = wire::encode_output(&crate::convert::to_wire_shared(&spec.name, t).map_err(Status::from)?);
            resp.outputs.push(o);
            resp.raw_output_contents.push(raw);
        }
        let queue_ms = result.queue.as_secs_f64() * 1e3;
        let compute_ms = result.compute.as_secs_f64() * 1e3;
        resp.parameters.insert(wire::PARAM_QUEUE_MS.into(), wire::f64_param(queue_ms));
        resp.parameters.insert(wire::PARAM_COMPUTE_MS.into(), wire::f64_param(compute_ms));
        resp.parameters.insert(wire::PARAM_BATCH.into(), wire::int_param(result.batch as i64));
        state.load.record(result.compute / result.batch.max(1) as u32, Instant::now());
        self.fleet_params(&req.parameters, &mut resp.parameters)?;
        m.success.fetch_add(1, Ordering::Relaxed);
        m.inference_count.fetch_add(1, Ordering::Relaxed);
        m.queue_duration_us.fetch_add(result.queue.as_micros() as u64, Ordering::Relaxed);
        m.compute_infer_duration_us.fetch_add(result.compute.as_micros() as u64, Ordering::Relaxed);
        m.request_duration_us.fetch_add(arrived.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(resp)
    }
}

fn tensor_metadata(specs: &[cleave_graph::TensorSpec], batchable: bool) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: wire::datatype_name(s.dtype).to_owned(),
            shape: s.shape.iter().enumerate().map(|(i, &d)| if i == 0 && batchable { -1 } else { d as i64 }).collect(),
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = !self.state.shutting_down.load(Ordering::Acquire) && !self.state.registry.is_empty();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(&self, req: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = !self.state.shutting_down.load(Ordering::Acquire) && self.entry(&r.name, &r.version).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "cleave".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let e = self.entry(&r.name, &r.version)?;
        Ok(Response::new(ModelMetadataResponse {
            name: e.name.clone(),
            versions: vec!["1".into()],
            platform: format!("onnx ({})", self.state.engine.name()),
            inputs: tensor_metadata(&e.default.inputs(), e.batchable),
            outputs: tensor_metadata(&e.default.outputs(), e.batchable),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        // A device that failed over re-sends a request with the same id: compute it once.
        match self.state.dedup.admit(request.get_ref()).await {
            Admission::Untracked => self.infer(request).await.map(Response::new),
            Admission::First(ticket) => {
                let outcome = self.infer(request).await;
                ticket.finish(&outcome);
                outcome.map(Response::new)
            }
            Admission::Copy(outcome) => {
                if let Ok(r) = &outcome {
                    self.state.metrics.model(&r.model_name).deduplicated.fetch_add(1, Ordering::Relaxed);
                }
                outcome.map(Response::new)
            }
        }
    }
}

/// A server running in this process (tests, benches, `cleave serve`).
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl RunningServer {
    /// Starts serving `registry` (binding port 0 picks a free port).
    pub async fn start(registry: Registry, config: ServerConfig) -> Result<RunningServer, String> {
        if registry.is_empty() {
            return Err("no model to serve: give --model NAME=PATH or --model-repository DIR".into());
        }
        // TLS first: a certificate that rustls refuses fails before any port is bound.
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            builder = builder
                .tls_config(tls.tonic_config())
                .map_err(|e| format!("cannot set up TLS: {}", crate::security::error_chain(&e)))?;
        }
        let engine = Arc::new(Engine::with_backend(config.engine.clone(), config.backend).map_err(|e| e.to_string())?);
        let state = Arc::new(State {
            registry: Arc::new(registry),
            batcher: Batcher::new(engine.clone(), config.batch.clone()),
            engine,
            metrics: Arc::new(Metrics::default()),
            limits: config.limits,
            shutting_down: AtomicBool::new(false),
            dedup: Dedup::new(config.dedup.clone()),
            load: coord::LoadMeter::new(config.batch.workers),
            coordinator: config.coordination.clone().map(|c| coord::Coordinator::new(c, config.batch.workers)),
        });
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.grpc_addr))?;
        let grpc_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let metrics_addr = match config.metrics_addr {
            Some(addr) => Some(spawn_metrics(addr, state.clone()).await?),
            None => None,
        };
        let svc = GrpcInferenceServiceServer::new(Service::new(state.clone()))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        let svc = tonic::service::interceptor::InterceptedService::new(
            svc,
            crate::security::RequireToken::new(config.auth_token.clone()),
        );
        let (tx, rx) = oneshot::channel::<()>();
        let state2 = state.clone();
        let task = tokio::spawn(async move {
            builder
                // Boundary tensors are hundreds of KiB: HTTP/2's default 64 KiB windows would
                // stall every request on WINDOW_UPDATE round trips.
                .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
                .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
                .max_frame_size(Some(HTTP2_MAX_FRAME))
                // Devices cancel requests whose deadline passed (RST_STREAM). h2 answers more
                // than 20 such resets of not-yet-accepted streams with GOAWAY "too_many_resets"
                // (its rapid-reset guard), which killed a device's connection after a burst of
                // expired frames; allow as many as a full queue's worth, several times over.
                .http2_max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_RESETS))
                // Tags the health RPCs, which the token interceptor lets by (it cannot see paths).
                .layer(crate::security::MarkOpenRpcs)
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move {
                        let _ = rx.await;
                        state2.shutting_down.store(true, Ordering::Release);
                    },
                )
                .await
                .map_err(|e| format!("server failed: {e}"))
        });
        // Says whether a token is required, never the token.
        tracing::info!(
            "serving {} on {grpc_addr} ({}{})",
            state.registry.names().join(", "),
            config.tls.as_ref().map_or("plaintext", |t| t.describe()),
            if config.auth_token.is_some() { ", bearer token required" } else { "" }
        );
        Ok(RunningServer { grpc_addr, metrics_addr, state, shutdown: Some(tx), task })
    }

    /// Stops accepting work (new requests get UNAVAILABLE), lets in-flight requests finish, and
    /// returns when the server has stopped.
    pub async fn shutdown(mut self) -> Result<(), String> {
        self.state.shutting_down.store(true, Ordering::Release);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.map_err(|e| e.to_string())?
    }
}

async fn spawn_metrics(addr: SocketAddr, state: Arc<State>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let state = state.clone();
                async move { state.metrics.render() }
            }),
        )
        .route("/v2/health/live", axum::routing::get(|| async { "live" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics endpoint failed: {e}");
        }
    });
    Ok(local)
}
