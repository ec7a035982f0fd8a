//! # cleave-engine
//!
//! Runs a whole model, or any [`Part`] of one, with tract. Plans are optimized once and cached per
//! (model, cut range) in a bounded LRU cache, so a device or server that switches cuts pays the
//! compilation cost once per cut. Runs use one thread, or several through tract-linalg's
//! multithreaded matrix products.
//!
//! Tensors are exchanged by ONNX name in a [`TensorMap`]; running a split model is running its
//! parts in order over one map, each part reading its inputs from it and adding its outputs.
//!
//! ## Backends
//!
//! [`Engine::new`] runs parts with tract, always available and pure Rust. With the cargo feature
//! `ort` (off by default), [`Engine::with_backend`]`(config, `[`Backend::Ort`]`)` runs the same
//! parts with onnxruntime instead: each part is exported as standalone ONNX bytes, committed to
//! an onnxruntime session with `config.threads` intra-op threads and cached in the same LRU, and
//! its outputs come back as tract tensors, so callers see the same [`TensorMap`] either way. The
//! onnxruntime library is loaded at run time; see [`onnxruntime`] for how it is found. Without
//! the feature, asking for [`Backend::Ort`] is an [`EngineError::OrtNotBuilt`] error.
//!
//! ## Stopping a run
//! [`Engine::run_cancellable`] checks a [`Cancel`] flag before each operator of a tract plan, so a
//! run whose result is no longer wanted (a device racing the server with its own tail, once the
//! server has answered) stops at the next operator boundary instead of computing to the end.
//! onnxruntime runs are only checked before they start. The same flag can also hold a run
//! before its next operator for a while ([`Cancel::pause_until`]): the device pauses its tail
//! while the server's answer is on its way, so the two do not share the device's CPU.
//!
//! ```no_run
//! use cleave_engine::{Backend, Engine, EngineConfig};
//! # fn main() -> Result<(), cleave_engine::EngineError> {
//! let tract = Engine::new(EngineConfig::default());
//! let ort = Engine::with_backend(EngineConfig { threads: 2, ..Default::default() }, Backend::Ort)?;
//! assert_eq!((tract.name(), ort.name()), ("tract", "onnxruntime"));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cleave_graph::{GraphError, ModelGraph, Part, TensorSpec, part_bounds};
use thiserror::Error;

pub mod onnxruntime;
pub mod profile;
use tract_onnx::prelude::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;

pub use tract_onnx::prelude::{DatumType, Tensor};

/// The engine and version cleave runs parts with by default (the tract crates are pinned to it).
/// [`Engine::version`] names the backend an engine actually uses.
pub const ENGINE: &str = "tract 0.23.9";

/// The inference engine that runs parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// tract: pure Rust, always built.
    #[default]
    Tract,
    /// onnxruntime, loaded at run time; needs the cargo feature `ort` (see [`onnxruntime`]).
    Ort,
}

impl Backend {
    /// Every backend, in display order.
    pub const ALL: [Backend; 2] = [Backend::Tract, Backend::Ort];

    /// The engine's name: `tract` or `onnxruntime`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::Ort => "onnxruntime",
        }
    }

    /// Whether this build can run the backend (`Ort` needs the `ort` feature; the library itself
    /// may still be missing at run time).
    pub fn is_built(self) -> bool {
        match self {
            Backend::Tract => true,
            Backend::Ort => cfg!(feature = "ort"),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    /// `tract`, or `ort` / `onnxruntime` (case-insensitive).
    fn from_str(s: &str) -> std::result::Result<Backend, String> {
        match s.to_ascii_lowercase().as_str() {
            "tract" => Ok(Backend::Tract),
            "ort" | "onnxruntime" => Ok(Backend::Ort),
            _ => Err(format!("unknown engine `{s}` (expected `tract` or `ort`)")),
        }
    }
}

/// Tensors by ONNX name. Shared (`Arc`) so that passing a tensor from one part to the next, or
/// to the network, never copies it.
pub type TensorMap = BTreeMap<String, Arc<Tensor>>;

/// Errors from compiling or running a part.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("tract could not compile {what}: {msg}")]
    Compile { what: String, msg: String },
    #[error("missing input `{name}` (the model reads: {expected})")]
    MissingInput { name: String, expected: String },
    #[error("input `{name}` is {got}, but the model expects {expected}")]
    InputMismatch { name: String, expected: String, got: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("the engine panicked: {0}")]
    Panic(String),
    /// The run was stopped through its [`Cancel`] flag.
    #[error("the run was cancelled")]
    Cancelled,
    #[error(
        "cleave was built without the `ort` feature; rebuild with `cargo build --release -p cleave-cli --features ort`"
    )]
    OrtNotBuilt,
    #[error("onnxruntime is unavailable: {0}")]
    OrtUnavailable(String),
    #[error("onnxruntime could not compile {what}: {msg}")]
    OrtCompile { what: String, msg: String },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A flag that stops a run started with [`Engine::run_cancellable`] before its next operator,
/// or holds it there for a while ([`Cancel::pause_until`]). Clones share the flag; setting it
/// from any thread is enough.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    operators: AtomicUsize,
    /// The pause, and the runs waiting in it.
    gate: Mutex<Gate>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    /// Until when the next operator waits (`None`: it does not).
    until: Option<Instant>,
    /// Since when each run now waiting in the pause has waited.
    waiting: Vec<Instant>,
    /// How long runs have waited in pauses that ended, in all.
    waited: Duration,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.0.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks every run holding this flag to stop (a paused run stops at once).
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
        self.wake_all();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// Holds runs holding this flag before their next operator until `until` (or until
    /// [`Cancel::resume`] or [`Cancel::cancel`]). The operator in progress finishes. The pause
    /// always ends by itself: a run is never held past `until`, whoever forgets to resume it.
    pub fn pause_until(&self, until: Instant) {
        self.gate().until = Some(until);
    }

    /// Ends a pause early.
    pub fn resume(&self) {
        self.gate().until = None;
        self.wake_all();
    }

    /// Whether a pause is in force now.
    pub fn is_paused(&self) -> bool {
        self.gate().until.is_some_and(|t| Instant::now() < t)
    }

    fn wake_all(&self) {
        // Taking the lock orders this wake-up after a waiter's check (no lost wake-up).
        let _held = self.gate();
        self.0.wake.notify_all();
    }

    /// Operators that runs holding this flag have started (tract plans only): how far a
    /// cancelled run got.
    pub fn operators(&self) -> usize {
        self.0.operators.load(Ordering::Relaxed)
    }

    /// How long runs holding this flag have waited in pauses so far (summed over runs), a
    /// wait still in progress included: a run's wall time less this is what it computed.
    pub fn paused(&self) -> Duration {
        let gate = self.gate();
        let now = Instant::now();
        gate.waited + gate.waiting.iter().map(|&from| now.saturating_duration_since(from)).sum::<Duration>()
    }

    /// Whether the next operator may start (`false` once cancelled), after waiting while a
    /// pause is in force; counts the operator when it may start, and the wait.
    fn admit(&self) -> bool {
        let mut gate = self.gate();
        let mut since = None;
        let admitted = loop {
            if self.is_cancelled() {
                break false;
            }
            let now = Instant::now();
            match gate.until {
                Some(t) if now < t => {
                    if since.is_none() {
                        // Listed while it waits, so that `paused` counts a wait in progress.
                        since = Some(now);
                        gate.waiting.push(now);
                    }
                    gate = self.0.wake.wait_timeout(gate, t - now).unwrap_or_else(|e| e.into_inner()).0;
                }
                _ => break true,
            }
        };
        if let Some(from) = since {
            if let Some(i) = gate.waiting.iter().position(|&t| t == from) {
                gate.waiting.swap_remove(i);
            }
            gate.waited += from.elapsed();
        }
        drop(gate);
        if admitted {
            self.0.operators.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Threads per inference (1 = single-threaded).
    pub threads: usize,
    /// How many compiled parts to keep.
    pub cache_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { threads: 1, cache_capacity: 64 }
    }
}

/// A part compiled for one backend: an optimized tract plan, or an onnxruntime session.
#[derive(Debug)]
pub struct CompiledPart {
    pub from_cut: usize,
    pub to_cut: usize,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// How long loading and optimizing took.
    pub compile_time: Duration,
    plan: Plan,
}

impl CompiledPart {
    /// The backend this part was compiled for (and runs with).
    pub fn backend(&self) -> Backend {
        match self.plan {
            Plan::Tract(_) => Backend::Tract,
            #[cfg(feature = "ort")]
            Plan::Ort(_) => Backend::Ort,
        }
    }
}

#[derive(Debug)]
enum Plan {
    Tract(Arc<TypedRunnableModel>),
    /// `ort` sessions run one inference at a time (`Session::run` takes `&mut self`).
    #[cfg(feature = "ort")]
    Ort(Mutex<onnxruntime::Session>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PartKey {
    model: String,
    from: usize,
    to: usize,
}

/// The executor: compiles parts, caches them, runs them.
pub struct Engine {
    config: EngineConfig,
    backend: Backend,
    executor: Executor,
    cache: Mutex<lru::LruCache<PartKey, Arc<CompiledPart>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// The result of running a split model.
#[derive(Debug)]
pub struct SplitRun {
    /// The model's outputs.
    pub outputs: TensorMap,
    /// Every tensor crossing each cut, in cut order.
    pub boundaries: Vec<TensorMap>,
    /// Wall time of each part.
    pub part_times: Vec<Duration>,
}

impl Engine {
    /// A tract engine with the given configuration.
    pub fn new(config: EngineConfig) -> Engine {
        Engine::build(config, Backend::Tract)
    }

    /// An engine running parts with `backend`.
    ///
    /// [`Backend::Ort`] fails with [`EngineError::OrtNotBuilt`] in a build without the `ort`
    /// feature, and with [`EngineError::OrtUnavailable`] when no onnxruntime library is loaded and
    /// none can be loaded from `ORT_DYLIB_PATH` (see [`onnxruntime`]).
    pub fn with_backend(config: EngineConfig, backend: Backend) -> Result<Engine> {
        match backend {
            Backend::Tract => {}
            #[cfg(feature = "ort")]
            Backend::Ort => {
                onnxruntime::environment()?;
            }
            #[cfg(not(feature = "ort"))]
            Backend::Ort => return Err(EngineError::OrtNotBuilt),
        }
        Ok(Engine::build(config, backend))
    }

    fn build(config: EngineConfig, backend: Backend) -> Engine {
        let threads = config.threads.max(1);
        // onnxruntime sessions have their own intra-op threads: no tract pool for them.
        let executor = if threads == 1 || backend != Backend::Tract {
            Executor::SingleThread
        } else {
            Executor::multithread(threads)
        };
        let cap = NonZeroUsize::new(config.cache_capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Engine {
            config: EngineConfig { threads, ..config },
            backend,
            executor,
            cache: Mutex::new(lru::LruCache::new(cap)),
        }
    }

    /// The engine's name: `tract` or `onnxruntime`.
    pub fn name(&self) -> &str {
        self.backend.name()
    }

    /// The backend that compiles and runs parts.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The engine and its version, as recorded in profiles: `tract 0.23.9`, `onnxruntime 1.32.0`.
    pub fn version(&self) -> String {
        match self.backend {
            Backend::Tract => ENGINE.to_owned(),
            Backend::Ort => {
                format!("onnxruntime {}", onnxruntime::loaded().map(|r| r.version).unwrap_or_else(|| "unknown".into()))
            }
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Compiles a part for this engine's backend (not cached).
    pub fn compile(&self, part: &Part) -> Result<CompiledPart> {
        let t0 = Instant::now();
        let plan = match self.backend {
            Backend::Tract => Plan::Tract(compile_tract(part)?),
            #[cfg(feature = "ort")]
            Backend::Ort => Plan::Ort(Mutex::new(onnxruntime::compile(part, self.config.threads)?)),
            #[cfg(not(feature = "ort"))]
            Backend::Ort => return Err(EngineError::OrtNotBuilt),
        };
        Ok(CompiledPart {
            from_cut: part.from_cut,
            to_cut: part.to_cut,
            inputs: part.inputs.clone(),
            outputs: part.outputs.clone(),
            compile_time: t0.elapsed(),
            plan,
        })
    }

    /// The compiled part of `graph` between two cuts, from the cache or compiled now.
    pub fn part(&self, graph: &ModelGraph, from: usize, to: usize) -> Result<Arc<CompiledPart>> {
        let key = PartKey { model: graph.id(), from, to };
        if let Some(p) = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
            return Ok(p.clone());
        }
        let compiled = Arc::new(self.compile(&graph.part(from, to)?)?);
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).put(key, compiled.clone());
        Ok(compiled)
    }

    /// Tells the cache that `part`, compiled from the model whose [`ModelGraph::id`] is
    /// `model_id`, is in use: a cache hit for its key, or, if the cache evicted it meanwhile, puts
    /// it back. Never compiles: a lock and a lookup, cheap enough for an async thread.
    pub fn keep(&self, model_id: &str, part: &Arc<CompiledPart>) {
        let key = PartKey { model: model_id.to_owned(), from: part.from_cut, to: part.to_cut };
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.get(&key).is_none() {
            cache.put(key, part.clone());
        }
    }

    /// The whole model, compiled (cached).
    pub fn whole(&self, graph: &ModelGraph) -> Result<Arc<CompiledPart>> {
        self.part(graph, 0, graph.last_cut())
    }

    /// Runs a compiled part with the backend it was compiled for. Reads its inputs from `inputs`
    /// by name (extra entries are ignored) and returns its outputs by name.
    pub fn run(&self, part: &CompiledPart, inputs: &TensorMap) -> Result<TensorMap> {
        self.run_with(part, inputs, None)
    }

    /// [`Engine::run`] that stops with [`EngineError::Cancelled`] once `cancel` is set: a tract
    /// plan checks it before every operator, an onnxruntime session only before it starts.
    pub fn run_cancellable(&self, part: &CompiledPart, inputs: &TensorMap, cancel: &Cancel) -> Result<TensorMap> {
        self.run_with(part, inputs, Some(cancel))
    }

    fn run_with(&self, part: &CompiledPart, inputs: &TensorMap, cancel: Option<&Cancel>) -> Result<TensorMap> {
        if cancel.is_some_and(Cancel::is_cancelled) {
            return Err(EngineError::Cancelled);
        }
        let mut args: Vec<&Arc<Tensor>> = Vec::with_capacity(part.inputs.len());
        for spec in &part.inputs {
            let t = inputs.get(&spec.name).ok_or_else(|| EngineError::MissingInput {
                name: spec.name.clone(),
                expected: part.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            })?;
            check_input(spec, t)?;
            args.push(t);
        }
        match &part.plan {
            Plan::Tract(plan) => {
                let args: TVec<TValue> = args.into_iter().map(|t| t.clone().into_tvalue()).collect();
                let plan = plan.clone();
                let outs = catch(|| {
                    multithread_tract_scope(self.executor.clone(), || match cancel {
                        None => plan.run(args),
                        Some(cancel) => plan.spawn()?.run_plan_with_eval(args, |ctx, state, node, input| {
                            if !cancel.admit() {
                                return Err(TractError::msg("cancelled"));
                            }
                            tract_onnx::tract_core::plan::eval(ctx, state, node, input)
                        }),
                    })
                    .map_err(|e| match cancel {
                        Some(c) if c.is_cancelled() => EngineError::Cancelled,
                        _ => EngineError::Run(format!("{e:#}")),
                    })
                })?;
                Ok(part.outputs.iter().zip(outs).map(|(s, v)| (s.name.clone(), v.into_arc_tensor())).collect())
            }
            #[cfg(feature = "ort")]
            Plan::Ort(session) => {
                let args: Vec<(&TensorSpec, &Tensor)> =
                    part.inputs.iter().zip(args.into_iter().map(|t| &**t)).collect();
                let outs = onnxruntime::run(session, &args, &part.outputs)?;
                Ok(part.outputs.iter().zip(outs).map(|(s, t)| (s.name.clone(), Arc::new(t))).collect())
            }
        }
    }

    /// Runs `graph` split at `cuts` (empty: the whole model), part after part.
    pub fn run_split(&self, graph: &ModelGraph, cuts: &[usize], inputs: &TensorMap) -> Result<SplitRun> {
        if !cuts.is_empty() {
            graph.check_split(cuts)?;
        }
        let mut env = inputs.clone();
        let mut outputs = TensorMap::new();
        let mut boundaries = vec![];
        let mut part_times = vec![];
        let model_outputs: Vec<String> = graph.outputs().into_iter().map(|s| s.name).collect();
        for (i, (from, to)) in part_bounds(cuts, graph.last_cut()).into_iter().enumerate() {
            let part = self.part(graph, from, to)?;
            let t0 = Instant::now();
            let produced = self.run(&part, &env)?;
            part_times.push(t0.elapsed());
            for (name, t) in produced {
                if model_outputs.contains(&name) {
                    outputs.insert(name.clone(), t.clone());
                }
                env.insert(name, t);
            }
            if i < cuts.len() {
                let frontier = graph.cut(to)?.tensors;
                boundaries.push(
                    frontier.iter().filter_map(|s| env.get(&s.name).map(|t| (s.name.clone(), t.clone()))).collect(),
                );
            }
        }
        Ok(SplitRun { outputs, boundaries, part_times })
    }
}

/// Checks a tensor against the spec a part declares.
pub fn check_input(spec: &TensorSpec, t: &Tensor) -> Result<()> {
    let dt_ok = cleave_graph::DType::from_datum_type(t.datum_type()) == Some(spec.dtype);
    if !dt_ok || t.shape() != spec.shape.as_slice() {
        return Err(EngineError::InputMismatch {
            name: spec.name.clone(),
            expected: format!("{} {:?}", spec.dtype, spec.shape),
            got: format!(
                "{} {:?}",
                cleave_graph::DType::from_datum_type(t.datum_type())
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| format!("{:?}", t.datum_type())),
                t.shape()
            ),
        });
    }
    Ok(())
}

/// Loads a part into tract and optimizes it into a runnable plan.
fn compile_tract(part: &Part) -> Result<Arc<TypedRunnableModel>> {
    let what = format!("part {}..{}", part.from_cut, part.to_cut);
    catch(|| {
        let mut model = tract_onnx::onnx()
            .model_for_proto_model(&part.proto)
            .map_err(|e| EngineError::Compile { what: what.clone(), msg: format!("{e:#}") })?;
        for (ix, spec) in part.inputs.iter().enumerate() {
            model
                .set_input_fact(ix, InferenceFact::dt_shape(spec.dtype.datum_type(), spec.shape.clone()))
                .map_err(|e| EngineError::Compile { what: what.clone(), msg: format!("{e:#}") })?;
        }
        model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| EngineError::Compile { what: what.clone(), msg: format!("{e:#}") })
    })
}

/// Calls into an engine (tract or onnxruntime), turning a panic into [`EngineError::Panic`].
/// Marked as an engine call ([`cleave_graph::error::guard_engine`]) so that the binary's panic
/// hook stays quiet about panics reported as errors.
fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    cleave_graph::error::guard_engine(f).unwrap_or_else(|msg| Err(EngineError::Panic(msg)))
}

/// A seeded pseudo-random input for a spec: floats uniform in [-1, 1), integers in [0, 10).
pub fn random_input(spec: &TensorSpec, seed: u64) -> Arc<Tensor> {
    let mut rng = cleave_graph::build::SeededNormal::new(seed);
    let n: usize = spec.shape.iter().product();
    let t = match spec.dtype {
        cleave_graph::DType::F32 | cleave_graph::DType::F16 | cleave_graph::DType::Bf16 | cleave_graph::DType::F64 => {
            let v: Vec<f32> = (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
            Tensor::from_shape(&spec.shape, &v).expect("shape matches")
        }
        _ => {
            let v: Vec<i64> = (0..n).map(|_| (rng.uniform() * 10.0) as i64).collect();
            Tensor::from_shape(&spec.shape, &v).expect("shape matches")
        }
    };
    Arc::new(t.cast_to_dt(spec.dtype.datum_type()).map(|c| c.into_owned()).unwrap_or(t))
}

/// Largest absolute difference divided by the largest magnitude of `reference`.
pub fn relative_error(got: &Tensor, reference: &Tensor) -> Result<f64> {
    let a = got.cast_to::<f64>().map_err(|e| EngineError::Run(format!("{e:#}")))?;
    let b = reference.cast_to::<f64>().map_err(|e| EngineError::Run(format!("{e:#}")))?;
    if a.shape() != b.shape() {
        return Ok(f64::INFINITY);
    }
    let a = a.to_plain_array_view::<f64>().map_err(|e| EngineError::Run(format!("{e:#}")))?;
    let b = b.to_plain_array_view::<f64>().map_err(|e| EngineError::Run(format!("{e:#}")))?;
    let mut diff: f64 = 0.0;
    let mut scale: f64 = 0.0;
    for (x, y) in a.iter().zip(b.iter()) {
        if x.is_nan() != y.is_nan() {
            return Ok(f64::INFINITY);
        }
        diff = diff.max((x - y).abs());
        scale = scale.max(y.abs());
    }
    Ok(if scale == 0.0 { diff } else { diff / scale })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_back() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>(), Ok(b));
        }
        assert_eq!("ORT".parse::<Backend>(), Ok(Backend::Ort));
        assert!("tvm".parse::<Backend>().unwrap_err().contains("expected `tract` or `ort`"));
        assert_eq!(Backend::default(), Backend::Tract);
    }

    #[test]
    fn keep_puts_an_evicted_part_back_without_compiling() {
        use prost::Message;
        let bytes = cleave_graph::build::zoo::chain(7).encode_to_vec();
        let g = ModelGraph::from_bytes(&bytes, &cleave_graph::InputShapes::none()).unwrap();
        let e = Engine::new(EngineConfig { cache_capacity: 1, ..EngineConfig::default() });
        let a = e.part(&g, 0, 1).unwrap();
        let b = e.part(&g, 1, g.last_cut()).unwrap(); // evicts `a`
        e.keep(&g.id(), &a); // `a` is back, `b` evicted
        assert!(Arc::ptr_eq(&e.part(&g, 0, 1).unwrap(), &a), "the same compiled part, not a new one");
        e.keep(&g.id(), &a);
        assert!(Arc::ptr_eq(&e.part(&g, 0, 1).unwrap(), &a));
        assert!(!Arc::ptr_eq(&e.part(&g, 1, g.last_cut()).unwrap(), &b), "`b` had been evicted");
    }

    #[test]
    fn a_cancelled_run_stops_at_the_next_operator() {
        use prost::Message;
        let bytes = cleave_graph::build::zoo::tiny_resnet_at(3, 96).encode_to_vec();
        let g = ModelGraph::from_bytes(&bytes, &cleave_graph::InputShapes::none()).unwrap();
        let e = Engine::new(EngineConfig::default());
        let whole = e.whole(&g).unwrap();
        let inputs: TensorMap = g.inputs().iter().map(|s| (s.name.clone(), random_input(s, 1))).collect();

        // Not cancelled: the same answer as a plain run, every operator started.
        let full = Cancel::new();
        let expected = e.run(&whole, &inputs).unwrap();
        assert_eq!(e.run_cancellable(&whole, &inputs, &full).unwrap(), expected);
        let all = full.operators();
        assert!(all > 10, "{all} operators");

        // Cancelled before it starts: no operator runs.
        let early = Cancel::new();
        early.cancel();
        assert!(matches!(e.run_cancellable(&whole, &inputs, &early), Err(EngineError::Cancelled)));
        assert_eq!(early.operators(), 0);

        // Cancelled from another thread once 3 operators have started: at most the one in
        // progress finishes after that. (Tried again if the watcher thread only got to run after
        // the whole plan had, which a loaded machine can do.)
        for attempt in 0..5 {
            let mid = Cancel::new();
            let watcher = {
                let mid = mid.clone();
                std::thread::spawn(move || {
                    while mid.operators() < 3 {
                        std::hint::spin_loop();
                    }
                    mid.cancel();
                    mid.operators()
                })
            };
            let r = e.run_cancellable(&whole, &inputs, &mid);
            let at_cancel = watcher.join().unwrap();
            if at_cancel >= all && attempt < 4 {
                continue;
            }
            assert!(matches!(r, Err(EngineError::Cancelled)), "{r:?} (cancelled after {at_cancel} of {all})");
            assert!(mid.operators() <= at_cancel + 1, "{} started after cancelling at {at_cancel}", mid.operators());
            break;
        }
    }

    #[test]
    fn a_paused_run_waits_before_its_next_operator_until_resumed() {
        use prost::Message;
        let bytes = cleave_graph::build::zoo::chain(7).encode_to_vec();
        let g = ModelGraph::from_bytes(&bytes, &cleave_graph::InputShapes::none()).unwrap();
        let e = Arc::new(Engine::new(EngineConfig::default()));
        let whole = e.part(&g, 0, g.last_cut()).unwrap();
        let inputs: TensorMap = g.inputs().iter().map(|s| (s.name.clone(), random_input(s, 1))).collect();
        let expected = e.run(&whole, &inputs).unwrap();
        let run = |flag: &Cancel| {
            let (e, whole, inputs, flag) = (e.clone(), whole.clone(), inputs.clone(), flag.clone());
            std::thread::spawn(move || e.run_cancellable(&whole, &inputs, &flag))
        };
        let far = Instant::now() + Duration::from_secs(600);

        // Paused before it starts: no operator runs until resumed, then the same answer.
        let held = Cancel::new();
        held.pause_until(far);
        assert!(held.is_paused());
        let t = run(&held);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(held.operators(), 0, "an operator started during the pause");
        assert!(!t.is_finished());
        // The wait in progress counts already: a record read while the run still waits.
        let waiting = held.paused();
        assert!(waiting >= Duration::from_millis(100), "{waiting:?}");
        held.resume();
        assert!(!held.is_paused());
        assert_eq!(t.join().unwrap().unwrap(), expected);
        // The wait is counted, so that callers can tell it from compute: the 150 ms less the
        // run thread's start, which the sleep above does not wait for (it took 0.8 ms in a CI
        // run where this asked for the whole sleep).
        assert!(held.paused() >= Duration::from_millis(100), "{:?}", held.paused());

        // Cancelled while paused: it stops without running an operator.
        let stopped = Cancel::new();
        stopped.pause_until(far);
        let t = run(&stopped);
        std::thread::sleep(Duration::from_millis(20));
        stopped.cancel();
        assert!(matches!(t.join().unwrap(), Err(EngineError::Cancelled)));
        assert_eq!(stopped.operators(), 0);

        // Nobody resumes: the pause ends by itself.
        let lapsed = Cancel::new();
        let until = Instant::now() + Duration::from_millis(30);
        lapsed.pause_until(until);
        assert_eq!(run(&lapsed).join().unwrap().unwrap(), expected);
        assert!(Instant::now() >= until);
        assert!(!lapsed.is_paused());
        assert!(
            lapsed.paused() > Duration::from_millis(10) && lapsed.paused() < Duration::from_millis(500),
            "{:?}",
            lapsed.paused()
        );
    }

    #[test]
    fn tract_engine_is_named_tract() {
        let e = Engine::with_backend(EngineConfig::default(), Backend::Tract).unwrap();
        assert_eq!((e.name(), e.backend(), e.version()), ("tract", Backend::Tract, ENGINE.to_owned()));
    }

    #[cfg(not(feature = "ort"))]
    #[test]
    fn ort_without_the_feature_is_a_clear_error() {
        let err = Engine::with_backend(EngineConfig::default(), Backend::Ort).unwrap_err();
        assert!(matches!(err, EngineError::OrtNotBuilt));
        assert_eq!(
            err.to_string(),
            "cleave was built without the `ort` feature; rebuild with `cargo build --release -p cleave-cli --features ort`"
        );
        assert!(matches!(onnxruntime::load(std::path::Path::new("/nonexistent")), Err(EngineError::OrtNotBuilt)));
        assert!(!Backend::Ort.is_built());
    }
}
