//! An ordered list of servers a device may offload to, with health detection and failover.
//!
//! - **Detection.** Two signals mark an endpoint down: the outcome of every request (a transport
//!   error, UNAVAILABLE, a reset) and a health probe, ServerReady every
//!   [`FailoverConfig::probe_interval`] that must answer within
//!   [`FailoverConfig::probe_timeout`], twice in a row ([`FailoverConfig::probe_failures`]).
//!   Probes overlap (one waiting out its timeout does not hold back the next), so the
//!   confirming probe fails one interval after the first. The probe is what notices a link that
//!   went silent: a blackholed request never fails, it just never answers. So the time from a
//!   failure to its detection is at most about `2 × probe_interval + probe_timeout` (200 ms by
//!   default), and a
//!   request in flight on an endpoint that goes down is abandoned at that moment. One slow probe
//!   is not enough: on a loaded machine a healthy server's answer can take 100 ms, and the
//!   timeout stretches to 4× the smoothed probe round trip when that is longer.
//! - **Failover.** [`Endpoints::infer`] sends to the first healthy endpoint in the list's order
//!   (so traffic returns to the primary once it recovers). When an attempt fails it re-sends the
//!   *same* request, with the same id, to the next healthy endpoint; a server that sees the id
//!   again answers from the first copy instead of computing twice (`server::dedup`). The
//!   request holds the head's output, so a retry never recomputes the head.
//! - **Recovery.** A down endpoint is re-probed on a fresh connection with exponential backoff
//!   ([`FailoverConfig::backoff_min`] doubling to [`FailoverConfig::backoff_max`]) and is used
//!   again once it says it is ready.
//! - **Giving up.** Past the caller's give-up instant, or when no endpoint is healthy, `infer`
//!   fails and the device completes the frame itself (see [`crate::device`]).
//!
//! Every change of health is kept as a [`HealthEvent`], which `cleave bench chaos` uses to
//! measure detection times.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cleave_proto::inference::ModelInferRequest;
use serde::Serialize;
use tokio::sync::watch;

use crate::client::{ClientError, ClientSecurity, EdgeClient, TailResponse};

/// How endpoints are watched.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// Probe healthy endpoints (a down one is always re-probed). Without it only a request's
    /// failure marks an endpoint down: right for a single server behind a slow link, where a
    /// probe queued behind a large upload would time out and call a busy link dead.
    pub probe_healthy: bool,
    /// ServerReady to each healthy endpoint this often.
    pub probe_interval: Duration,
    /// A probe slower than this fails (stretched to 4× the smoothed probe round trip when that
    /// is longer, e.g. on a loaded machine or a long link).
    pub probe_timeout: Duration,
    /// Failed probes in a row that mark an endpoint down. Probes overlap, so detection takes
    /// about `probe_failures × probe_interval + probe_timeout`.
    pub probe_failures: u32,
    /// First wait before re-probing a down endpoint; doubles per failed probe…
    pub backoff_min: Duration,
    /// …up to this.
    pub backoff_max: Duration,
}

impl FailoverConfig {
    /// Health from request outcomes only, plus recovery probes ([`FailoverConfig::probe_healthy`]).
    pub fn outcomes_only() -> FailoverConfig {
        FailoverConfig { probe_healthy: false, ..FailoverConfig::default() }
    }
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            probe_healthy: true,
            probe_interval: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(100),
            probe_failures: 2,
            backoff_min: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// An endpoint went down or came back.
#[derive(Debug, Clone, Serialize)]
pub struct HealthEvent {
    pub endpoint: usize,
    pub addr: String,
    #[serde(skip)]
    pub at: Instant,
    pub up: bool,
    pub cause: String,
}

/// One try of one request.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub endpoint: usize,
    /// From sending to the answer or the failure.
    pub ms: f64,
    pub error: Option<String>,
}

/// A request answered by some endpoint.
#[derive(Debug, Clone)]
pub struct Answer {
    pub response: TailResponse,
    pub endpoint: usize,
    pub addr: String,
    /// Every try, the successful one last.
    pub attempts: Vec<Attempt>,
}

/// Why no endpoint answered.
#[derive(Debug, Clone)]
pub struct Failed {
    pub attempts: Vec<Attempt>,
    pub kind: FailKind,
    pub message: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind, self.attempts.last().and_then(|a| a.error.as_deref())) {
            (FailKind::Rejected, _) | (_, None) => f.write_str(&self.message),
            (_, Some(last)) if last == self.message => f.write_str(&self.message),
            (_, Some(last)) => write!(f, "{} (last error: {last})", self.message),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailKind {
    /// No endpoint was healthy (or all were overloaded).
    NoEndpoint,
    /// The give-up instant passed.
    Deadline,
    /// A server refused the request itself (a bad request, a model mismatch): retrying elsewhere
    /// would not help.
    Rejected,
}

struct Endpoint {
    addr: String,
    max_message_bytes: usize,
    security: ClientSecurity,
    client: Mutex<Option<EdgeClient>>,
    up: watch::Sender<bool>,
}

struct Shared {
    config: FailoverConfig,
    endpoints: Vec<Endpoint>,
    events: Mutex<Vec<HealthEvent>>,
    origin: Instant,
}

/// The servers a device offloads to, in order of preference.
pub struct Endpoints {
    shared: Arc<Shared>,
    probing: AtomicBool,
}

/// How an attempt's error counts.
enum Verdict {
    /// The endpoint is unusable: mark it down, try the next.
    Down,
    /// The endpoint is busy (RESOURCE_EXHAUSTED): try the next, leave it up.
    Busy,
    /// No time is left.
    Deadline,
    /// The request itself is refused.
    Rejected,
}

fn verdict(e: &ClientError) -> Verdict {
    use tonic::Code;
    match e {
        ClientError::Timeout(_) => Verdict::Deadline,
        ClientError::Connect { .. } | ClientError::Malformed(_) | ClientError::Security(_) => Verdict::Down,
        ClientError::Status { code, .. } => match code {
            Code::DeadlineExceeded => Verdict::Deadline,
            Code::ResourceExhausted => Verdict::Busy,
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::Aborted | Code::DataLoss => {
                Verdict::Down
            }
            _ => Verdict::Rejected,
        },
    }
}

impl Endpoints {
    /// Connects to every address (in parallel, each within `connect_timeout`). An endpoint that
    /// cannot be reached starts down and is probed like any other; it is an error only when
    /// none can be reached.
    pub async fn connect(
        addrs: &[String],
        max_message_bytes: usize,
        security: &ClientSecurity,
        config: FailoverConfig,
        connect_timeout: Duration,
    ) -> Result<Endpoints, ClientError> {
        Self::connect_some(addrs, max_message_bytes, security, config, connect_timeout, true).await
    }

    /// As [`Endpoints::connect`], but none reachable is no error: every endpoint starts down
    /// and is probed, for a device that can answer every frame itself until one comes up.
    pub async fn connect_or_start_down(
        addrs: &[String],
        max_message_bytes: usize,
        security: &ClientSecurity,
        config: FailoverConfig,
        connect_timeout: Duration,
    ) -> Result<Endpoints, ClientError> {
        Self::connect_some(addrs, max_message_bytes, security, config, connect_timeout, false).await
    }

    async fn connect_some(
        addrs: &[String],
        max_message_bytes: usize,
        security: &ClientSecurity,
        config: FailoverConfig,
        connect_timeout: Duration,
        need_one: bool,
    ) -> Result<Endpoints, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Connect { addr: String::new(), message: "no endpoint given".into() });
        }
        let mut tries = tokio::task::JoinSet::new();
        for (i, a) in addrs.iter().enumerate() {
            let (a, security) = (a.clone(), security.clone());
            tries.spawn(async move {
                let r =
                    tokio::time::timeout(connect_timeout, EdgeClient::connect_with(&a, max_message_bytes, &security))
                        .await
                        .unwrap_or_else(|_| {
                            Err(ClientError::Connect {
                                addr: a.clone(),
                                message: format!("no connection within {connect_timeout:?}"),
                            })
                        });
                (i, r)
            });
        }
        let mut results: Vec<Option<Result<EdgeClient, ClientError>>> = (0..addrs.len()).map(|_| None).collect();
        for (i, r) in tries.join_all().await {
            results[i] = Some(r);
        }
        let results: Vec<Result<EdgeClient, ClientError>> = results.into_iter().map(|r| r.expect("joined")).collect();
        if need_one && results.iter().all(|r| r.is_err()) {
            return Err(results.into_iter().find_map(|r| r.err()).expect("non-empty"));
        }
        let mut endpoints = vec![];
        let mut down = vec![];
        for (i, (addr, r)) in addrs.iter().zip(results).enumerate() {
            let (client, up) = match r {
                Ok(c) => (Some(c), true),
                Err(e) => {
                    tracing::warn!("endpoint {addr} is unreachable for now: {e}");
                    down.push((i, e.to_string()));
                    (None, false)
                }
            };
            endpoints.push(Endpoint {
                addr: addr.clone(),
                max_message_bytes,
                security: security.clone(),
                client: Mutex::new(client),
                up: watch::Sender::new(up),
            });
        }
        let me = Self::with(config, endpoints);
        for (i, cause) in down {
            me.shared.event(i, false, cause);
        }
        Ok(me)
    }

    /// Endpoints made of connections already open (all healthy).
    pub fn from_clients(clients: Vec<EdgeClient>, config: FailoverConfig) -> Endpoints {
        let endpoints = clients
            .into_iter()
            .map(|c| Endpoint {
                addr: c.addr().to_owned(),
                max_message_bytes: c.max_message_bytes(),
                security: c.security().clone(),
                client: Mutex::new(Some(c)),
                up: watch::Sender::new(true),
            })
            .collect();
        Self::with(config, endpoints)
    }

    fn with(config: FailoverConfig, endpoints: Vec<Endpoint>) -> Endpoints {
        Endpoints {
            shared: Arc::new(Shared { config, endpoints, events: Mutex::new(vec![]), origin: Instant::now() }),
            probing: AtomicBool::new(false),
        }
    }

    pub fn len(&self) -> usize {
        self.shared.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.endpoints.is_empty()
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.shared.endpoints[i].addr
    }

    pub fn is_up(&self, i: usize) -> bool {
        *self.shared.endpoints[i].up.borrow()
    }

    /// Every change of health so far.
    pub fn events(&self) -> Vec<HealthEvent> {
        self.shared.events.lock().expect("events lock").clone()
    }

    /// When these endpoints were created (the origin of event times in logs).
    pub fn origin(&self) -> Instant {
        self.shared.origin
    }

    /// The connection of the first healthy endpoint, for calls that need no failover (probes
    /// of bandwidth, warming).
    pub fn current(&self) -> Option<(usize, EdgeClient)> {
        self.start_probing();
        self.shared.endpoints.iter().enumerate().find_map(|(i, e)| {
            if !*e.up.borrow() {
                return None;
            }
            e.client.lock().expect("client lock").clone().map(|c| (i, c))
        })
    }

    /// Reports the failure of a call made outside [`Endpoints::infer`] on endpoint `i`.
    pub fn report(&self, i: usize, e: &ClientError) {
        if matches!(verdict(e), Verdict::Down) {
            self.shared.mark(i, false, format!("request failed: {e}"));
        }
    }

    /// Sends `req` to the first healthy endpoint, failing over to the next ones, until one
    /// answers or `give_up_at` passes.
    pub async fn infer(&self, req: &ModelInferRequest, give_up_at: Instant) -> Result<Answer, Failed> {
        self.start_probing();
        let n = self.shared.endpoints.len();
        let mut attempts: Vec<Attempt> = vec![];
        let mut busy = vec![false; n];
        let mut tries = vec![0u32; n];
        let mut last: Option<usize> = None;
        let fail = |attempts: Vec<Attempt>, kind, message: String| Err(Failed { attempts, kind, message });
        loop {
            let now = Instant::now();
            if now >= give_up_at {
                return fail(attempts, FailKind::Deadline, "no answer before the frame's deadline".into());
            }
            // After a failure, the next endpoint in order; otherwise the first healthy one.
            let start = last.map_or(0, |l| l + 1);
            let pick = (0..n).map(|k| (start + k) % n).find(|&i| {
                let e = &self.shared.endpoints[i];
                *e.up.borrow() && !busy[i] && tries[i] < 2 && e.client.lock().expect("client lock").is_some()
            });
            let Some(i) = pick else {
                let why = if busy.iter().any(|&b| b) {
                    "every healthy endpoint is overloaded"
                } else {
                    "no endpoint is healthy"
                };
                return fail(attempts, FailKind::NoEndpoint, why.into());
            };
            tries[i] += 1;
            last = Some(i);
            let e = &self.shared.endpoints[i];
            let mut client = e.client.lock().expect("client lock").clone().expect("checked above");
            let mut up = e.up.subscribe();
            let t0 = Instant::now();
            let budget = give_up_at.saturating_duration_since(t0);
            let outcome = tokio::select! {
                r = client.infer(req.clone(), Some(budget)) => r,
                _ = up.wait_for(|u| !*u) => Err(ClientError::Status {
                    code: tonic::Code::Unavailable,
                    message: "abandoned: the endpoint was marked down while the request was in flight".into(),
                }),
            };
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            match outcome {
                Ok(response) => {
                    attempts.push(Attempt { endpoint: i, ms, error: None });
                    return Ok(Answer { response, endpoint: i, addr: e.addr.clone(), attempts });
                }
                Err(err) => {
                    let message = format!("{}: {err}", e.addr);
                    attempts.push(Attempt { endpoint: i, ms, error: Some(message.clone()) });
                    match verdict(&err) {
                        Verdict::Down => self.shared.mark(i, false, format!("request failed: {err}")),
                        Verdict::Busy => busy[i] = true,
                        Verdict::Deadline if Instant::now() >= give_up_at => {
                            return fail(attempts, FailKind::Deadline, message);
                        }
                        // A server-side deadline with time left here: try elsewhere.
                        Verdict::Deadline => busy[i] = true,
                        Verdict::Rejected => return fail(attempts, FailKind::Rejected, message),
                    }
                }
            }
        }
    }

    fn start_probing(&self) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        for i in 0..self.shared.endpoints.len() {
            let weak = Arc::downgrade(&self.shared);
            tokio::spawn(probe_loop(weak, i));
        }
    }
}

impl Shared {
    fn event(&self, i: usize, up: bool, cause: String) {
        let addr = self.endpoints[i].addr.clone();
        if up {
            tracing::info!("endpoint {addr} is back: {cause}");
        } else {
            tracing::warn!("endpoint {addr} is down: {cause}");
        }
        self.events.lock().expect("events lock").push(HealthEvent { endpoint: i, addr, at: Instant::now(), up, cause });
    }

    /// Sets endpoint `i`'s health; records an event when it changes.
    fn mark(&self, i: usize, up: bool, cause: String) {
        if self.endpoints[i].up.send_if_modified(|u| std::mem::replace(u, up) != up) {
            self.event(i, up, cause);
        }
    }
}

/// Watches endpoint `i` while the endpoints exist: probes it while up, and re-connects with
/// backoff while down.
async fn probe_loop(weak: Weak<Shared>, i: usize) {
    let mut backoff = None;
    // A smoothed probe round trip (RFC 6298 style) that stretches the timeout when the server
    // or this device is loaded.
    let mut srtt: Option<Duration> = None;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let config = shared.config.clone();
        let e = &shared.endpoints[i];
        let up = *e.up.borrow();
        if up {
            backoff = None;
            drop(shared);
            if !watch_healthy(&weak, i, &mut srtt).await {
                return;
            }
        } else {
            let wait = backoff.unwrap_or(config.backoff_min);
            backoff = Some((wait * 2).min(config.backoff_max));
            let (addr, max, security) = (e.addr.clone(), e.max_message_bytes, e.security.clone());
            drop(shared);
            tokio::time::sleep(wait).await;
            // A fresh connection: the old one may be wedged on a silent link.
            let limit = config.probe_timeout.max(Duration::from_millis(500));
            let fresh = tokio::time::timeout(limit, EdgeClient::connect_with(&addr, max, &security)).await;
            let Ok(Ok(mut client)) = fresh else { continue };
            let ready = client.server_ready(config.probe_timeout).await;
            let Some(shared) = weak.upgrade() else { return };
            if let Ok(true) = ready {
                *shared.endpoints[i].client.lock().expect("client lock") = Some(client);
                shared.mark(i, true, format!("{addr} answered a health probe"));
            }
        }
    }
}

/// Probes healthy endpoint `i` every `probe_interval` until it is marked down (by the probes or
/// by a request). Probes overlap: one waiting for its timeout does not hold back the next, so a
/// silent link is confirmed by the following probe one interval later, not one timeout later.
/// Returns false when the endpoints are gone.
async fn watch_healthy(weak: &Weak<Shared>, i: usize, srtt: &mut Option<Duration>) -> bool {
    let (config, client, mut up) = {
        let Some(shared) = weak.upgrade() else { return false };
        let e = &shared.endpoints[i];
        (shared.config.clone(), e.client.lock().expect("client lock").clone(), e.up.subscribe())
    };
    let Some(client) = client.filter(|_| config.probe_healthy) else {
        // Only requests mark it down; the sender lives as long as the endpoints do.
        return up.wait_for(|u| !*u).await.is_ok();
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut outstanding = 0usize;
    let mut failures = 0u32;
    let needed = config.probe_failures.max(1);
    let mut next = tokio::time::Instant::now() + config.probe_interval;
    let mut tasks = vec![];
    let result = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                next += config.probe_interval;
                if weak.strong_count() == 0 {
                    break false;
                }
                if outstanding < 8 {
                    outstanding += 1;
                    let timeout = srtt.map_or(config.probe_timeout, |s| config.probe_timeout.max(s * 4));
                    let (mut c, tx) = (client.clone(), tx.clone());
                    tasks.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                    tasks.push(tokio::spawn(async move {
                        let t0 = Instant::now();
                        let r = c.server_ready(timeout).await;
                        let _ = tx.send((t0.elapsed(), r));
                    }));
                }
            }
            Some((rtt, r)) = rx.recv() => {
                outstanding -= 1;
                let why = match r {
                    Ok(true) => {
                        *srtt = Some(srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
                        failures = 0;
                        continue;
                    }
                    Ok(false) => "the server is not ready".to_string(),
                    Err(err) => err.to_string(),
                };
                failures += 1;
                if failures >= needed {
                    let Some(shared) = weak.upgrade() else { break false };
                    shared.mark(i, false, format!("health probe ({needed} in a row): {why}"));
                    break true;
                }
            }
            r = up.wait_for(|u| !*u) => break r.is_ok(),
        }
    };
    for t in tasks {
        t.abort();
    }
    result
}
