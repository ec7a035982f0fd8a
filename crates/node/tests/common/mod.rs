//! What the node's integration tests share: the built-in tiny model served by a real server on
//! loopback, and its measured profile.

#![allow(dead_code)]

use std::sync::Arc;

use cleave_engine::{Engine, TensorMap, random_input};
use cleave_graph::build::zoo;
use cleave_graph::{InputShapes, ModelGraph};
use cleave_node::server::registry::{ModelEntry, Registry};
use cleave_node::{RunningServer, ServerConfig};
use prost::Message;

/// A running server with the tiny model (seed 3) under the name `tiny`, its graph, and the
/// directory its file lives in (removed on drop).
pub struct Tiny {
    pub server: RunningServer,
    pub graph: Arc<ModelGraph>,
    pub dir: tempfile::TempDir,
}

/// A config on a free loopback port, no metrics endpoint; tests change what they need.
pub fn loopback_config() -> ServerConfig {
    ServerConfig { grpc_addr: ([127, 0, 0, 1], 0).into(), metrics_addr: None, ..Default::default() }
}

/// Starts a server with `config` serving the tiny model as `tiny`.
pub async fn serve_tiny(config: ServerConfig) -> Tiny {
    serve_tiny_at(config, 32).await
}

/// [`serve_tiny`] for `side × side` inputs (32 there: a 12 KiB fp32 input).
pub async fn serve_tiny_at(config: ServerConfig, side: usize) -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.onnx");
    let bytes = zoo::tiny_resnet_at(3, side).encode_to_vec();
    std::fs::write(&path, &bytes).unwrap();
    let mut registry = Registry::default();
    registry.add(ModelEntry::load("tiny", &path, &InputShapes::none()).unwrap()).unwrap();
    let server = RunningServer::start(registry, config).await.unwrap();
    let graph = Arc::new(ModelGraph::from_bytes(&bytes, &InputShapes::none()).unwrap());
    Tiny { server, graph, dir }
}

/// `graph` profiled on this machine (1 warm-up, 3 repeats): the edge's profile.
pub fn edge_profile(engine: &Engine, graph: &ModelGraph) -> cleave_cost::Profile {
    let opts =
        cleave_engine::profile::ProfileOptions { warmup: 1, repeats: 3, device: "edge".into(), host: "t".into() };
    cleave_engine::profile::profile(engine, graph, &opts, &mut |_: usize, _: usize, _: &str| {}).unwrap()
}

/// A random input for `graph`, seeded.
pub fn input(graph: &ModelGraph, seed: u64) -> TensorMap {
    graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, seed))).collect()
}

/// An adaptive device for `graph` on `client`'s server, ready for its first frame: heads
/// compiled, the server's tails warmed, the link measured.
pub async fn ready_device(
    engine: Arc<Engine>,
    graph: Arc<ModelGraph>,
    client: &cleave_node::EdgeClient,
    problem: cleave_plan::Problem,
    config: cleave_node::adaptive::AdaptiveConfig,
) -> cleave_node::adaptive::AdaptiveDevice {
    use cleave_node::adaptive::{AdaptiveDevice, Strategy};
    let mut device =
        AdaptiveDevice::new(engine, graph, Some(client.clone()), problem, Strategy::Adaptive, config).unwrap();
    device.prepare().unwrap();
    device.warm_server(client).await.unwrap();
    device.bootstrap().await;
    device
}
