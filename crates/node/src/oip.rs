//! Offloading to a foreign Open Inference Protocol server: Triton, KServe, MLServer, or
//! anything else that serves the tails `cleave export` writes.
//!
//! Such a server knows nothing of cleave: the request names the exported tail model and
//! carries the boundary tensors in standard datatypes only (FP32, FP16, or UINT8 with its
//! scale and zero point as two more inputs), with no `cleave.*` parameters. Its queue and
//! compute times are read from the response parameters when the server reports them
//! (`cleave.queue_ms` / `cleave.compute_ms`, or `queue_ms` / `compute_ms`; numbers or numeric
//! strings); otherwise they are inferred from timing: the server's time is the call's time
//! less the base RTT (median ServerLive), the compute time the smallest server time seen so
//! far, and the queue time the rest.
//!
//! When no server answers before a frame's deadline, the device computes the tail itself and
//! marks the frame `LocalFallback`, as [`crate::Device`] does.
//!
//! The device computes from the original model ([`LocalModel::Whole`]), or from an export's
//! parts alone ([`LocalModel::Parts`]): its head file, and its fp32 tail as the fallback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_codec::{Codec, EncodeOptions, Encoded, Quant};
use cleave_engine::{Engine, TensorMap, relative_error};
use cleave_graph::export::{ExportInput, InputRole, QuantParams, WireDType};
use cleave_graph::{DType, ModelGraph, TensorSpec};
use cleave_proto::inference::model_infer_request::InferInputTensor;
use cleave_proto::inference::{InferParameter, ModelInferRequest, infer_parameter};
use cleave_proto::wire;
use serde::Serialize;

use crate::convert::{shared_bytes, to_tensor};
use crate::device::{FrameOutput, FrameRecord, FrameStatus, run_head, session_id};
use crate::failover::Endpoints;

/// Where a frame's queue and compute times came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerTimes {
    /// The server put them in its response.
    Reported,
    /// Inferred from the call's time and the base RTT.
    Inferred,
}

/// What an [`OipDevice`] computes itself.
#[derive(Clone)]
pub enum LocalModel {
    /// The original model: the head is its part up to the cut, the fallback its part after.
    Whole(Arc<ModelGraph>),
    /// An export's parts alone.
    Parts(ExportParts),
}

/// The device's side of an export, checked by the caller against its manifest.
#[derive(Clone)]
pub struct ExportParts {
    /// The head (the model up to the cut); none at cut 0, where the model's inputs are sent.
    pub head: Option<Arc<ModelGraph>>,
    /// The fp32 tail (the boundary tensors as f32 under their ONNX names), run as the local
    /// fallback; none when the export has no fp32 tail at this cut.
    pub fp32_tail: Option<Arc<ModelGraph>>,
    /// The model's inputs and outputs.
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl LocalModel {
    /// The model's inputs.
    pub fn inputs(&self) -> Vec<TensorSpec> {
        match self {
            LocalModel::Whole(g) => g.inputs(),
            LocalModel::Parts(p) => p.inputs.clone(),
        }
    }

    /// The model's outputs.
    pub fn outputs(&self) -> Vec<TensorSpec> {
        match self {
            LocalModel::Whole(g) => g.outputs(),
            LocalModel::Parts(p) => p.outputs.clone(),
        }
    }
}

/// How an [`OipDevice`] runs.
#[derive(Debug, Clone)]
pub struct OipConfig {
    /// The exported tail's model name on the server.
    pub model_name: String,
    pub cut: usize,
    pub dtype: WireDType,
    /// The tail's inputs, as `cleave export` wrote them (or [`ModelGraph::export_tail`] gives).
    pub inputs: Vec<ExportInput>,
    /// Scale and zero point of a uint8 tail (per frame as inputs, or fixed).
    pub quant: Option<QuantParams>,
    /// Each frame's deadline, from its start; the device keeps its own tail's time in reserve.
    pub timeout: Duration,
    /// Also compare with local inference.
    pub check: bool,
}

/// Differences from local inference (with `check`), as relative errors (largest absolute
/// difference over the reference's largest magnitude).
#[derive(Debug, Clone, Serialize)]
pub struct OipCheck {
    /// The answer vs the whole model run locally.
    pub vs_whole: f64,
    /// The answer vs the tail run locally on exactly what was sent (dequantized): the
    /// server's computation, checked.
    pub vs_local_tail: f64,
    /// Largest boundary error (sent and dequantized vs computed) as a fraction of the codec's
    /// bound; 0 for fp32.
    pub boundary_error_vs_bound: f64,
}

/// One frame.
#[derive(Debug, Clone)]
pub struct OipFrame {
    pub output: FrameOutput,
    /// With a remote answer: where its queue and compute times came from.
    pub server_times: Option<ServerTimes>,
    pub check: Option<OipCheck>,
}

/// A device offloading one cut of a model to a foreign OIP server.
pub struct OipDevice {
    engine: Arc<Engine>,
    local: LocalModel,
    outputs: Vec<TensorSpec>,
    endpoints: Arc<Endpoints>,
    config: OipConfig,
    session: String,
    base_rtt_ms: f64,
    /// Smallest server time (call time less RTT) seen so far, for inferred times.
    min_server_ms: Mutex<Option<f64>>,
    local_tail_ms: Mutex<Option<f64>>,
}

impl OipDevice {
    /// `base_rtt` is the round trip of a call that computes nothing (e.g. the median of a few
    /// ServerLive calls), used to infer server times the server does not report.
    pub fn new(
        engine: Arc<Engine>,
        local: LocalModel,
        endpoints: Arc<Endpoints>,
        config: OipConfig,
        base_rtt: Duration,
    ) -> Result<OipDevice, String> {
        // What crosses the cut, by name: (shape, dtype).
        let boundary: Vec<(String, Vec<usize>, DType)> = match &local {
            LocalModel::Whole(graph) => {
                graph.check_cut(config.cut).map_err(|e| e.to_string())?;
                if config.cut >= graph.last_cut() {
                    return Err(format!("cut {} leaves nothing to offload", config.cut));
                }
                let b = graph.cut(config.cut).map_err(|e| e.to_string())?.tensors;
                b.into_iter().map(|t| (t.name, t.shape, t.dtype)).collect()
            }
            // What the head makes, or the model's inputs.
            LocalModel::Parts(p) => p
                .inputs
                .iter()
                .chain(p.head.as_ref().map(|h| h.outputs()).unwrap_or_default().iter())
                .map(|t| (t.name.clone(), t.shape.clone(), t.dtype))
                .collect(),
        };
        for i in config.inputs.iter().filter(|i| i.role == InputRole::Tensor) {
            let (_, shape, dtype) = boundary.iter().find(|b| b.0 == i.of).ok_or_else(|| {
                format!("the tail's input `{}` does not cross cut {} of this model", i.of, config.cut)
            })?;
            if *shape != i.spec.shape || *dtype != i.source_dtype {
                return Err(format!(
                    "the tail takes `{}` as {} {:?}, but this model makes it {dtype} {shape:?} (another --shape?)",
                    i.of, i.source_dtype, i.spec.shape
                ));
            }
        }
        if let LocalModel::Parts(ExportParts { fp32_tail: Some(t), .. }) = &local {
            for i in t.inputs() {
                if !boundary.iter().any(|(n, s, d)| *n == i.name && *s == i.shape && *d == i.dtype) {
                    return Err(format!(
                        "the fp32 tail takes `{}` as {} {:?}, which the head does not make",
                        i.name, i.dtype, i.shape
                    ));
                }
            }
        }
        if config.dtype == WireDType::Uint8 && config.quant.is_none() {
            return Err("a uint8 tail needs its quantization parameters".into());
        }
        Ok(OipDevice {
            engine,
            outputs: local.outputs(),
            local,
            endpoints,
            config,
            session: session_id(),
            base_rtt_ms: base_rtt.as_secs_f64() * 1e3,
            min_server_ms: Mutex::new(None),
            local_tail_ms: Mutex::new(None),
        })
    }

    /// Runs one frame: the head here, the tail on the server (or here, when no server answers
    /// in time). Compute goes to the blocking pool.
    pub async fn frame(self: &Arc<Self>, k: usize, inputs: TensorMap) -> OipFrame {
        let t0 = Instant::now();
        let me = self.clone();
        let inputs2 = inputs.clone();
        let head = tokio::task::spawn_blocking(move || {
            let env = me.head(&inputs2)?;
            let req = me.request(k, &env)?;
            Ok::<_, String>((env, req))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let head_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut record = FrameRecord {
            frame: k,
            cut: self.config.cut,
            codec: Some(match self.config.dtype {
                WireDType::Fp32 => Codec::Fp32,
                WireDType::Fp16 => Codec::Fp16,
                WireDType::Uint8 => Codec::Int8,
            }),
            bytes_up: 0,
            head_ms,
            rpc_ms: 0.0,
            queue_ms: None,
            compute_ms: None,
            batch: None,
            total_ms: 0.0,
            status: FrameStatus::Remote,
            exit_confidence: None,
            error: None,
            check: None,
            endpoint: None,
            attempts: 0,
            failover_ms: None,
        };
        let (env, (req, sent)) = match head {
            Ok(x) => x,
            Err(e) => {
                record.status = FrameStatus::LocalFallback;
                record.error = Some(e);
                record.total_ms = t0.elapsed().as_secs_f64() * 1e3;
                return OipFrame {
                    output: FrameOutput { record, outputs: TensorMap::new() },
                    server_times: None,
                    check: None,
                };
            }
        };
        record.bytes_up = req.raw_input_contents.iter().map(|b| b.len() as u64).sum();
        let reserve = self.local_tail_ms.lock().expect("lock").map_or(self.config.timeout / 4, |ms| {
            Duration::from_secs_f64((ms * 1.5 + 2.0) / 1e3).min(self.config.timeout)
        });
        let give_up = t0 + self.config.timeout - reserve;
        let mut outputs: TensorMap =
            self.outputs.iter().filter_map(|o| env.get(&o.name).map(|t| (o.name.clone(), t.clone()))).collect();
        let mut server_times = None;
        let remote = match self.endpoints.infer(&req, give_up).await {
            Ok(answer) => {
                record.attempts = answer.attempts.len();
                record.endpoint = Some(answer.addr.clone());
                let r = answer.response;
                record.rpc_ms = r.rpc.as_secs_f64() * 1e3;
                let tail: Result<TensorMap, String> = r
                    .outputs
                    .iter()
                    .map(|w| to_tensor(w).map(|t| (w.name.clone(), t)).map_err(|e| e.message))
                    .collect();
                match (r.queue_ms, r.compute_ms) {
                    (q, Some(c)) => {
                        record.queue_ms = q;
                        record.compute_ms = Some(c);
                        server_times = Some(ServerTimes::Reported);
                    }
                    (Some(q), None) => {
                        record.queue_ms = Some(q);
                        server_times = Some(ServerTimes::Reported);
                    }
                    (None, None) => {
                        let server_ms = (record.rpc_ms - self.base_rtt_ms).max(0.0);
                        let mut min = self.min_server_ms.lock().expect("lock");
                        let m = min.map_or(server_ms, |m: f64| m.min(server_ms));
                        *min = Some(m);
                        record.compute_ms = Some(m);
                        record.queue_ms = Some(server_ms - m);
                        server_times = Some(ServerTimes::Inferred);
                    }
                }
                tail
            }
            Err(failed) => {
                record.attempts = failed.attempts.len();
                Err(failed.to_string())
            }
        };
        match remote {
            Ok(tail) => {
                let missing: Vec<String> = self
                    .outputs
                    .iter()
                    .map(|o| o.name.clone())
                    .filter(|n| !tail.contains_key(n) && !outputs.contains_key(n))
                    .collect();
                if missing.is_empty() {
                    outputs.extend(tail);
                } else {
                    record.error = Some(format!("the server's answer lacks output(s) {}", missing.join(", ")));
                }
            }
            Err(e) => record.error = Some(e),
        }
        if record.error.is_some() {
            record.status = FrameStatus::LocalFallback;
            server_times = None;
            let me = self.clone();
            let env2 = env.clone();
            let local = tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                me.tail_locally(&env2).map(|o| (o, t.elapsed()))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match local {
                Ok((tail, took)) => {
                    self.note_local_tail(took.as_secs_f64() * 1e3);
                    outputs.extend(tail);
                }
                Err(e) => {
                    record.error =
                        Some(format!("{}; the local tail failed too: {e}", record.error.take().unwrap_or_default()))
                }
            }
        }
        record.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        let check = if self.config.check && record.status == FrameStatus::Remote {
            let me = self.clone();
            let o = outputs.clone();
            tokio::task::spawn_blocking(move || me.check(&inputs, &o, &env, &sent)).await.ok().and_then(|r| r.ok())
        } else {
            None
        };
        OipFrame { output: FrameOutput { record, outputs }, server_times, check }
    }

    /// Times the local tail once (after compiling it), so deadlines keep enough in reserve.
    pub fn measure_local_tail(&self, inputs: &TensorMap) -> Result<f64, String> {
        let env = self.head(inputs)?;
        self.tail_locally(&env)?;
        let t = Instant::now();
        self.tail_locally(&env)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        self.note_local_tail(ms);
        Ok(ms)
    }

    fn note_local_tail(&self, ms: f64) {
        let mut m = self.local_tail_ms.lock().expect("lock");
        *m = Some(m.map_or(ms, |old: f64| old.max(ms)));
    }

    /// The model's inputs and what the head computes from them.
    fn head(&self, inputs: &TensorMap) -> Result<TensorMap, String> {
        match &self.local {
            LocalModel::Whole(graph) => Ok(run_head(&self.engine, graph, inputs, self.config.cut, None)?.0),
            LocalModel::Parts(p) => {
                let mut env = inputs.clone();
                if let Some(head) = &p.head {
                    let part = self.engine.whole(head).map_err(|e| e.to_string())?;
                    env.extend(self.engine.run(&part, inputs).map_err(|e| e.to_string())?);
                }
                Ok(env)
            }
        }
    }

    fn tail_locally(&self, env: &TensorMap) -> Result<TensorMap, String> {
        let part = match &self.local {
            LocalModel::Whole(graph) => self.engine.part(graph, self.config.cut, graph.last_cut()),
            LocalModel::Parts(p) => {
                let tail = p.fp32_tail.as_ref().ok_or_else(|| {
                    format!(
                        "the export has no fp32 tail at cut {} to run locally (export with --dtypes including fp32)",
                        self.config.cut
                    )
                })?;
                self.engine.whole(tail)
            }
        }
        .map_err(|e| e.to_string())?;
        self.engine.run(&part, env).map_err(|e| e.to_string())
    }

    /// The request for frame `k`: every tail input in its standard datatype, and, per f32
    /// boundary tensor, what the server will compute from (for the check).
    pub fn request(&self, k: usize, env: &TensorMap) -> Result<(ModelInferRequest, Sent), String> {
        let mut req = ModelInferRequest {
            model_name: self.config.model_name.clone(),
            id: format!("{}-{k}", self.session),
            ..Default::default()
        };
        let mut sent = Sent::default();
        let mut quants: HashMap<String, (f32, u8)> = HashMap::new();
        for input in &self.config.inputs {
            let (data, shape, dtype) = match input.role {
                InputRole::Tensor => {
                    let t = env.get(&input.of).ok_or_else(|| format!("the head did not produce `{}`", input.of))?;
                    let raw = shared_bytes(t);
                    if input.source_dtype != DType::F32 || input.spec.dtype == DType::F32 {
                        (raw, input.spec.shape.clone(), input.spec.dtype)
                    } else {
                        let values: Vec<f32> =
                            raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                        let enc = self.encode(&values, &input.spec.shape)?;
                        if let Some(Quant::PerTensor { scale, zero_point }) = enc.quant {
                            quants.insert(input.of.clone(), (scale, zero_point));
                        }
                        let payload = Bytes::from(enc.payload.clone());
                        sent.encoded.push((input.of.clone(), values, enc));
                        (payload, input.spec.shape.clone(), input.spec.dtype)
                    }
                }
                InputRole::Scale | InputRole::ZeroPoint => {
                    let (s, z) = *quants.get(&input.of).ok_or_else(|| {
                        format!("no quantization parameters for `{}` (inputs out of order?)", input.of)
                    })?;
                    let data = if input.role == InputRole::Scale { s.to_le_bytes().to_vec() } else { vec![z] };
                    (Bytes::from(data), vec![1], input.spec.dtype)
                }
            };
            req.inputs.push(InferInputTensor {
                name: input.spec.name.clone(),
                datatype: wire::datatype_name(dtype).to_owned(),
                shape: shape.iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            });
            req.raw_input_contents.push(data);
        }
        Ok((req, sent))
    }

    /// An f32 tensor in the tail's wire datatype.
    fn encode(&self, values: &[f32], shape: &[usize]) -> Result<Encoded, String> {
        match (self.config.dtype, self.config.quant) {
            (WireDType::Uint8, Some(QuantParams::Const { scale, zero_point })) => {
                if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                    return Err(format!("element {i} is not finite"));
                }
                let inv = 1.0 / scale;
                let payload = values
                    .iter()
                    .map(|&x| ((x * inv).round_ties_even() + zero_point as f32).clamp(0.0, 255.0) as u8)
                    .collect();
                Ok(Encoded {
                    codec: Codec::Int8,
                    shape: shape.to_vec(),
                    quant: Some(Quant::PerTensor { scale, zero_point }),
                    lz4: false,
                    payload,
                })
            }
            (d, _) => {
                let codec = match d {
                    WireDType::Fp32 => Codec::Fp32,
                    WireDType::Fp16 => Codec::Fp16,
                    WireDType::Uint8 => Codec::Int8,
                };
                cleave_codec::encode(values, shape, EncodeOptions { codec, per_channel: false, lz4: false })
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn check(&self, inputs: &TensorMap, outputs: &TensorMap, env: &TensorMap, sent: &Sent) -> Result<OipCheck, String> {
        // The whole model locally; from an export, its head and fp32 tail (a split computes
        // what the whole model does).
        let whole = match &self.local {
            LocalModel::Whole(graph) => {
                self.engine.whole(graph).and_then(|p| self.engine.run(&p, inputs)).map_err(|e| e.to_string())?
            }
            LocalModel::Parts(_) => {
                let mut env = self.head(inputs)?;
                env.extend(self.tail_locally(&env)?);
                self.outputs.iter().filter_map(|o| env.get(&o.name).map(|t| (o.name.clone(), t.clone()))).collect()
            }
        };
        let worst = |got: &TensorMap, reference: &TensorMap| {
            reference
                .iter()
                .map(|(n, t)| got.get(n).map_or(f64::INFINITY, |x| relative_error(x, t).unwrap_or(f64::INFINITY)))
                .fold(0.0, f64::max)
        };
        let vs_whole = worst(outputs, &whole);
        // The tail locally on exactly what the server computed from.
        let mut dec = env.clone();
        let mut bound_ratio: f64 = 0.0;
        for (name, values, enc) in &sent.encoded {
            let decoded = cleave_codec::decode(enc).map_err(|e| e.to_string())?;
            for (x, y) in values.iter().zip(&decoded) {
                let (err, bound) = ((x - y).abs(), cleave_codec::error_bound(enc, *x));
                let r = if err == 0.0 {
                    0.0
                } else if bound > 0.0 {
                    err / bound
                } else {
                    f32::INFINITY
                };
                bound_ratio = bound_ratio.max(r as f64);
            }
            let t = cleave_engine::Tensor::from_shape(&enc.shape, &decoded).map_err(|e| e.to_string())?;
            dec.insert(name.clone(), Arc::new(t));
        }
        let tail = self.tail_locally(&dec)?;
        let vs_local_tail = worst(outputs, &tail);
        Ok(OipCheck { vs_whole, vs_local_tail, boundary_error_vs_bound: bound_ratio })
    }
}

/// What a request's f32 boundary tensors were before and after encoding.
#[derive(Default)]
pub struct Sent {
    encoded: Vec<(String, Vec<f32>, Encoded)>,
}

/// A server time in milliseconds from response parameters: the first of `keys` present, as a
/// double, an integer or a numeric string (MLServer's gRPC layer drops float parameters).
pub fn reported_ms(params: &HashMap<String, InferParameter>, keys: &[&str]) -> Option<f64> {
    use infer_parameter::ParameterChoice as P;
    keys.iter()
        .find_map(|k| match params.get(*k)?.parameter_choice.as_ref()? {
            P::DoubleParam(v) => Some(*v),
            P::Int64Param(v) => Some(*v as f64),
            P::Uint64Param(v) => Some(*v as f64),
            P::StringParam(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        })
        .filter(|v| v.is_finite() && *v >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_times_are_numbers_or_numeric_strings() {
        let mut p = HashMap::new();
        assert_eq!(reported_ms(&p, &["cleave.compute_ms", "compute_ms"]), None);
        p.insert("compute_ms".to_owned(), wire::str_param(" 1.5 "));
        assert_eq!(reported_ms(&p, &["cleave.compute_ms", "compute_ms"]), Some(1.5));
        p.insert("cleave.compute_ms".to_owned(), wire::f64_param(2.0));
        assert_eq!(reported_ms(&p, &["cleave.compute_ms", "compute_ms"]), Some(2.0), "cleave's name first");
        p.insert("queue_ms".to_owned(), wire::int_param(3));
        assert_eq!(reported_ms(&p, &["queue_ms"]), Some(3.0));
        for bad in ["", "x", "-1", "NaN", "inf"] {
            p.insert("queue_ms".to_owned(), wire::str_param(bad));
            assert_eq!(reported_ms(&p, &["queue_ms"]), None, "`{bad}` is no time");
        }
    }
}
