//! # cleave-node
//!
//! The runtime: [`server`] is an edge or cloud node speaking the Open Inference Protocol over
//! gRPC (whole models for any OIP client, tails after a cut for cleave devices), with dynamic
//! batching, bounded queues, deadlines, Prometheus metrics and graceful shutdown. [`device`]
//! runs heads and sends what crosses the cut; [`adaptive`] re-plans
//! the cut and codec for every frame from live link estimates; [`oip`] offloads to a foreign OIP server (Triton, KServe, MLServer) that serves the
//! tails `cleave export` writes; [`client`] is the connection underneath;
//! [`security`] holds TLS and bearer-token settings for both ends.

pub mod adaptive;
pub mod client;
pub mod convert;
pub mod device;
pub mod failover;
pub mod oip;
pub mod priority;
pub mod security;
pub mod server;
pub mod upload;

pub use adaptive::{AdaptiveConfig, AdaptiveDevice, AdaptiveRecord, Estimate, LinkEstimates, Strategy};
pub use client::{ClientError, ClientSecurity, EdgeClient};
pub use device::{Device, DeviceConfig, ExitPolicy, FrameOutput, FrameRecord, FrameStatus, RunSummary};
pub use failover::{Endpoints, FailoverConfig, HealthEvent};
pub use oip::{ExportParts, LocalModel, OipConfig, OipDevice, OipFrame, ServerTimes};
pub use security::{AuthToken, ClientTls, SecurityError, ServerTls};
pub use server::{RunningServer, ServerConfig};
