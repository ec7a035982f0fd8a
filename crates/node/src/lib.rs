//! # cleave-node
//!
//! The runtime: [`server`] is an edge or cloud node speaking the Open Inference Protocol over
//! gRPC (whole models for any OIP client, tails after a cut for cleave devices), with dynamic
//! batching, bounded queues, deadlines, Prometheus metrics and graceful shutdown. [`device`]
//! runs heads and sends what crosses the cut; [`client`] is the connection underneath.

pub mod client;
pub mod convert;
pub mod device;
pub mod server;

pub use client::{ClientError, EdgeClient};
pub use device::{Device, DeviceConfig, ExitPolicy, FrameOutput, FrameRecord, FrameStatus, RunSummary};
pub use server::{RunningServer, ServerConfig};
