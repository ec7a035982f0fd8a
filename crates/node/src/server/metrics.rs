//! Prometheus metrics with Triton's names and meanings, so existing dashboards work:
//! `nv_inference_request_success` / `_failure` (requests), `nv_inference_count` (inferences, one
//! per request in a batch), `nv_inference_exec_count` (batched executions),
//! `nv_inference_request_duration_us`, `nv_inference_queue_duration_us`,
//! `nv_inference_compute_infer_duration_us` (cumulative microseconds) and
//! `nv_inference_pending_request_count` (gauge), labelled by model and version.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// Why a request failed, as Triton's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Refused: bad request, overloaded, shutting down.
    Rejected,
    /// Its deadline passed.
    Canceled,
    /// The engine failed.
    Backend,
}

/// Counters of one model.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    pub success: AtomicU64,
    pub rejected: AtomicU64,
    pub canceled: AtomicU64,
    pub backend: AtomicU64,
    pub inference_count: AtomicU64,
    pub exec_count: AtomicU64,
    pub request_duration_us: AtomicU64,
    pub queue_duration_us: AtomicU64,
    pub compute_infer_duration_us: AtomicU64,
    pub pending: AtomicI64,
    /// Retried requests answered from an earlier copy's result, without computing.
    pub deduplicated: AtomicU64,
}

impl ModelMetrics {
    pub fn fail(&self, why: Failure) {
        match why {
            Failure::Rejected => &self.rejected,
            Failure::Canceled => &self.canceled,
            Failure::Backend => &self.backend,
        }
        .fetch_add(1, Relaxed);
    }
}

/// All models' metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    models: RwLock<BTreeMap<String, Arc<ModelMetrics>>>,
}

impl Metrics {
    /// The counters of `model` (created on first use).
    pub fn model(&self, model: &str) -> Arc<ModelMetrics> {
        if let Some(m) = self.models.read().expect("metrics lock").get(model) {
            return m.clone();
        }
        self.models.write().expect("metrics lock").entry(model.to_owned()).or_default().clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let models = self.models.read().expect("metrics lock");
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&ModelMetrics) -> Vec<(String, i64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (model, m) in models.iter() {
                for (extra, v) in value(m) {
                    let _ = writeln!(out, "{name}{{model=\"{}\",version=\"1\"{extra}}} {v}", escape(model));
                }
            }
        };
        let one = |f: fn(&ModelMetrics) -> u64| move |m: &ModelMetrics| vec![(String::new(), f(m) as i64)];
        family(
            "nv_inference_request_success",
            "counter",
            "Number of successful inference requests, all batch sizes",
            &one(|m| m.success.load(Relaxed)),
        );
        family(
            "nv_inference_request_failure",
            "counter",
            "Number of failed inference requests, all batch sizes",
            &|m| {
                vec![
                    (",reason=\"REJECTED\"".into(), m.rejected.load(Relaxed) as i64),
                    (",reason=\"CANCELED\"".into(), m.canceled.load(Relaxed) as i64),
                    (",reason=\"BACKEND\"".into(), m.backend.load(Relaxed) as i64),
                ]
            },
        );
        family(
            "nv_inference_count",
            "counter",
            "Number of inferences performed (one per request in a batch)",
            &one(|m| m.inference_count.load(Relaxed)),
        );
        family(
            "nv_inference_exec_count",
            "counter",
            "Number of model executions performed (batches)",
            &one(|m| m.exec_count.load(Relaxed)),
        );
        family(
            "nv_inference_request_duration_us",
            "counter",
            "Cumulative inference request duration in microseconds",
            &one(|m| m.request_duration_us.load(Relaxed)),
        );
        family(
            "nv_inference_queue_duration_us",
            "counter",
            "Cumulative inference queuing duration in microseconds",
            &one(|m| m.queue_duration_us.load(Relaxed)),
        );
        family(
            "nv_inference_compute_infer_duration_us",
            "counter",
            "Cumulative compute inference duration in microseconds",
            &one(|m| m.compute_infer_duration_us.load(Relaxed)),
        );
        family(
            "nv_inference_pending_request_count",
            "gauge",
            "Instantaneous number of pending requests awaiting execution",
            &|m| vec![(String::new(), m.pending.load(Relaxed))],
        );
        family(
            "cleave_request_deduplicated",
            "counter",
            "Retried requests (same id) answered with an earlier copy's result, without computing",
            &one(|m| m.deduplicated.load(Relaxed)),
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_triton_names() {
        let m = Metrics::default();
        m.model("resnet").success.fetch_add(3, Relaxed);
        m.model("resnet").fail(Failure::Rejected);
        let text = m.render();
        assert!(text.contains("nv_inference_request_success{model=\"resnet\",version=\"1\"} 3"), "{text}");
        assert!(
            text.contains("nv_inference_request_failure{model=\"resnet\",version=\"1\",reason=\"REJECTED\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE nv_inference_pending_request_count gauge"));
    }
}
