//! The models a server serves, analysed lazily at each set of input shapes requests use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use cleave_engine::CompiledPart;
use cleave_graph::{InputShapes, ModelGraph};
use cleave_proto::wire::WireError;
use tonic::Code;

/// How many distinct input-shape sets one model may be analysed at (each costs an analysis).
pub const MAX_SHAPE_SETS: usize = 16;
/// How many (input shapes, cut) routes one model remembers.
const MAX_ROUTES: usize = 256;

/// A request's input shapes and cut (`None`: the whole model).
pub type RouteKey = (InputShapes, Option<i64>);

/// What a request with given input shapes and cut runs: the model analysed at those shapes,
/// its id, and the tail after the cut, compiled. Remembered so that a request for a tail already
/// compiled finds it without hashing the model or leaving the async thread.
#[derive(Clone)]
pub struct Route {
    pub graph: Arc<ModelGraph>,
    /// `graph.id()`.
    pub graph_id: Arc<str>,
    pub part: Arc<CompiledPart>,
}

/// A remembered route holds its part weakly: the engine's cache decides how long parts live.
struct WeakRoute {
    graph: Arc<ModelGraph>,
    graph_id: Arc<str>,
    part: Weak<CompiledPart>,
    hits: AtomicU64,
}

/// Every this many uses, a remembered route asks for its part from the engine's cache again, so
/// that the cache still sees which parts are in use when it evicts.
pub const ROUTE_REFRESH_EVERY: u64 = 32;

/// One served model.
pub struct ModelEntry {
    pub name: String,
    pub path: PathBuf,
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
    /// The model analysed with its default shapes (symbolic batch = 1).
    pub default: Arc<ModelGraph>,
    /// Whether the first input dimension is symbolic, so that requests can be batched.
    pub batchable: bool,
    graphs: Mutex<HashMap<InputShapes, Arc<ModelGraph>>>,
    routes: Mutex<HashMap<RouteKey, WeakRoute>>,
}

impl ModelEntry {
    /// Loads and analyses a model file. Symbolic dims other than the batch must be pinned by
    /// `shapes`; shapes naming inputs this model does not have are ignored (they are for other
    /// models).
    pub fn load(name: &str, path: &Path, shapes: &InputShapes) -> Result<ModelEntry, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("model `{name}`: cannot read {}: {e}", path.display()))?;
        Self::from_bytes(name, path, bytes, shapes)
    }

    /// [`ModelEntry::load`] for a model already in memory; `path` only labels it.
    pub fn from_bytes(name: &str, path: &Path, bytes: Vec<u8>, shapes: &InputShapes) -> Result<ModelEntry, String> {
        use prost::Message;
        let inputs: std::collections::HashSet<String> = cleave_graph::pb::ModelProto::decode(&bytes[..])
            .ok()
            .and_then(|m| m.graph)
            .map(|g| g.input.into_iter().map(|i| i.name).collect())
            .unwrap_or_default();
        let shapes = InputShapes(
            shapes.0.iter().filter(|(k, _)| inputs.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        );
        let default =
            ModelGraph::from_bytes(&bytes, &shapes).map_err(|e| format!("model `{name}` ({}): {e}", path.display()))?;
        let batchable = first_dim_symbolic(&default);
        let mut graphs = HashMap::new();
        graphs.insert(default.input_shapes().clone(), Arc::new(default.clone()));
        Ok(ModelEntry {
            name: name.to_owned(),
            path: path.to_owned(),
            sha256: default.sha256().to_owned(),
            bytes: Arc::new(bytes),
            default: Arc::new(default),
            batchable,
            graphs: Mutex::new(graphs),
            routes: Mutex::new(HashMap::new()),
        })
    }

    /// The route of a request with these input shapes and cut, if it was remembered and its
    /// part is still compiled; and whether it is time to refresh the part in the engine's cache
    /// (see [`ROUTE_REFRESH_EVERY`]).
    pub fn route(&self, key: &RouteKey) -> Option<(Route, bool)> {
        let routes = self.routes.lock().expect("routes lock");
        let r = routes.get(key)?;
        let route = Route { graph: r.graph.clone(), graph_id: r.graph_id.clone(), part: r.part.upgrade()? };
        let refresh = r.hits.fetch_add(1, Ordering::Relaxed) % ROUTE_REFRESH_EVERY == ROUTE_REFRESH_EVERY - 1;
        Some((route, refresh))
    }

    /// Remembers a route (see [`ModelEntry::route`]).
    pub fn remember_route(&self, key: RouteKey, route: &Route) {
        let mut routes = self.routes.lock().expect("routes lock");
        if routes.len() >= MAX_ROUTES {
            routes.retain(|_, r| r.part.strong_count() > 0);
            if routes.len() >= MAX_ROUTES {
                routes.clear();
            }
        }
        let weak = WeakRoute {
            graph: route.graph.clone(),
            graph_id: route.graph_id.clone(),
            part: Arc::downgrade(&route.part),
            hits: AtomicU64::new(0),
        };
        routes.insert(key, weak);
    }

    /// The model analysed at `shapes` (cached; bounded).
    pub fn graph(&self, shapes: &InputShapes) -> Result<Arc<ModelGraph>, WireError> {
        if let Some(g) = self.graphs.lock().expect("graphs lock").get(shapes) {
            return Ok(g.clone());
        }
        if self.graphs.lock().expect("graphs lock").len() >= MAX_SHAPE_SETS {
            return Err(WireError {
                code: Code::ResourceExhausted,
                message: format!("model `{}` is already analysed at {MAX_SHAPE_SETS} input shapes", self.name),
            });
        }
        let g = ModelGraph::from_bytes(&self.bytes, shapes)
            .map_err(|e| WireError::invalid(format!("model `{}` cannot run at these input shapes: {e}", self.name)))?;
        let g = Arc::new(g);
        self.graphs.lock().expect("graphs lock").insert(shapes.clone(), g.clone());
        Ok(g)
    }
}

fn first_dim_symbolic(g: &ModelGraph) -> bool {
    use cleave_graph::pb;
    let Some(graph) = g.proto().graph.as_ref() else { return false };
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect();
    !inputs.is_empty()
        && inputs.iter().all(|i| {
            let Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(t)), .. }) = &i.r#type else {
                return false;
            };
            match t.shape.as_ref().and_then(|s| s.dim.first()).and_then(|d| d.value.as_ref()) {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => *v <= 0,
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(_)) => true,
                None => true,
            }
        })
}

/// All served models, by name.
#[derive(Default)]
pub struct Registry {
    models: HashMap<String, Arc<ModelEntry>>,
}

impl Registry {
    /// Adds a model.
    pub fn add(&mut self, entry: ModelEntry) -> Result<(), String> {
        if self.models.contains_key(&entry.name) {
            return Err(format!("model `{}` is given twice", entry.name));
        }
        self.models.insert(entry.name.clone(), Arc::new(entry));
        Ok(())
    }

    /// Loads every model of a repository: `DIR/NAME.onnx` or `DIR/NAME/<version>/model.onnx`
    /// (Triton's layout; the highest version is served).
    pub fn load_repository(&mut self, dir: &Path, shapes: &InputShapes) -> Result<(), String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("model repository {}: {e}", dir.display()))?;
        let mut found = vec![];
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "onnx") {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    found.push((stem.to_owned(), p.clone()));
                }
            } else if p.is_dir() {
                let name = p.file_name().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
                let best = std::fs::read_dir(&p)
                    .ok()
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|v| v.file_name().to_str().and_then(|s| s.parse::<u64>().ok()).map(|n| (n, v.path())))
                    .filter(|(_, v)| v.join("model.onnx").is_file())
                    .max_by_key(|(n, _)| *n);
                if let Some((_, v)) = best {
                    found.push((name, v.join("model.onnx")));
                }
            }
        }
        if found.is_empty() {
            return Err(format!("model repository {} holds no NAME.onnx or NAME/<version>/model.onnx", dir.display()));
        }
        found.sort();
        for (name, path) in found {
            self.add(ModelEntry::load(&name, &path, shapes)?)?;
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ModelEntry>> {
        self.models.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.models.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}
