//! One module per subcommand.

pub mod bench;
pub mod calibrate;
pub mod demo;
pub mod export;
pub mod infer;
pub mod inspect;
pub mod plan;
pub mod profile;
pub mod run;
pub mod run_oip;
pub mod serve;
pub mod split;

/// Parses a duration argument such as `20ms` or `5s`.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    cleave_cost::parse_duration_ms(s).map(|ms| std::time::Duration::from_secs_f64(ms / 1e3)).map_err(|e| e.to_string())
}

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

/// The environment variable holding a bearer token when no `--auth-token-file` is given.
pub const AUTH_TOKEN_ENV: &str = "CLEAVE_AUTH_TOKEN";

/// The bearer token from `--auth-token-file PATH`, else from `CLEAVE_AUTH_TOKEN`, else none. A
/// file keeps the token out of `ps`; errors name the file, never the token.
pub fn auth_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<cleave_node::AuthToken>> {
    use anyhow::Context;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--auth-token-file: cannot read {}", path.display()))?;
        let token =
            cleave_node::AuthToken::new(&text).with_context(|| format!("--auth-token-file {}", path.display()))?;
        return Ok(Some(token));
    }
    match std::env::var(AUTH_TOKEN_ENV) {
        Ok(text) => Ok(Some(cleave_node::AuthToken::new(&text).with_context(|| AUTH_TOKEN_ENV)?)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("{AUTH_TOKEN_ENV} is not valid UTF-8"),
    }
}
