//! One module per subcommand.

pub mod bench;
pub mod calibrate;
pub mod demo;
pub mod infer;
pub mod inspect;
pub mod plan;
pub mod profile;
pub mod run;
pub mod serve;
pub mod split;

/// Loads onnxruntime for `--engine ort`: the library named by ORT_DYLIB_PATH, else the one in
/// python3's `onnxruntime` package.
pub fn load_onnxruntime() -> anyhow::Result<()> {
    use anyhow::Context;
    if cleave_engine::onnxruntime::loaded().is_some() {
        return Ok(());
    }
    let path = cleave_engine::onnxruntime::find_library().context("--engine ort")?;
    let rt = cleave_engine::onnxruntime::load(&path).context("--engine ort")?;
    tracing::info!("onnxruntime from {}: {rt:?}", path.display());
    Ok(())
}
