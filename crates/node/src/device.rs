//! The device side: run the head, encode the tensors crossing the cut, send them, and take the
//! tail's answer, frame after frame, with the next frame's head computing while the previous
//! frame is on the network. When the server fails, the device finishes the frame itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_codec::{Codec, EncodeOptions};
use cleave_engine::{Engine, TensorMap, relative_error};
use cleave_graph::{ModelGraph, TensorSpec};
use cleave_proto::inference::ModelInferRequest;
use cleave_proto::wire::{self, Limits};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::client::EdgeClient;
use crate::convert::{shared_bytes, to_tensor};
use crate::failover::{Endpoints, FailoverConfig};
use crate::server::{PARAM_INPUT_SHAPES, format_shapes};

/// How the device runs.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The model's name on the server.
    pub model_name: String,
    /// The cut (the model's last cut: everything on the device).
    pub cut: usize,
    /// How the tensors crossing the cut are encoded.
    pub encode: EncodeOptions,
    /// Frames on the network at once.
    pub max_in_flight: usize,
    /// Each frame's deadline, from its release: the answer comes by then, from a server or,
    /// when none answers in time, from the device itself (which reserves the time its own tail
    /// takes). `None`: wait for the server as long as it takes.
    pub timeout: Option<Duration>,
    /// Release frames at this rate (`None`: each as soon as the pipeline has room).
    pub fps: Option<f64>,
    /// Also compute local references and report the differences.
    pub check: bool,
}

/// "Answer with exit `name` when its confidence (largest softmax probability) is at least
/// `threshold`; otherwise go on."
#[derive(Debug, Clone, PartialEq)]
pub struct ExitPolicy {
    pub name: String,
    pub threshold: f64,
}

/// Where a frame's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameStatus {
    /// Head on the device, tail on the server.
    Remote,
    /// Everything on the device (the plan said so).
    Device,
    /// The device answered at an early exit; nothing was sent.
    EarlyExit,
    /// No server answered in time (all down, or the deadline came): the device computed the
    /// tail itself. The result is marked degraded.
    LocalFallback,
}

/// Differences from local references (with `check`).
#[derive(Debug, Clone, Serialize)]
pub struct FrameCheck {
    /// The answer vs the tail run locally on exactly what was sent (decoded): the server's
    /// computation, checked.
    pub vs_local_tail: f64,
    /// The answer vs the whole model run locally (the codec's effect, end to end).
    pub vs_whole: f64,
    /// Largest boundary decoding error as a fraction of the codec's stated bound (≤ 1). 0 for
    /// a codec without a per-element bound (JPEG: `Codec::has_error_bound` is false), whose
    /// effect shows only in `vs_whole`.
    pub boundary_error_vs_bound: f64,
}

/// What happened to one frame.
#[derive(Debug, Clone, Serialize)]
pub struct FrameRecord {
    pub frame: usize,
    pub cut: usize,
    pub codec: Option<Codec>,
    pub bytes_up: u64,
    pub head_ms: f64,
    pub rpc_ms: f64,
    pub queue_ms: Option<f64>,
    pub compute_ms: Option<f64>,
    pub batch: Option<i64>,
    pub total_ms: f64,
    pub status: FrameStatus,
    /// With an exit policy: the exit's confidence on this frame.
    pub exit_confidence: Option<f64>,
    pub error: Option<String>,
    pub check: Option<FrameCheck>,
    /// The server that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Requests sent for this frame (more than 1 after a failover).
    pub attempts: usize,
    /// After a failed attempt: from that failure to the answer of the next server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_ms: Option<f64>,
}

/// A frame's record and outputs.
#[derive(Debug, Clone)]
pub struct FrameOutput {
    pub record: FrameRecord,
    pub outputs: TensorMap,
}

/// Runs frames of one model split at one cut.
pub struct Device {
    engine: Arc<Engine>,
    graph: Arc<ModelGraph>,
    remote: Option<Arc<Endpoints>>,
    config: DeviceConfig,
    /// Makes request ids unique to this device and run: `<session>-<frame>`. A retry keeps its
    /// id, so a server can tell it from a new request.
    session: String,
    /// Slowest local tail seen so far (ms): the time kept in reserve before a deadline.
    local_tail_ms: std::sync::Mutex<Option<f64>>,
    boundary: Vec<TensorSpec>,
    model_outputs: Vec<String>,
    /// Answer at an early exit when it is confident enough ([`Device::with_exit`]).
    exit: Option<ExitPolicy>,
    /// The cut right after that exit.
    exit_cut: Option<usize>,
}

/// What the head gives.
enum Head {
    /// The exit was confident: the frame is answered.
    Exited(TensorMap, f64),
    /// Go on, with the exit's confidence when there is a policy.
    Continue(TensorMap, Option<f64>),
}

impl Device {
    /// A device with one server; `client` may be `None` only for device-only cuts. Its health
    /// comes from request outcomes only ([`FailoverConfig::outcomes_only`]).
    pub fn new(
        engine: Arc<Engine>,
        graph: Arc<ModelGraph>,
        client: Option<EdgeClient>,
        config: DeviceConfig,
    ) -> Result<Device, String> {
        let remote = client.map(|c| Arc::new(Endpoints::from_clients(vec![c], FailoverConfig::outcomes_only())));
        Self::with_endpoints(engine, graph, remote, config)
    }

    /// A device with an ordered list of servers to fail over across ([`crate::failover`]).
    pub fn with_endpoints(
        engine: Arc<Engine>,
        graph: Arc<ModelGraph>,
        remote: Option<Arc<Endpoints>>,
        config: DeviceConfig,
    ) -> Result<Device, String> {
        let cut = graph.cut(config.cut).map_err(|e| e.to_string())?;
        if config.cut < graph.last_cut() && remote.is_none() {
            return Err("a cut before the last needs a server (--edge)".into());
        }
        if let Some(f) = config.fps
            && !(f.is_finite() && f > 0.0)
        {
            return Err(format!("fps must be positive, not {f}"));
        }
        let model_outputs = graph.outputs().into_iter().map(|s| s.name).collect();
        Ok(Device {
            engine,
            graph,
            remote,
            config,
            local_tail_ms: std::sync::Mutex::new(None),
            session: session_id(),
            boundary: cut.tensors,
            model_outputs,
            exit: None,
            exit_cut: None,
        })
    }

    /// The servers, when the device offloads.
    pub fn endpoints(&self) -> Option<&Arc<Endpoints>> {
        self.remote.as_ref()
    }

    /// Everything the head computes on `inputs` (no exit policy): what [`Device::request`]
    /// encodes.
    pub fn head_output(&self, inputs: &TensorMap) -> Result<TensorMap, String> {
        Ok(run_head(&self.engine, &self.graph, inputs, self.config.cut, None)?.0)
    }

    /// Times the local tail on `inputs` (head first), so a deadline keeps enough in reserve
    /// from the first frame on. [`Device::run`] does it on the first frame when there is a
    /// deadline.
    pub fn measure_local_tail(&self, inputs: &TensorMap) -> Result<f64, String> {
        if self.config.cut == self.graph.last_cut() {
            return Ok(0.0);
        }
        let (env, _) = run_head(&self.engine, &self.graph, inputs, self.config.cut, None)?;
        self.tail_locally(&env)?; // compiles and warms
        let t0 = Instant::now();
        self.tail_locally(&env)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        self.note_local_tail(ms);
        Ok(ms)
    }

    fn note_local_tail(&self, ms: f64) {
        let mut m = self.local_tail_ms.lock().expect("local tail lock");
        *m = Some(m.map_or(ms, |old| old.max(ms)));
    }

    /// When to stop waiting for servers: the deadline less the local tail's time (×1.5 + 2 ms).
    /// When the local tail cannot meet the deadline at all, servers get until the deadline
    /// itself (the local answer will be an early exit, or late).
    fn give_up_at(&self, t0: Instant) -> Instant {
        match self.config.timeout {
            None => t0 + Duration::from_secs(24 * 3600),
            Some(d) => {
                let reserve = self.local_reserve().unwrap_or(d / 4);
                if reserve < d { t0 + d - reserve } else { t0 + d }
            }
        }
    }

    fn local_reserve(&self) -> Option<Duration> {
        self.local_tail_ms.lock().expect("local tail lock").map(|ms| Duration::from_secs_f64((ms * 1.5 + 2.0) / 1e3))
    }

    /// With no server in time: the early exits the head computed, when the local tail would
    /// miss the deadline and there is one (the deepest); otherwise `None` (run the tail).
    fn exit_instead_of_tail(&self, t0: Instant, env: &TensorMap) -> Option<TensorMap> {
        let deadline = t0 + self.config.timeout?;
        let reserve = self.local_reserve()?;
        if Instant::now() + reserve <= deadline {
            return None;
        }
        let exits: TensorMap =
            self.graph.exits().iter().filter_map(|n| env.get(n).map(|t| (n.clone(), t.clone()))).collect();
        (!exits.is_empty()).then_some(exits)
    }

    /// Answers at an early exit when its confidence reaches the policy's threshold: the head
    /// runs up to the exit, and goes on (and offloads) only when the exit is not sure enough.
    /// The exit must be computed at or before the device's cut.
    pub fn with_exit(mut self, policy: Option<ExitPolicy>) -> Result<Device, String> {
        let (graph, config) = (&self.graph, &self.config);
        self.exit_cut = match &policy {
            None => None,
            Some(p) => {
                if !(0.0..=1.0).contains(&p.threshold) {
                    return Err(format!("exit threshold {} is outside 0..1", p.threshold));
                }
                if !graph.outputs().iter().any(|o| o.name == p.name) {
                    return Err(format!("`{}` is not an output of this model", p.name));
                }
                let e = graph.first_cut_after(&p.name).ok_or_else(|| format!("`{}` is never computed", p.name))?;
                if e > config.cut {
                    return Err(format!(
                        "exit `{}` is computed after cut {e}, but the device stops at cut {}: choose a cut ≥ {e}",
                        p.name, config.cut
                    ));
                }
                Some(e)
            }
        };
        self.exit = policy;
        Ok(self)
    }

    /// Runs every frame and returns them in order.
    pub async fn run(self: &Arc<Self>, frames: Vec<TensorMap>) -> Vec<FrameOutput> {
        let sem = Arc::new(Semaphore::new(self.config.max_in_flight.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        if self.config.timeout.is_some()
            && self.local_tail_ms.lock().expect("local tail lock").is_none()
            && let Some(first) = frames.first()
        {
            let (me, first) = (self.clone(), first.clone());
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.measure_local_tail(&first)).await {
                tracing::warn!("cannot time the local tail: {e}");
            }
        }
        let start = tokio::time::Instant::now();
        for (k, inputs) in frames.into_iter().enumerate() {
            let release = self.config.fps.map(|f| start + Duration::from_secs_f64(k as f64 / f));
            if let Some(r) = release {
                tokio::time::sleep_until(r).await;
            }
            let permit = sem.clone().acquire_owned().await.expect("semaphore open");
            // A frame's clock starts at its release, even when the pipeline made it wait.
            let t0 = release.map_or_else(Instant::now, |r| r.into_std());
            let me = self.clone();
            // The head and the encoding compute on the blocking pool: the runtime's threads stay
            // free for the network and the health probes.
            let head = {
                let me = me.clone();
                let inputs = inputs.clone();
                tokio::task::spawn_blocking(move || {
                    let head = me.head(&inputs)?;
                    let sent = match &head {
                        Head::Continue(env, _) if me.config.cut < me.graph.last_cut() => Some(me.request(k, env)),
                        _ => None,
                    };
                    Ok::<_, String>((head, sent))
                })
                .await
            };
            let head_ms = t0.elapsed().as_secs_f64() * 1e3;
            tasks.spawn(async move {
                let out = match head {
                    Ok(Ok((Head::Exited(env, confidence), _))) => {
                        let me2 = me.clone();
                        tokio::task::spawn_blocking(move || me2.exited(k, &inputs, &env, confidence, t0, head_ms))
                            .await
                            .unwrap_or_else(|e| me.failed(k, t0, head_ms, e.to_string()))
                    }
                    Ok(Ok((Head::Continue(env, confidence), sent))) => {
                        let mut out = me.finish(k, inputs, env, sent, t0, head_ms).await;
                        out.record.exit_confidence = confidence;
                        out
                    }
                    Ok(Err(e)) => me.failed(k, t0, head_ms, e),
                    Err(e) => me.failed(k, t0, head_ms, e.to_string()),
                };
                drop(permit);
                out
            });
        }
        let mut out: Vec<FrameOutput> = tasks.join_all().await;
        out.sort_by_key(|f| f.record.frame);
        out
    }

    /// Runs the head: the model inputs plus everything the head computes. With an exit policy
    /// the head stops right after the exit, and goes on only when the exit is not confident.
    fn head(&self, inputs: &TensorMap) -> Result<Head, String> {
        let exit = self.exit.as_ref().zip(self.exit_cut);
        let (env, confidence) = run_head(&self.engine, &self.graph, inputs, self.config.cut, exit)?;
        Ok(match (exit, confidence) {
            (Some((policy, _)), Some(c)) if c >= policy.threshold => Head::Exited(env, c),
            _ => Head::Continue(env, confidence),
        })
    }

    fn tail_locally(&self, env: &TensorMap) -> Result<TensorMap, String> {
        let part = self.engine.part(&self.graph, self.config.cut, self.graph.last_cut()).map_err(|e| e.to_string())?;
        self.engine.run(&part, env).map_err(|e| e.to_string())
    }

    fn model_outputs_of(&self, env: &TensorMap) -> TensorMap {
        self.model_outputs.iter().filter_map(|n| env.get(n).map(|t| (n.clone(), t.clone()))).collect()
    }

    /// A frame's record before anything beyond the head happened.
    fn record(&self, frame: usize, head_ms: f64) -> FrameRecord {
        FrameRecord {
            frame,
            cut: self.config.cut,
            codec: None,
            bytes_up: 0,
            head_ms,
            rpc_ms: 0.0,
            queue_ms: None,
            compute_ms: None,
            batch: None,
            total_ms: 0.0,
            status: FrameStatus::Device,
            exit_confidence: None,
            error: None,
            check: None,
            endpoint: None,
            attempts: 0,
            failover_ms: None,
        }
    }

    fn failed(&self, frame: usize, t0: Instant, head_ms: f64, error: String) -> FrameOutput {
        let record = FrameRecord {
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            status: FrameStatus::LocalFallback,
            error: Some(error),
            ..self.record(frame, head_ms)
        };
        FrameOutput { record, outputs: TensorMap::new() }
    }

    /// A frame answered at the exit.
    fn exited(
        &self,
        frame: usize,
        inputs: &TensorMap,
        env: &TensorMap,
        confidence: f64,
        t0: Instant,
        head_ms: f64,
    ) -> FrameOutput {
        let outputs = self.model_outputs_of(env);
        let mut record = FrameRecord {
            status: FrameStatus::EarlyExit,
            exit_confidence: Some(confidence),
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..self.record(frame, head_ms)
        };
        if self.config.check {
            record.check = self.check(inputs, &outputs, None);
        }
        FrameOutput { record, outputs }
    }

    /// The request carrying the tensors crossing the cut.
    pub fn request(&self, frame: usize, env: &TensorMap) -> Result<(ModelInferRequest, u64), String> {
        let mut req = ModelInferRequest {
            model_name: self.config.model_name.clone(),
            id: format!("{}-{frame}", self.session),
            ..Default::default()
        };
        req.parameters.insert(wire::PARAM_CUT.into(), wire::int_param(self.config.cut as i64));
        req.parameters.insert(wire::PARAM_MODEL_SHA256.into(), wire::str_param(self.graph.sha256()));
        req.parameters.insert(PARAM_INPUT_SHAPES.into(), wire::str_param(format_shapes(self.graph.input_shapes())));
        let mut bytes = 0;
        for spec in &self.boundary {
            let t = env.get(&spec.name).ok_or_else(|| format!("the head did not produce `{}`", spec.name))?;
            let (tensor, raw) =
                wire::encode_input_shared(&spec.name, spec.dtype, &spec.shape, shared_bytes(t), self.config.encode)
                    .map_err(|e| e.message)?;
            bytes += raw.len() as u64;
            req.inputs.push(tensor);
            req.raw_input_contents.push(raw);
        }
        Ok((req, bytes))
    }

    /// Sends the frame (its request `sent`, already encoded) and takes the answer, or completes
    /// it locally. Computing (a local tail, the checks) goes to the blocking pool.
    async fn finish(
        self: &Arc<Self>,
        frame: usize,
        inputs: TensorMap,
        env: TensorMap,
        sent: Option<Result<(ModelInferRequest, u64), String>>,
        t0: Instant,
        head_ms: f64,
    ) -> FrameOutput {
        let mut record = self.record(frame, head_ms);
        if self.config.cut == self.graph.last_cut() {
            record.total_ms = t0.elapsed().as_secs_f64() * 1e3;
            let outputs = self.model_outputs_of(&env);
            if self.config.check {
                let me = self.clone();
                let o = outputs.clone();
                record.check = tokio::task::spawn_blocking(move || me.check(&inputs, &o, None)).await.ok().flatten();
            }
            return FrameOutput { record, outputs };
        }
        record.codec = Some(self.config.encode.codec);
        let sent = sent.unwrap_or_else(|| self.request(frame, &env));
        let remote: Result<(TensorMap, crate::client::TailResponse, ModelInferRequest), String> = match sent {
            Err(e) => Err(e),
            Ok((req, bytes)) => {
                record.bytes_up = bytes;
                let endpoints = self.remote.as_ref().expect("a server for remote cuts");
                match endpoints.infer(&req, self.give_up_at(t0)).await {
                    Ok(answer) => {
                        record.attempts = answer.attempts.len();
                        record.endpoint = Some(answer.addr.clone());
                        // From the end of the first failed attempt to this answer.
                        if answer.attempts.len() > 1 {
                            let failed_ms = answer.attempts[0].ms;
                            let total: f64 = answer.attempts.iter().map(|a| a.ms).sum();
                            record.failover_ms = Some(total - failed_ms);
                        }
                        answer
                            .response
                            .outputs
                            .iter()
                            .map(|w| to_tensor(w).map(|t| (w.name.clone(), t)))
                            .collect::<Result<TensorMap, _>>()
                            .map_err(|e| e.message)
                            .map(|m| (m, answer.response, req))
                    }
                    Err(failed) => {
                        record.attempts = failed.attempts.len();
                        Err(failed.to_string())
                    }
                }
            }
        };
        let mut outputs = self.model_outputs_of(&env);
        match remote {
            Ok((tail, resp, req)) => {
                record.status = FrameStatus::Remote;
                record.rpc_ms = resp.rpc.as_secs_f64() * 1e3;
                record.queue_ms = resp.queue_ms;
                record.compute_ms = resp.compute_ms;
                record.batch = resp.batch;
                outputs.extend(tail);
                record.total_ms = t0.elapsed().as_secs_f64() * 1e3;
                if self.config.check {
                    let (me, o) = (self.clone(), outputs.clone());
                    record.check = tokio::task::spawn_blocking(move || me.check(&inputs, &o, Some((&req, &env))))
                        .await
                        .ok()
                        .flatten();
                }
            }
            Err(e) => {
                record.status = FrameStatus::LocalFallback;
                record.error = Some(e);
                // Degraded: the tail locally, or, when it would miss the deadline, the exits
                // the head already computed.
                if let Some(exits) = self.exit_instead_of_tail(t0, &env) {
                    record.error = Some(format!(
                        "{}; answered at early exit {} (the local tail would miss the deadline)",
                        record.error.take().unwrap_or_default(),
                        exits.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                    record.total_ms = t0.elapsed().as_secs_f64() * 1e3;
                    if self.config.check {
                        let (me, o) = (self.clone(), exits.clone());
                        record.check =
                            tokio::task::spawn_blocking(move || me.check(&inputs, &o, None)).await.ok().flatten();
                    }
                    return FrameOutput { record, outputs: exits };
                }
                let me = self.clone();
                let local = tokio::task::spawn_blocking(move || {
                    let t = Instant::now();
                    let r = me.tail_locally(&env);
                    (r, t.elapsed())
                })
                .await;
                match local {
                    Ok((Ok(tail), took)) => {
                        self.note_local_tail(took.as_secs_f64() * 1e3);
                        outputs.extend(tail)
                    }
                    Ok((Err(e), _)) => {
                        record.error =
                            Some(format!("{}; the local tail failed too: {e}", record.error.take().unwrap_or_default()))
                    }
                    Err(e) => {
                        record.error =
                            Some(format!("{}; the local tail failed too: {e}", record.error.take().unwrap_or_default()))
                    }
                }
                record.total_ms = t0.elapsed().as_secs_f64() * 1e3;
                if self.config.check {
                    let (me, o) = (self.clone(), outputs.clone());
                    record.check =
                        tokio::task::spawn_blocking(move || me.check(&inputs, &o, None)).await.ok().flatten();
                }
            }
        }
        FrameOutput { record, outputs }
    }

    /// Compares `outputs` with the whole model and, for a sent frame, with the tail computed
    /// locally on the decoded request.
    fn check(
        &self,
        inputs: &TensorMap,
        outputs: &TensorMap,
        sent: Option<(&ModelInferRequest, &TensorMap)>,
    ) -> Option<FrameCheck> {
        let whole = self.engine.whole(&self.graph).and_then(|p| self.engine.run(&p, inputs)).ok()?;
        let worst = |a: &TensorMap, b: &TensorMap| {
            b.iter()
                .map(|(n, t)| a.get(n).map(|x| relative_error(x, t).unwrap_or(f64::INFINITY)).unwrap_or(f64::INFINITY))
                .fold(0.0, f64::max)
        };
        // An early-exited frame answers with what the head computed: compare those outputs.
        let whole: TensorMap = if outputs.len() < self.model_outputs.len() && sent.is_none() {
            whole.into_iter().filter(|(n, _)| outputs.contains_key(n)).collect()
        } else {
            whole
        };
        let vs_whole = worst(outputs, &whole);
        let (mut vs_local_tail, mut bound_ratio) = (0.0, 0.0);
        if let Some((req, env)) = sent {
            let limits = Limits::default();
            let decoded = wire::decode_inputs(req, &limits).ok()?;
            let mut dec_env = TensorMap::new();
            for w in &decoded {
                let t = to_tensor(w).ok()?;
                // Each element's decoding error against the codec's bound (f32 tensors are the
                // ones a codec touches; encoding is deterministic, so re-encoding gives the
                // parameters that were sent).
                if let Some(orig) = env.get(&w.name)
                    && orig.datum_type() == cleave_engine::DatumType::F32
                    && self.config.encode.codec.has_error_bound()
                {
                    let x: Vec<f32> = orig.to_plain_array_view::<f32>().ok()?.iter().copied().collect();
                    let enc = cleave_codec::encode(&x, &w.shape, self.config.encode).ok()?;
                    let y = t.to_plain_array_view::<f32>().ok()?;
                    for (a, b) in x.iter().zip(y.iter()) {
                        let (bound, err) = (cleave_codec::error_bound(&enc, *a), (a - b).abs());
                        let r = if err == 0.0 {
                            0.0
                        } else if bound > 0.0 {
                            err / bound
                        } else {
                            f32::INFINITY
                        };
                        bound_ratio = f64::max(bound_ratio, r as f64);
                    }
                }
                dec_env.insert(w.name.clone(), t);
            }
            let tail = self.tail_locally(&dec_env).ok()?;
            vs_local_tail = worst(outputs, &tail);
        }
        Some(FrameCheck { vs_local_tail, vs_whole, boundary_error_vs_bound: bound_ratio })
    }
}

/// Runs the head up to `cut` over `inputs`. With an exit policy (and the cut right after its
/// exit) it runs up to the exit first and stops there when the exit's confidence reaches the
/// threshold. Returns everything computed and the exit's confidence, when there is a policy.
pub(crate) fn run_head(
    engine: &Engine,
    graph: &ModelGraph,
    inputs: &TensorMap,
    cut: usize,
    exit: Option<(&ExitPolicy, usize)>,
) -> Result<(TensorMap, Option<f64>), String> {
    let mut env = inputs.clone();
    let run = |env: &mut TensorMap, from: usize, to: usize| -> Result<(), String> {
        if from < to {
            let part = engine.part(graph, from, to).map_err(|e| e.to_string())?;
            let out = engine.run(&part, env).map_err(|e| e.to_string())?;
            env.extend(out);
        }
        Ok(())
    };
    let Some((policy, e)) = exit else {
        run(&mut env, 0, cut)?;
        return Ok((env, None));
    };
    run(&mut env, 0, e)?;
    let t = env.get(&policy.name).ok_or_else(|| format!("the head did not produce exit `{}`", policy.name))?;
    let scores: Vec<f32> = t
        .cast_to::<f32>()
        .map_err(|e| e.to_string())?
        .to_plain_array_view::<f32>()
        .map_err(|e| e.to_string())?
        .iter()
        .copied()
        .collect();
    let confidence = cleave_cost::confidence(&scores);
    if confidence < policy.threshold {
        run(&mut env, e, cut)?;
    }
    Ok((env, Some(confidence)))
}

/// 64 random bits in hex (std's hasher keys are random per process and per instance).
pub(crate) fn session_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Summary statistics of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub frames: usize,
    pub remote: usize,
    pub local_fallback: usize,
    pub device_only: usize,
    pub early_exit: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub mean_ms: f64,
    pub bytes_up: u64,
    pub wall_s: f64,
    pub fps: f64,
}

impl RunSummary {
    pub fn of(frames: &[FrameOutput], wall: Duration) -> RunSummary {
        Self::from_frames(frames.iter().map(|f| (f.record.status, f.record.total_ms, f.record.bytes_up)), wall)
    }

    /// The summary of an adaptive device's frames.
    pub fn of_adaptive(records: &[crate::adaptive::AdaptiveRecord], wall: Duration) -> RunSummary {
        Self::from_frames(records.iter().map(|r| (r.status, r.total_ms, r.bytes_up)), wall)
    }

    /// From each frame's (status, latency ms, payload bytes sent).
    fn from_frames(frames: impl Iterator<Item = (FrameStatus, f64, u64)>, wall: Duration) -> RunSummary {
        let frames: Vec<(FrameStatus, f64, u64)> = frames.collect();
        let mut totals: Vec<f64> = frames.iter().map(|f| f.1).collect();
        totals.sort_by(f64::total_cmp);
        let q = |p: f64| {
            if totals.is_empty() {
                return 0.0;
            }
            let rank = ((p * totals.len() as f64).ceil() as usize).clamp(1, totals.len());
            totals[rank - 1]
        };
        let count = |s: FrameStatus| frames.iter().filter(|f| f.0 == s).count();
        RunSummary {
            frames: frames.len(),
            remote: count(FrameStatus::Remote),
            local_fallback: count(FrameStatus::LocalFallback),
            device_only: count(FrameStatus::Device),
            early_exit: count(FrameStatus::EarlyExit),
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            mean_ms: if totals.is_empty() { 0.0 } else { totals.iter().sum::<f64>() / totals.len() as f64 },
            bytes_up: frames.iter().map(|f| f.2).sum(),
            wall_s: wall.as_secs_f64(),
            fps: if wall.as_secs_f64() > 0.0 { frames.len() as f64 / wall.as_secs_f64() } else { 0.0 },
        }
    }
}
