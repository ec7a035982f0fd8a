//! A real `cleave serve` child process for the benches that need the edge in its own process
//! (`bench load`, `bench fleet`, `bench trace`, `bench chaos`): started on loopback (a free gRPC
//! port unless one is asked for), its ports read from the line it
//! prints, its stderr drained (the last lines kept for errors), killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cleave_graph::InputShapes;

/// How to start the edge.
#[derive(Debug, Clone)]
pub struct EdgeSpec {
    /// The `cleave` executable.
    pub server_exe: PathBuf,
    /// The model's name on the edge, and its file.
    pub model_name: String,
    pub model_path: PathBuf,
    /// Pinned input shapes (`--shape`).
    pub shapes: InputShapes,
    /// `--max-queue`.
    pub queue_bound: usize,
    /// `--max-batch`.
    pub max_batch: usize,
    /// `--workers` (`None`: its default, cores ÷ threads).
    pub workers: Option<usize>,
    /// More arguments for `serve`.
    pub extra_args: Vec<String>,
    /// The gRPC port (0: a free one), e.g. to restart a killed server where its clients
    /// expect it.
    pub grpc_port: u16,
}

/// A `cleave serve` child process on free loopback ports; killed when dropped.
pub struct EdgeProcess {
    child: Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// The last lines it wrote to stderr (for errors).
    stderr_tail: Arc<Mutex<Vec<String>>>,
}

impl EdgeProcess {
    /// Starts it and waits (at most 120 s) until it listens. Errors say why, with its last words.
    pub fn spawn(spec: &EdgeSpec) -> Result<EdgeProcess, String> {
        let mut cmd = Command::new(&spec.server_exe);
        cmd.args(["serve", "--host", "127.0.0.1", "--metrics-port", "0"])
            .arg("--grpc-port")
            .arg(spec.grpc_port.to_string())
            .arg("--max-queue")
            .arg(spec.queue_bound.to_string())
            .arg("--max-batch")
            .arg(spec.max_batch.to_string())
            .arg("--model")
            .arg(format!("{}={}", spec.model_name, spec.model_path.display()));
        if let Some(w) = spec.workers {
            cmd.arg("--workers").arg(w.to_string());
        }
        for (name, dims) in &spec.shapes.0 {
            let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            cmd.arg("--shape").arg(format!("{name}={}", d.join(",")));
        }
        cmd.args(&spec.extra_args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} serve: {e}", spec.server_exe.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let tail = stderr_tail.clone();
        // Drained all along, so the edge never blocks on a full pipe; only the last lines kept.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut t = tail.lock().expect("stderr lock");
                if t.len() == 20 {
                    t.remove(0);
                }
                t.push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.starts_with("listening ") {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut edge = EdgeProcess { child, grpc: any, metrics: any, stderr_tail };
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let status = edge.child.try_wait().ok().flatten();
                return Err(match status {
                    Some(s) => format!("`serve` exited ({s}) before listening: {}", edge.stderr()),
                    None => "`serve` did not report listening within 120 s".into(),
                });
            }
        };
        let addr = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("cannot parse `{key}` in `{line}`"))
        };
        edge.grpc = addr("grpc=")?;
        edge.metrics = addr("metrics=")?;
        Ok(edge)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reaps the process: a crash, as abrupt as it gets.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its last stderr lines, joined.
    pub fn stderr(&self) -> String {
        // Give the reader thread a moment to collect what a dying process wrote.
        std::thread::sleep(Duration::from_millis(100));
        let t = self.stderr_tail.lock().expect("stderr lock");
        if t.is_empty() { "(it wrote nothing to stderr)".into() } else { t.join(" | ") }
    }

    /// `Err` with its last words if it has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Err(format!("`serve` exited ({s}) during the load: {}", self.stderr())),
            _ => Ok(()),
        }
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
