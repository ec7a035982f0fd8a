//! # cleave-proto
//!
//! The wire: the Open Inference Protocol's gRPC types (generated from `proto/inference.proto`,
//! which cleave writes from the public specification) and the mapping between cleave's tensors
//! and codecs and those types. No sockets here: servers and clients live in cleave-node.

#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

pub mod wire;

pub use inference::grpc_inference_service_client::GrpcInferenceServiceClient;
pub use inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
