//! Dynamic batching and bounded queueing of tail computations.
//!
//! Requests for the same (model, input shapes, cut) share a queue. A dispatcher per queue takes
//! the first waiting request, optionally gathers more for at most `max_queue_delay`, waits for a
//! free compute worker, adds whatever else arrived meanwhile (up to `max_batch`), and runs them
//! as one batch. With the default delay of 0 a lone request never waits for company, and under
//! load batches form by themselves. Batches
//! run at power-of-two sizes (padded with copies of the last request) so that each (cut, size)
//! is compiled once. A model batches only when its batch dimension is symbolic and the tensors
//! crossing the cut carry the batch on their first axis; otherwise requests run one by one.
//!
//! The number of waiting requests over all queues is bounded: past `max_queue` a request is
//! refused with `RESOURCE_EXHAUSTED` and a retry hint, so overload shows as refusals, not as
//! unbounded latency. A request whose deadline passes while it waits is answered
//! `DEADLINE_EXCEEDED` and never computed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cleave_engine::{CompiledPart, Engine, Tensor, TensorMap};
use cleave_graph::{InputShapes, ModelGraph};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::Status;

use super::metrics::{Failure, ModelMetrics};
use super::registry::ModelEntry;

/// A tail whose single-request compute time (moving average) is at most this runs on the thread
/// that received the request when it would not wait anyway (its queue is empty, a worker is
/// free, and no `max_queue_delay` applies): handing it to another thread and back costs more than
/// computing it. Longer tails run on the blocking pool, never on the async threads.
pub const INLINE_MAX_COMPUTE: Duration = Duration::from_micros(100);

/// Batching and queueing limits.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Largest batch (1 disables batching).
    pub max_batch: usize,
    /// Longest a request waits for others to batch with. With 0, a batch is what is already
    /// waiting when a worker is free: no added latency, and batches grow under load.
    pub max_queue_delay: Duration,
    /// Most requests waiting over all queues.
    pub max_queue: usize,
    /// Batches computed at once.
    pub workers: usize,
}

impl Default for BatchConfig {
    /// No batching: with tract on a CPU a batch of 8 computed each sample more slowly than 8
    /// single requests (release build, `cleave bench load --devices 64`: 0.68–0.92× the
    /// throughput with `max_batch` 8, see docs/FLEET.md), so it is opt-in, for engines and
    /// hardware where batches pay.
    fn default() -> Self {
        BatchConfig { max_batch: 1, max_queue_delay: Duration::ZERO, max_queue: 256, workers: 1 }
    }
}

/// What a job computes: the tail of `graph` from `cut`.
#[derive(Clone)]
pub struct Work {
    pub entry: Arc<ModelEntry>,
    pub graph: Arc<ModelGraph>,
    /// `graph.id()` (computed once: it hashes).
    pub graph_id: Arc<str>,
    pub cut: usize,
    /// The compiled tail: `graph` from `cut` to its last cut.
    pub part: Arc<CompiledPart>,
    pub metrics: Arc<ModelMetrics>,
}

/// The outcome of one request.
#[derive(Debug)]
pub struct JobResult {
    pub outputs: TensorMap,
    pub queue: Duration,
    pub compute: Duration,
    pub batch: usize,
}

/// One request waiting for compute.
pub struct Job {
    pub inputs: TensorMap,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Result<JobResult, Status>>,
}

type Key = (String, Arc<str>, usize);

/// One (model, shapes, cut) queue.
struct Queue {
    tx: mpsc::UnboundedSender<Job>,
    state: Arc<QueueState>,
}

/// What a queue's dispatcher and workers share: its length and what is known of its tail.
struct QueueState {
    /// Jobs given to this queue and not yet taken for compute.
    waiting: AtomicUsize,
    /// Whether its requests may be computed together (cleared when the tail turns out not to
    /// carry the batch on axis 0).
    batchable: AtomicBool,
    /// Moving average of one request's compute time in nanoseconds (0: not measured yet).
    compute_ns: AtomicU64,
}

impl QueueState {
    fn record_compute(&self, d: Duration) {
        let x = d.as_nanos().min(u64::MAX as u128) as u64;
        let old = self.compute_ns.load(Ordering::Relaxed);
        let new = if old == 0 { x } else { old - old / 8 + x / 8 };
        self.compute_ns.store(new.max(1), Ordering::Relaxed);
    }

    fn inline_ok(&self) -> bool {
        let ns = self.compute_ns.load(Ordering::Relaxed);
        ns != 0 && ns <= INLINE_MAX_COMPUTE.as_nanos() as u64
    }
}

/// The batcher: queues, dispatchers and the compute pool.
pub struct Batcher {
    engine: Arc<Engine>,
    config: BatchConfig,
    waiting: Arc<AtomicUsize>,
    queues: Mutex<HashMap<Key, Arc<Queue>>>,
    compute: Arc<Semaphore>,
}

/// Pads `jobs` to the next power of two.
fn batch_size(n: usize, max: usize) -> usize {
    n.next_power_of_two().min(max.max(1))
}

impl Batcher {
    pub fn new(engine: Arc<Engine>, config: BatchConfig) -> Batcher {
        let workers = config.workers.max(1);
        Batcher {
            engine,
            config,
            waiting: Arc::new(AtomicUsize::new(0)),
            queues: Mutex::new(HashMap::new()),
            compute: Arc::new(Semaphore::new(workers)),
        }
    }

    /// Requests waiting now, over all queues.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The queue of `work`, with its dispatcher started on first use.
    fn queue(&self, work: &Work) -> Arc<Queue> {
        let mut queues = self.queues.lock().expect("queues lock");
        if let Some(q) = queues.get(&(work.entry.name.clone(), work.graph_id.clone(), work.cut)) {
            return q.clone();
        }
        let q = self.spawn_dispatcher(work.clone());
        queues.insert((work.entry.name.clone(), work.graph_id.clone(), work.cut), q.clone());
        q
    }

    /// Computes `inputs` with `work`, answering when the result is there or `deadline` passed.
    ///
    /// A request that would not wait (its queue is empty, a compute worker is free, and it is
    /// not to wait for company) skips the queue: a short tail is computed right here, a longer
    /// one on the blocking pool. Otherwise it is queued for the dispatcher, which batches.
    pub async fn infer(&self, work: &Work, inputs: TensorMap, deadline: Option<Instant>) -> Result<JobResult, Status> {
        let queue = self.queue(work);
        let (tx, mut rx) = oneshot::channel();
        let job = Job { inputs, enqueued: Instant::now(), deadline, reply: tx };
        match self.free_worker(&queue.state) {
            Some(permit) if queue.state.inline_ok() => {
                run_jobs(&self.engine, work, &queue.state, &self.config, vec![job]);
                drop(permit);
                let result = rx.try_recv().map_err(|_| Status::internal("the computation gave no answer"))?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    work.metrics.fail(Failure::Canceled);
                    return Err(Status::deadline_exceeded("the request's deadline passed"));
                }
                return result;
            }
            Some(permit) => {
                let (engine, work2, config) = (self.engine.clone(), work.clone(), self.config.clone());
                let state = queue.state.clone();
                tokio::task::spawn_blocking(move || {
                    run_jobs(&engine, &work2, &state, &config, vec![job]);
                    drop(permit);
                });
            }
            None => self.enqueue(work, &queue, job)?,
        }
        match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), rx).await.map_err(|_| {
                work.metrics.fail(Failure::Canceled);
                Status::deadline_exceeded("the request's deadline passed")
            })?,
            None => rx.await,
        }
        .map_err(|_| Status::unavailable("the server dropped the request while shutting down"))?
    }

    /// A compute worker for a request that would not wait in `queue`, if there is one.
    fn free_worker(&self, queue: &QueueState) -> Option<OwnedSemaphorePermit> {
        if queue.batchable.load(Ordering::Relaxed) && !self.config.max_queue_delay.is_zero() {
            return None; // it is to wait for company
        }
        if queue.waiting.load(Ordering::Acquire) != 0 {
            return None; // others came first
        }
        self.compute.clone().try_acquire_owned().ok()
    }

    /// Queues a job, or refuses it when the queue is full.
    pub fn submit(&self, work: &Work, job: Job) -> Result<(), Status> {
        let queue = self.queue(work);
        self.enqueue(work, &queue, job)
    }

    fn enqueue(&self, work: &Work, queue: &Queue, job: Job) -> Result<(), Status> {
        // Reserve a place first so that concurrent submissions cannot overshoot the bound.
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        if before >= self.config.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            let mut status = Status::resource_exhausted(format!(
                "the server's queue is full ({} requests waiting); retry later",
                self.config.max_queue
            ));
            let hint = (self.config.max_queue_delay.as_millis() as u64).max(1) * 4;
            if let Ok(v) = hint.to_string().parse() {
                status.metadata_mut().insert("retry-after-ms", v);
            }
            if let Ok(v) = hint.to_string().parse() {
                status.metadata_mut().insert("grpc-retry-pushback-ms", v);
            }
            return Err(status);
        }
        work.metrics.pending.fetch_add(1, Ordering::Relaxed);
        queue.state.waiting.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(job)) = queue.tx.send(job) {
            queue.state.waiting.fetch_sub(1, Ordering::AcqRel);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            work.metrics.pending.fetch_sub(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(Status::unavailable("the server is shutting down")));
        }
        Ok(())
    }

    fn spawn_dispatcher(&self, work: Work) -> Arc<Queue> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let state = Arc::new(QueueState {
            waiting: AtomicUsize::new(0),
            batchable: AtomicBool::new(work.entry.batchable && self.config.max_batch > 1),
            compute_ns: AtomicU64::new(0),
        });
        let queue = Arc::new(Queue { tx, state: state.clone() });
        let engine = self.engine.clone();
        let config = self.config.clone();
        let waiting = self.waiting.clone();
        let compute = self.compute.clone();
        tokio::spawn(async move {
            let queue = state;
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                let batching = queue.batchable.load(Ordering::Relaxed);
                if batching && !config.max_queue_delay.is_zero() {
                    let until = tokio::time::Instant::now() + config.max_queue_delay;
                    while jobs.len() < config.max_batch {
                        match tokio::time::timeout_at(until, rx.recv()).await {
                            Ok(Some(j)) => jobs.push(j),
                            _ => break,
                        }
                    }
                }
                let Ok(permit) = compute.clone().acquire_owned().await else { break };
                // Whatever arrived while waiting for a worker joins the batch.
                while batching && jobs.len() < config.max_batch {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                waiting.fetch_sub(jobs.len(), Ordering::AcqRel);
                queue.waiting.fetch_sub(jobs.len(), Ordering::AcqRel);
                work.metrics.pending.fetch_sub(jobs.len() as i64, Ordering::Relaxed);
                let (engine, work, config, queue) = (engine.clone(), work.clone(), config.clone(), queue.clone());
                tokio::task::spawn_blocking(move || {
                    run_jobs(&engine, &work, &queue, &config, jobs);
                    drop(permit);
                });
            }
        });
        queue
    }
}

/// Runs a gathered set of jobs: expired ones are answered, the rest computed together.
fn run_jobs(engine: &Engine, work: &Work, queue: &QueueState, config: &BatchConfig, jobs: Vec<Job>) {
    let now = Instant::now();
    let mut live = Vec::with_capacity(jobs.len());
    for job in jobs {
        if job.deadline.is_some_and(|d| d <= now) {
            work.metrics.fail(Failure::Canceled);
            let _ = job.reply.send(Err(Status::deadline_exceeded("the request's deadline passed while it waited")));
        } else {
            live.push(job);
        }
    }
    if live.is_empty() {
        return;
    }
    if live.len() > 1 && queue.batchable.load(Ordering::Relaxed) {
        match run_batched(engine, work, config, &live) {
            Ok((outputs, compute)) => {
                let n = live.len();
                work.metrics.exec_count.fetch_add(1, Ordering::Relaxed);
                for (job, out) in live.into_iter().zip(outputs) {
                    let queue = now.saturating_duration_since(job.enqueued);
                    let _ = job.reply.send(Ok(JobResult { outputs: out, queue, compute, batch: n }));
                }
                return;
            }
            Err(e) => {
                // Not batchable at this cut after all: remember, and run one by one.
                tracing::info!("model {} cut {}: running unbatched ({e})", work.entry.name, work.cut);
                queue.batchable.store(false, Ordering::Relaxed);
            }
        }
    }
    for job in live {
        let start = Instant::now();
        let result = engine
            .run(&work.part, &job.inputs)
            .map_err(|e| {
                work.metrics.fail(Failure::Backend);
                Status::internal(format!("inference failed: {e}"))
            })
            .map(|outputs| {
                let compute = start.elapsed();
                queue.record_compute(compute);
                work.metrics.exec_count.fetch_add(1, Ordering::Relaxed);
                JobResult { outputs, queue: start.saturating_duration_since(job.enqueued), compute, batch: 1 }
            });
        let _ = job.reply.send(result);
    }
}

/// Concatenates the jobs' inputs along the batch axis, runs the tail compiled at the padded
/// batch size, and splits the outputs.
fn run_batched(
    engine: &Engine,
    work: &Work,
    config: &BatchConfig,
    jobs: &[Job],
) -> Result<(Vec<TensorMap>, Duration), String> {
    let n = jobs.len();
    let b = batch_size(n, config.max_batch);
    let shapes = InputShapes(work.graph.input_shapes().0.iter().map(|(k, v)| (k.clone(), with_batch(v, b))).collect());
    let big = work.entry.graph(&shapes).map_err(|e| e.message)?;
    if big.num_cuts() != work.graph.num_cuts() {
        return Err("the model's cuts differ at another batch size".into());
    }
    let part = engine.part(&big, work.cut, big.last_cut()).map_err(|e| e.to_string())?;
    let small = &work.part;
    // Every boundary tensor and output must carry the batch on axis 0.
    for (s, l) in small.inputs.iter().zip(&part.inputs).chain(small.outputs.iter().zip(&part.outputs)) {
        let carries_batch = !s.shape.is_empty()
            && s.shape.len() == l.shape.len()
            && l.shape[0] == s.shape[0] * b
            && l.shape[1..] == s.shape[1..];
        if s.name != l.name || !carries_batch {
            return Err(format!("tensor `{}` does not carry the batch on its first axis", s.name));
        }
    }
    let mut inputs = TensorMap::new();
    for spec in &small.inputs {
        let mut parts: Vec<Tensor> = jobs
            .iter()
            .map(|j| j.inputs.get(&spec.name).map(|t| (**t).clone()).ok_or_else(|| format!("missing `{}`", spec.name)))
            .collect::<Result<_, _>>()?;
        while parts.len() < b {
            parts.push(parts.last().expect("at least one job").clone());
        }
        let stacked = Tensor::stack_tensors(0, &parts).map_err(|e| e.to_string())?;
        inputs.insert(spec.name.clone(), Arc::new(stacked));
    }
    let start = Instant::now();
    let out = engine.run(&part, &inputs).map_err(|e| e.to_string())?;
    let compute = start.elapsed();
    let mut per_job = vec![TensorMap::new(); n];
    for spec in &small.outputs {
        let t = out.get(&spec.name).ok_or_else(|| format!("output `{}` missing", spec.name))?;
        let rows = spec.shape.first().copied().unwrap_or(1);
        for (i, m) in per_job.iter_mut().enumerate() {
            let slice = t.slice(0, i * rows, (i + 1) * rows).map_err(|e| e.to_string())?;
            m.insert(spec.name.clone(), Arc::new(slice));
        }
    }
    Ok((per_job, compute))
}

fn with_batch(shape: &[usize], b: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(first) = s.first_mut() {
        *first *= b;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_are_powers_of_two() {
        assert_eq!(batch_size(1, 8), 1);
        assert_eq!(batch_size(3, 8), 4);
        assert_eq!(batch_size(5, 8), 8);
        assert_eq!(batch_size(9, 8), 8);
    }
}
