//! Request-id de-duplication: a device that fails over re-sends the same request, with the same
//! id, and this server must neither compute it twice nor answer it twice with different results.
//!
//! A request takes part when it carries a non-empty `id` and `cleave.cut` (only cleave devices
//! send that; a foreign OIP client that reuses ids for whole-model requests is unaffected). The
//! key is (model, id). The first copy computes; a copy that arrives while it computes waits for
//! its answer; a copy that arrives later gets the stored answer. Either way the copy's response
//! carries `cleave.deduplicated = true` and nothing is computed again.
//!
//! Only successful answers are stored: after an error (overload, a passed deadline) a retry
//! computes afresh. Stored answers are bounded in number, bytes and age ([`DedupConfig`]), the
//! oldest going first; so a retry that comes later than that is computed again, which is safe
//! because inference has no side effect. Nothing survives a restart (the server is crash-only):
//! a restarted server computes a retried request once more, which is again the only copy it sees.
//!
//! Architecture invariant: a stored answer is returned only for the same key *and* the same
//! request fingerprint (cut and raw input lengths); an id reused for a different request is
//! refused with INVALID_ARGUMENT rather than answered with someone else's result.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cleave_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse, infer_parameter};
use cleave_proto::wire;
use tokio::sync::watch;
use tonic::Status;

/// Response parameter: this answer was not computed for this copy of the request.
pub const PARAM_DEDUPLICATED: &str = "cleave.deduplicated";

/// Bounds of the stored answers.
#[derive(Debug, Clone)]
pub struct DedupConfig {
    /// Answers kept at most this long.
    pub ttl: Duration,
    /// At most this many answers.
    pub max_entries: usize,
    /// At most this many bytes of raw output contents.
    pub max_bytes: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig { ttl: Duration::from_secs(60), max_entries: 8192, max_bytes: 64 << 20 }
    }
}

type Key = (String, String);
type Outcome = Option<Result<ModelInferResponse, Status>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fingerprint {
    cut: Option<i64>,
    raw_len: u64,
    inputs: usize,
}

fn fingerprint(req: &ModelInferRequest) -> Fingerprint {
    Fingerprint {
        cut: wire::get_int(&req.parameters, wire::PARAM_CUT).ok().flatten(),
        raw_len: req.raw_input_contents.iter().map(|r| r.len() as u64).sum(),
        inputs: req.inputs.len(),
    }
}

enum Slot {
    /// The first copy is computing; later copies wait on this.
    Pending(Fingerprint, watch::Receiver<Outcome>),
    Done(Fingerprint, ModelInferResponse, Instant),
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    /// Stored answers, oldest first (a key may appear once).
    order: VecDeque<(Key, Instant)>,
    bytes: usize,
}

/// The store of in-flight and recent answers.
pub struct Dedup {
    config: DedupConfig,
    inner: Mutex<Inner>,
}

/// What to do with an arriving request.
pub enum Admission<'a> {
    /// Not de-duplicated (no id, or not a cleave tail request): just compute.
    Untracked,
    /// The first copy: compute, then [`Ticket::finish`].
    First(Ticket<'a>),
    /// A copy: its answer.
    Copy(Result<ModelInferResponse, Status>),
}

/// The right (and duty) to compute a request and publish its answer. Dropping it unfinished
/// (the handler was cancelled) frees the key, so the next copy computes.
pub struct Ticket<'a> {
    dedup: &'a Dedup,
    key: Key,
    fp: Fingerprint,
    tx: Option<watch::Sender<Outcome>>,
}

fn bytes_of(r: &ModelInferResponse) -> usize {
    r.raw_output_contents.iter().map(|b| b.len()).sum::<usize>() + 256
}

fn mark_copy(mut r: ModelInferResponse) -> ModelInferResponse {
    r.parameters.insert(
        PARAM_DEDUPLICATED.into(),
        InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::BoolParam(true)) },
    );
    r
}

impl Dedup {
    pub fn new(config: DedupConfig) -> Dedup {
        Dedup { config, inner: Mutex::new(Inner::default()) }
    }

    /// Admits `req`: computes it, or waits for or returns the answer of an earlier copy.
    pub async fn admit(&self, req: &ModelInferRequest) -> Admission<'_> {
        if req.id.is_empty() || !req.parameters.contains_key(wire::PARAM_CUT) {
            return Admission::Untracked;
        }
        let key = (req.model_name.clone(), req.id.clone());
        let fp = fingerprint(req);
        loop {
            let mut rx = {
                let mut inner = self.inner.lock().expect("dedup lock");
                self.expire(&mut inner, Instant::now());
                match inner.slots.get(&key) {
                    None => {
                        let (tx, rx) = watch::channel(None);
                        inner.slots.insert(key.clone(), Slot::Pending(fp, rx));
                        return Admission::First(Ticket { dedup: self, key, fp, tx: Some(tx) });
                    }
                    Some(Slot::Done(f, _, _)) | Some(Slot::Pending(f, _)) if *f != fp => {
                        return Admission::Copy(Err(Status::invalid_argument(format!(
                            "request id `{}` was already used for a different request to model `{}`",
                            key.1, key.0
                        ))));
                    }
                    Some(Slot::Done(_, resp, _)) => return Admission::Copy(Ok(mark_copy(resp.clone()))),
                    Some(Slot::Pending(_, rx)) => rx.clone(),
                }
            };
            // Wait outside the lock. A closed channel means the first copy was cancelled before
            // it answered: look again (the key is free now, so this copy computes).
            if let Ok(v) = rx.wait_for(|o| o.is_some()).await
                && let Some(outcome) = v.clone()
            {
                return Admission::Copy(outcome.map(mark_copy));
            }
        }
    }

    /// Answers stored now (for tests and metrics).
    pub fn stored(&self) -> usize {
        self.inner.lock().expect("dedup lock").order.len()
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((_, at)) = inner.order.front() {
            let old = now.saturating_duration_since(*at) > self.config.ttl;
            let over = inner.order.len() > self.config.max_entries || inner.bytes > self.config.max_bytes;
            if !old && !over {
                break;
            }
            let (key, at) = inner.order.pop_front().expect("non-empty");
            // The slot may have been replaced since (freed after a cancel, then stored again):
            // remove it only if it is this stored answer.
            if let Some(Slot::Done(_, resp, t)) = inner.slots.get(&key)
                && *t == at
            {
                inner.bytes = inner.bytes.saturating_sub(bytes_of(resp));
                inner.slots.remove(&key);
            }
        }
    }
}

impl Ticket<'_> {
    /// Publishes the answer to waiting copies and, when it is a success, stores it.
    pub fn finish(mut self, outcome: &Result<ModelInferResponse, Status>) {
        let tx = self.tx.take().expect("finished once");
        let now = Instant::now();
        {
            let mut inner = self.dedup.inner.lock().expect("dedup lock");
            match outcome {
                Ok(resp) => {
                    inner.bytes += bytes_of(resp);
                    inner.slots.insert(self.key.clone(), Slot::Done(self.fp, resp.clone(), now));
                    inner.order.push_back((self.key.clone(), now));
                    self.dedup.expire(&mut inner, now);
                }
                Err(_) => {
                    inner.slots.remove(&self.key);
                }
            }
        }
        let _ = tx.send(Some(outcome.clone()));
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            let mut inner = self.dedup.inner.lock().expect("dedup lock");
            if matches!(inner.slots.get(&self.key), Some(Slot::Pending(..))) {
                inner.slots.remove(&self.key);
            }
            // Dropping the sender wakes the waiting copies with "closed".
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn req(id: &str, len: usize) -> ModelInferRequest {
        let mut r = ModelInferRequest { model_name: "m".into(), id: id.into(), ..Default::default() };
        r.parameters.insert(wire::PARAM_CUT.into(), wire::int_param(2));
        r.raw_input_contents.push(Bytes::from(vec![0u8; len]));
        r
    }

    fn answer(tag: &str) -> ModelInferResponse {
        ModelInferResponse { model_name: "m".into(), id: tag.into(), ..Default::default() }
    }

    fn is_copy(r: &ModelInferResponse) -> bool {
        r.parameters.contains_key(PARAM_DEDUPLICATED)
    }

    #[tokio::test]
    async fn a_later_copy_gets_the_stored_answer() {
        let d = Dedup::new(DedupConfig::default());
        let Admission::First(t) = d.admit(&req("a", 4)).await else { panic!("first") };
        t.finish(&Ok(answer("x")));
        let Admission::Copy(Ok(r)) = d.admit(&req("a", 4)).await else { panic!("copy") };
        assert_eq!(r.id, "x");
        assert!(is_copy(&r));
        assert!(matches!(d.admit(&req("b", 4)).await, Admission::First(_)));
    }

    #[tokio::test]
    async fn a_concurrent_copy_waits_for_the_first() {
        let d = std::sync::Arc::new(Dedup::new(DedupConfig::default()));
        let Admission::First(t) = d.admit(&req("a", 4)).await else { panic!("first") };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            match d2.admit(&req("a", 4)).await {
                Admission::Copy(r) => r.map(|r| r.id),
                _ => panic!("should wait for the first copy"),
            }
        });
        tokio::task::yield_now().await;
        t.finish(&Ok(answer("y")));
        assert_eq!(waiter.await.unwrap().unwrap(), "y");
    }

    #[tokio::test]
    async fn a_cancelled_first_copy_lets_the_next_compute() {
        let d = std::sync::Arc::new(Dedup::new(DedupConfig::default()));
        let Admission::First(t) = d.admit(&req("a", 4)).await else { panic!("first") };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { matches!(d2.admit(&req("a", 4)).await, Admission::First(_)) });
        tokio::task::yield_now().await;
        drop(t);
        assert!(waiter.await.unwrap(), "the waiting copy computes after the first was cancelled");
    }

    #[tokio::test]
    async fn errors_are_not_stored() {
        let d = Dedup::new(DedupConfig::default());
        let Admission::First(t) = d.admit(&req("a", 4)).await else { panic!("first") };
        t.finish(&Err(Status::resource_exhausted("busy")));
        assert!(matches!(d.admit(&req("a", 4)).await, Admission::First(_)));
    }

    #[tokio::test]
    async fn an_id_reused_for_another_request_is_refused() {
        let d = Dedup::new(DedupConfig::default());
        let Admission::First(t) = d.admit(&req("a", 4)).await else { panic!("first") };
        t.finish(&Ok(answer("x")));
        let Admission::Copy(Err(s)) = d.admit(&req("a", 5)).await else { panic!("refused") };
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn requests_without_id_or_cut_are_untracked() {
        let d = Dedup::new(DedupConfig::default());
        assert!(matches!(d.admit(&req("", 4)).await, Admission::Untracked));
        let mut r = req("a", 4);
        r.parameters.clear();
        assert!(matches!(d.admit(&r).await, Admission::Untracked));
    }

    #[tokio::test]
    async fn stored_answers_are_bounded() {
        let d = Dedup::new(DedupConfig { ttl: Duration::from_secs(60), max_entries: 3, max_bytes: 1 << 30 });
        for i in 0..10 {
            let Admission::First(t) = d.admit(&req(&format!("r{i}"), 4)).await else { panic!("first") };
            t.finish(&Ok(answer("x")));
        }
        assert_eq!(d.stored(), 3);
        // The oldest went first: r0 computes again, r9 does not.
        assert!(matches!(d.admit(&req("r9", 4)).await, Admission::Copy(Ok(_))));
        assert!(matches!(d.admit(&req("r0", 4)).await, Admission::First(_)));
    }
}
