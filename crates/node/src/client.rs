//! Talking to an edge or cloud server: health, RTT and bandwidth probes, and tail requests.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_proto::GrpcInferenceServiceClient;
use cleave_proto::inference::model_infer_request::InferInputTensor;
use cleave_proto::inference::*;
use cleave_proto::wire::{self, Limits, WireTensor};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::security::{AttachToken, AuthToken, ClientTls, SecurityError, error_chain};
use crate::server::PARAM_PROBE;
use crate::upload::{UploadWatch, WatchedConnector};

/// Why talking to the server failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("the server answered {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("the request timed out after {0:?}")]
    Timeout(Duration),
    #[error("the server's answer is malformed: {0}")]
    Malformed(String),
    #[error(transparent)]
    Security(#[from] SecurityError),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> ClientError {
        // A connection that failed mid-call (a TLS alert, a reset) says why only in its sources.
        let message = match std::error::Error::source(&s) {
            Some(src) => match error_chain(src) {
                chain if chain.starts_with(s.message()) => chain,
                chain => format!("{}: {chain}", s.message()),
            },
            None => s.message().to_owned(),
        };
        ClientError::Status { code: s.code(), message }
    }
}

/// The answer to a tail request.
#[derive(Debug, Clone)]
pub struct TailResponse {
    pub outputs: Vec<WireTensor>,
    /// The server's queue and compute time, when it reports them.
    pub queue_ms: Option<f64>,
    pub compute_ms: Option<f64>,
    /// Requests computed together with this one.
    pub batch: Option<i64>,
    /// Wall time of the call.
    pub rpc: Duration,
    /// The server's load signal: its workers' busy share (0..1) and how many workers it has.
    pub server_util: Option<f64>,
    pub server_workers: Option<usize>,
    /// A coordinating server's recommendation for this device (`CUT:CODEC`), in fleet mode.
    pub fleet_plan: Option<String>,
}

/// How a client secures its connection: TLS (plaintext when `None`) and a bearer token.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    pub tls: Option<ClientTls>,
    pub token: Option<AuthToken>,
}

/// A connection to one server. Cloning shares the connection (HTTP/2 multiplexes requests).
#[derive(Clone)]
pub struct EdgeClient {
    addr: String,
    max_message_bytes: usize,
    security: ClientSecurity,
    client: GrpcInferenceServiceClient<InterceptedService<Channel, AttachToken>>,
    upload: UploadWatch,
}

impl EdgeClient {
    /// Connects to `addr` (`HOST:PORT` or a URL) in plaintext, without a token.
    pub async fn connect(addr: &str, max_message_bytes: usize) -> Result<EdgeClient, ClientError> {
        Self::connect_with(addr, max_message_bytes, &ClientSecurity::default()).await
    }

    /// Connects to `addr` (`HOST:PORT` or a URL) over TLS when `security.tls` is set (a bare
    /// `HOST:PORT` then means `https://HOST:PORT`), adding `security.token` to every call.
    pub async fn connect_with(
        addr: &str,
        max_message_bytes: usize,
        security: &ClientSecurity,
    ) -> Result<EdgeClient, ClientError> {
        let scheme = if security.tls.is_some() { "https" } else { "http" };
        let url = if addr.contains("://") { addr.to_owned() } else { format!("{scheme}://{addr}") };
        let mut endpoint = Channel::from_shared(url.clone())
            .map_err(|e| ClientError::Connect { addr: addr.into(), message: e.to_string() })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::server::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(crate::server::HTTP2_CONNECTION_WINDOW);
        if let Some(tls) = &security.tls {
            if !url.starts_with("https://") {
                return Err(ClientError::Connect {
                    addr: addr.into(),
                    message: "TLS is configured but the address is not https://".into(),
                });
            }
            endpoint = endpoint
                .tls_config(tls.tonic_config())
                .map_err(|e| SecurityError::Tls(format!("{}: {}", tls.origins(), error_chain(&e))))?;
        }
        let upload = UploadWatch::default();
        let channel = endpoint
            .connect_with_connector(WatchedConnector::new(Duration::from_secs(3), upload.clone()))
            .await
            .map_err(|e| ClientError::Connect { addr: addr.into(), message: error_chain(&e) })?;
        let client = GrpcInferenceServiceClient::with_interceptor(channel, AttachToken::new(security.token.clone()))
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Ok(EdgeClient { addr: addr.to_owned(), max_message_bytes, security: security.clone(), client, upload })
    }

    /// The connection's view of uploads (see [`crate::upload`]).
    pub fn upload_watch(&self) -> &UploadWatch {
        &self.upload
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    pub(crate) fn security(&self) -> &ClientSecurity {
        &self.security
    }

    /// ServerReady, within `timeout`: `Ok(true)` when the server says it is ready.
    pub async fn server_ready(&mut self, timeout: Duration) -> Result<bool, ClientError> {
        let mut request = tonic::Request::new(ServerReadyRequest {});
        request.set_timeout(timeout);
        let call = self.client.server_ready(request);
        let r = tokio::time::timeout(timeout, call).await.map_err(|_| ClientError::Timeout(timeout))??;
        Ok(r.into_inner().ready)
    }

    /// Whether the server is ready and serves `model`.
    pub async fn model_ready(&mut self, model: &str) -> Result<bool, ClientError> {
        let r = self.client.model_ready(ModelReadyRequest { name: model.into(), version: String::new() }).await?;
        Ok(r.into_inner().ready)
    }

    /// Median round trip of `n` ServerLive calls.
    pub async fn rtt(&mut self, n: usize) -> Result<Duration, ClientError> {
        let mut v = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            let t0 = Instant::now();
            self.client.server_live(ServerLiveRequest {}).await?;
            v.push(t0.elapsed());
        }
        v.sort();
        Ok(v[v.len() / 2])
    }

    /// Sends `bytes` of payload that the server answers without computing; returns the call's
    /// wall time (RTT plus serialization of the payload).
    pub async fn probe(&mut self, model: &str, bytes: usize) -> Result<Duration, ClientError> {
        let mut parameters = std::collections::HashMap::new();
        parameters.insert(PARAM_PROBE.to_owned(), wire::int_param(1));
        let req = ModelInferRequest {
            model_name: model.into(),
            parameters,
            inputs: vec![InferInputTensor {
                name: "probe".into(),
                datatype: "UINT8".into(),
                shape: vec![bytes as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![Bytes::from(vec![0u8; bytes])],
            ..Default::default()
        };
        let t0 = Instant::now();
        self.client.model_infer(req).await?;
        Ok(t0.elapsed())
    }

    /// An empty probe of `model` (nothing to compute) carrying `parameters` (e.g. a device's
    /// fleet report): its round trip and the server's load signal and recommendation.
    pub async fn ping(
        &mut self,
        model: &str,
        mut parameters: std::collections::HashMap<String, InferParameter>,
        timeout: Option<Duration>,
    ) -> Result<TailResponse, ClientError> {
        parameters.insert(PARAM_PROBE.to_owned(), wire::int_param(1));
        let req = ModelInferRequest { model_name: model.into(), parameters, ..Default::default() };
        self.infer(req, timeout).await
    }

    /// Sends one inference request.
    pub async fn infer(
        &mut self,
        req: ModelInferRequest,
        timeout: Option<Duration>,
    ) -> Result<TailResponse, ClientError> {
        let mut request = tonic::Request::new(req);
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let t0 = Instant::now();
        let fut = self.client.model_infer(request);
        let resp = match timeout {
            Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| ClientError::Timeout(t))??,
            None => fut.await?,
        }
        .into_inner();
        let rpc = t0.elapsed();
        let limits = Limits { max_elements: usize::MAX / 16, ..Limits::default() };
        let outputs = wire::decode_outputs(&resp, &limits).map_err(|e| ClientError::Malformed(e.message))?;
        Ok(TailResponse {
            outputs,
            // cleave's names, or the plain ones a foreign server may report (crate::oip).
            queue_ms: crate::oip::reported_ms(&resp.parameters, &[wire::PARAM_QUEUE_MS, "queue_ms"]),
            compute_ms: crate::oip::reported_ms(&resp.parameters, &[wire::PARAM_COMPUTE_MS, "compute_ms"]),
            batch: wire::get_int(&resp.parameters, wire::PARAM_BATCH).ok().flatten(),
            rpc,
            server_util: wire::get_f64(&resp.parameters, wire::PARAM_SERVER_UTIL)
                .filter(|u| u.is_finite())
                .map(|u| u.clamp(0.0, 1.0)),
            server_workers: wire::get_int(&resp.parameters, wire::PARAM_SERVER_WORKERS)
                .ok()
                .flatten()
                .filter(|&w| w > 0)
                .map(|w| w as usize),
            fleet_plan: wire::get_str(&resp.parameters, wire::PARAM_FLEET_PLAN).ok().flatten().map(str::to_owned),
        })
    }
}
