//! The optional onnxruntime backend ([`Backend::Ort`](crate::Backend::Ort)).
//!
//! onnxruntime is not linked: it is a shared library loaded at run time through the `ort` crate
//! (feature `load-dynamic`), so the default build, and every build without the `ort` cargo
//! feature, needs nothing from it. The `onnxruntime` Python wheel (`pip install onnxruntime`)
//! ships a suitable library as `onnxruntime/capi/libonnxruntime.so.<version>`.
//!
//! # Finding and loading the library
//!
//! One process loads at most one onnxruntime library, once:
//! - [`load`] loads the library at a given path (and is a no-op when that library is loaded);
//! - otherwise the first [`Engine::with_backend`](crate::Engine::with_backend)`(…, Backend::Ort)`
//!   loads the library named by the environment variable [`DYLIB_ENV`] (`ORT_DYLIB_PATH`, the
//!   `ort` crate's own convention). That is the only environment variable this crate reads;
//! - [`find_library`] is a convenience for binaries and tests: it looks at `ORT_DYLIB_PATH`, then
//!   asks `python3` where the `onnxruntime` package is. It does I/O and spawns a process, so the
//!   engine never calls it by itself.
//!
//! A missing or unloadable library is an [`EngineError::OrtUnavailable`], and a build without
//! the `ort` feature answers [`EngineError::OrtNotBuilt`]: neither panics.
//!
//! # How parts run
//!
//! A part is exported as standalone ONNX bytes ([`Part::to_bytes`](cleave_graph::Part::to_bytes),
//! the same bytes `cleave split` writes) and committed to an `ort` session with `threads`
//! intra-op threads (intra-op spinning off, so that idle sessions leave the CPU to other work).
//! Inputs are passed to onnxruntime as views of the tract tensors' memory (no copy); outputs are
//! copied once into tract tensors, so callers see the same [`TensorMap`](crate::TensorMap)
//! whichever backend ran. Element types: `f32`, `f64`, `f16`, `i8`…`i64`, `u8`…`u64` and `bool`.
//! An `ort` session runs one inference at a time, so concurrent runs of one compiled part
//! take turns (tract plans run concurrently).

use std::path::{Path, PathBuf};

use crate::{EngineError, Result};

/// The environment variable naming the onnxruntime shared library (the `ort` crate's
/// convention).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The onnxruntime library this process loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtRuntime {
    /// Canonical path of the shared library.
    pub path: PathBuf,
    /// onnxruntime's version (`1.32.0`), or `unknown`.
    pub version: String,
}

/// Loads the onnxruntime shared library at `path` for the whole process. Loading the library
/// that is already loaded does nothing; loading a second, different one is an error.
///
/// Errors: [`EngineError::OrtUnavailable`] when the file is missing or is not a usable
/// onnxruntime (too old, wrong architecture), [`EngineError::OrtNotBuilt`] without the `ort`
/// feature.
pub fn load(path: &Path) -> Result<OrtRuntime> {
    #[cfg(feature = "ort")]
    {
        imp::load(path)
    }
    #[cfg(not(feature = "ort"))]
    {
        let _ = path;
        Err(EngineError::OrtNotBuilt)
    }
}

/// The onnxruntime library loaded so far, if any.
pub fn loaded() -> Option<OrtRuntime> {
    #[cfg(feature = "ort")]
    {
        imp::loaded()
    }
    #[cfg(not(feature = "ort"))]
    {
        None
    }
}

/// Looks for the onnxruntime shared library. **Does I/O and spawns a process**: reads
/// `ORT_DYLIB_PATH`; when it is unset or empty, runs `python3` to find the `onnxruntime`
/// package and returns the `libonnxruntime` library in its `capi/` folder.
///
/// Meant for binaries and tests; the engine itself only reads `ORT_DYLIB_PATH`. Works with or
/// without the `ort` feature (it only looks). Errors are [`EngineError::OrtUnavailable`], saying
/// what was tried.
pub fn find_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(unavailable(format!("{DYLIB_ENV}={} is not a file", p.display())))
        };
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            unavailable(format!("{DYLIB_ENV} is not set, and python3 could not be run to look for it: {e}"))
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
        return Err(unavailable(format!(
            "{DYLIB_ENV} is not set, and python3 has no onnxruntime package (`pip install onnxruntime`): {last}"
        )));
    }
    let package = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let capi = package.join("capi");
    library_in(&capi).ok_or_else(|| {
        unavailable(format!("{DYLIB_ENV} is not set, and {} holds no onnxruntime shared library", capi.display()))
    })
}

/// The onnxruntime shared library in `dir` (`libonnxruntime.so*`, `libonnxruntime*.dylib` or
/// `onnxruntime.dll`), preferring the most specific (versioned) name.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libonnxruntime.so")
                || (name.starts_with("libonnxruntime") && name.ends_with(".dylib") && !name.contains("providers"))
                || name == "onnxruntime.dll"
        })
        .filter(|p| p.is_file())
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.pop()
}

pub(crate) fn unavailable(msg: impl Into<String>) -> EngineError {
    EngineError::OrtUnavailable(msg.into())
}

/// onnxruntime's version from its build-info string (`git-branch=rel-1.32.0`), else from the
/// library's file name (`libonnxruntime.so.1.32.0`).
#[cfg_attr(not(feature = "ort"), allow(dead_code))]
fn version_of(build_info: &str, path: &Path) -> String {
    let from_info = build_info
        .split("git-branch=rel-")
        .nth(1)
        .map(|rest| rest.split([',', ' ']).next().unwrap_or("").to_owned())
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()));
    let from_name = || {
        let name = path.file_name()?.to_str()?;
        let v = name.split(".so.").nth(1)?;
        v.chars().next().is_some_and(|c| c.is_ascii_digit()).then(|| v.to_owned())
    };
    from_info.or_else(from_name).unwrap_or_else(|| "unknown".into())
}

#[cfg(feature = "ort")]
pub(crate) use imp::{Session, compile, environment, run};

#[cfg(feature = "ort")]
mod imp {
    use std::borrow::Cow;
    use std::fmt::Debug;
    use std::path::Path;
    use std::sync::{Mutex, PoisonError};

    use cleave_graph::{Part, TensorSpec};
    use ort::environment::Environment;
    use ort::session::SessionInputValue;
    use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef};
    use tract_onnx::prelude::{Datum, DatumType, Tensor, f16};

    use super::{DYLIB_ENV, OrtRuntime, unavailable, version_of};
    use crate::{EngineError, Result, catch};

    pub use ort::session::Session;

    struct Loaded {
        runtime: OrtRuntime,
        env: Environment,
    }

    /// The process's onnxruntime: `ort` allows one library and one environment per process.
    static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

    pub(crate) fn loaded() -> Option<OrtRuntime> {
        LOADED.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|l| l.runtime.clone())
    }

    pub(crate) fn load(path: &Path) -> Result<OrtRuntime> {
        let mut slot = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
        // An absolute path: `ort` resolves relative ones against the executable's folder.
        let abs = std::fs::canonicalize(path)
            .map_err(|e| unavailable(format!("cannot load the onnxruntime library {}: {e}", path.display())))?;
        if let Some(l) = slot.as_ref() {
            return if l.runtime.path == abs {
                Ok(l.runtime.clone())
            } else {
                Err(unavailable(format!(
                    "onnxruntime is already loaded from {}; a process can load only one (asked for {})",
                    l.runtime.path.display(),
                    abs.display()
                )))
            };
        }
        let env = catch(|| {
            ort::init_from(&abs)
                .map_err(|e| unavailable(e.to_string()))?
                .with_name("cleave")
                .with_telemetry(false)
                .build()
                .map_err(|e| unavailable(format!("could not create an onnxruntime environment: {e}")))
        })?;
        let info = catch(|| Ok(ort::info().to_owned()))?;
        let runtime = OrtRuntime { version: version_of(&info, &abs), path: abs };
        *slot = Some(Loaded { runtime: runtime.clone(), env });
        Ok(runtime)
    }

    /// The process's onnxruntime environment, loading the library named by `ORT_DYLIB_PATH` if
    /// none is loaded yet.
    pub(crate) fn environment() -> Result<Environment> {
        if let Some(l) = LOADED.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            return Ok(l.env.clone());
        }
        let Some(path) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) else {
            return Err(unavailable(format!(
                "{DYLIB_ENV} is not set: point it at the onnxruntime shared library (the `onnxruntime` \
                 Python wheel ships onnxruntime/capi/libonnxruntime.so.*), or call cleave_engine::onnxruntime::load"
            )));
        };
        load(Path::new(&path))?;
        LOADED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|l| l.env.clone())
            .ok_or_else(|| unavailable("onnxruntime was loaded but its environment is gone"))
    }

    /// Commits a part's ONNX bytes to a session with `threads` intra-op threads.
    pub(crate) fn compile(part: &Part, threads: usize) -> Result<Session> {
        let env = environment()?;
        let bytes = part.to_bytes();
        let err =
            |msg: String| EngineError::OrtCompile { what: format!("part {}..{}", part.from_cut, part.to_cut), msg };
        catch(|| {
            let builder = Session::builder(&env).map_err(|e| err(e.to_string()))?;
            let builder = builder.with_intra_threads(threads.max(1)).map_err(|e| err(e.to_string()))?;
            let builder = builder.with_inter_threads(1).map_err(|e| err(e.to_string()))?;
            let mut builder = builder.with_intra_op_spinning(false).map_err(|e| err(e.to_string()))?;
            builder.commit_from_memory(&bytes).map_err(|e| err(e.to_string()))
        })
    }

    /// Runs a session on `inputs` (in the part's input order, already checked against its specs)
    /// and returns the part's `outputs`, in order, as tract tensors.
    pub(crate) fn run(
        session: &Mutex<Session>,
        inputs: &[(&TensorSpec, &Tensor)],
        outputs: &[TensorSpec],
    ) -> Result<Vec<Tensor>> {
        // tract may hold integer inputs as symbolic dimensions (TDim); onnxruntime wants i64.
        let owned: Vec<Cow<'_, Tensor>> = inputs
            .iter()
            .map(|(_, t)| {
                if t.datum_type() == DatumType::TDim {
                    t.cast_to::<i64>()
                        .map(|c| Cow::Owned(c.into_owned()))
                        .map_err(|e| EngineError::Run(format!("{e:#}")))
                } else {
                    Ok(Cow::Borrowed(*t))
                }
            })
            .collect::<Result<_>>()?;
        catch(|| {
            let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
            for ((spec, _), t) in inputs.iter().zip(&owned) {
                values.push((spec.name.as_str(), input_value(&spec.name, t)?));
            }
            let mut session = session.lock().unwrap_or_else(PoisonError::into_inner);
            let produced = session.run(values).map_err(|e| EngineError::Run(format!("onnxruntime: {e}")))?;
            outputs
                .iter()
                .map(|spec| {
                    let v = produced.get(&spec.name).ok_or_else(|| {
                        EngineError::Run(format!("onnxruntime did not return output `{}`", spec.name))
                    })?;
                    output_tensor(&spec.name, v)
                })
                .collect()
        })
    }

    fn tensor_err(name: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::Run(format!("tensor `{name}`: {e}"))
    }

    /// A view of a tract tensor's memory as an onnxruntime input (no copy).
    fn input_value<'a>(name: &str, t: &'a Tensor) -> Result<SessionInputValue<'a>> {
        fn view<'a, T: Datum + PrimitiveTensorElementType + Debug>(
            name: &str,
            t: &'a Tensor,
        ) -> Result<SessionInputValue<'a>> {
            let data =
                t.try_as_plain_ram().and_then(|v| v.as_slice::<T>()).map_err(|e| tensor_err(name, format!("{e:#}")))?;
            let value = TensorRef::from_array_view((t.shape(), data)).map_err(|e| tensor_err(name, e))?;
            Ok(value.into())
        }
        match t.datum_type() {
            DatumType::F32 => view::<f32>(name, t),
            DatumType::F64 => view::<f64>(name, t),
            DatumType::F16 => view::<f16>(name, t),
            DatumType::I8 => view::<i8>(name, t),
            DatumType::I16 => view::<i16>(name, t),
            DatumType::I32 => view::<i32>(name, t),
            DatumType::I64 => view::<i64>(name, t),
            DatumType::U8 => view::<u8>(name, t),
            DatumType::U16 => view::<u16>(name, t),
            DatumType::U32 => view::<u32>(name, t),
            DatumType::U64 => view::<u64>(name, t),
            DatumType::Bool => view::<bool>(name, t),
            other => Err(tensor_err(name, format!("the onnxruntime backend cannot pass {other:?} tensors"))),
        }
    }

    /// An onnxruntime output copied into a tract tensor.
    fn output_tensor(name: &str, v: &DynValue) -> Result<Tensor> {
        fn copy<T: Datum + PrimitiveTensorElementType + Copy>(name: &str, v: &DynValue) -> Result<Tensor> {
            let (shape, data) = v.try_extract_tensor::<T>().map_err(|e| tensor_err(name, e))?;
            let dims = shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<usize>, _>>()
                .map_err(|_| tensor_err(name, format!("onnxruntime returned a negative dimension in {shape:?}")))?;
            Tensor::from_shape(&dims, data).map_err(|e| tensor_err(name, format!("{e:#}")))
        }
        match v.dtype().tensor_type() {
            Some(TensorElementType::Float32) => copy::<f32>(name, v),
            Some(TensorElementType::Float64) => copy::<f64>(name, v),
            Some(TensorElementType::Float16) => copy::<f16>(name, v),
            Some(TensorElementType::Int8) => copy::<i8>(name, v),
            Some(TensorElementType::Int16) => copy::<i16>(name, v),
            Some(TensorElementType::Int32) => copy::<i32>(name, v),
            Some(TensorElementType::Int64) => copy::<i64>(name, v),
            Some(TensorElementType::Uint8) => copy::<u8>(name, v),
            Some(TensorElementType::Uint16) => copy::<u16>(name, v),
            Some(TensorElementType::Uint32) => copy::<u32>(name, v),
            Some(TensorElementType::Uint64) => copy::<u64>(name, v),
            Some(TensorElementType::Bool) => copy::<bool>(name, v),
            Some(other) => {
                Err(tensor_err(name, format!("onnxruntime returned {other} elements, which cleave cannot hold")))
            }
            None => Err(tensor_err(name, "onnxruntime returned a value that is not a tensor")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_build_info_or_file_name() {
        let p = Path::new("/x/capi/libonnxruntime.so.1.32.0");
        assert_eq!(
            version_of("ORT Build Info: git-branch=rel-1.32.0, git-commit-id=abc, build type=Release", p),
            "1.32.0"
        );
        assert_eq!(version_of("ORT Build Info: git-branch=main, build type=Release", p), "1.32.0");
        assert_eq!(version_of("", Path::new("/x/onnxruntime.dll")), "unknown");
    }

    #[test]
    fn library_in_prefers_the_versioned_name() {
        let dir = std::env::temp_dir().join(format!("cleave-ort-lib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["libonnxruntime.so.1.32.0", "libonnxruntime_providers_shared.so", "__init__.py"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        assert_eq!(library_in(&dir), Some(dir.join("libonnxruntime.so.1.32.0")));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(library_in(&dir), None);
    }
}
