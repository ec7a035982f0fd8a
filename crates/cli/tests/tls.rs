//! `cleave serve` with mutual TLS and a bearer token, as a real process, and `cleave run`
//! against it; certificates made at test time. Also: the metrics port stays plain HTTP, a device
//! without the token gets a one-line UNAUTHENTICATED error, and a bad PEM file is a one-line
//! error naming it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cleave_testkit::pki::TestPki;
use serde_json::Value;

fn cleave() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cleave"));
    // The token comes from the files the tests name, never from the environment.
    c.env_remove("CLEAVE_AUTH_TOKEN");
    c
}

fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx")
}

/// A `cleave serve` process on free ports, killed when dropped.
struct Server {
    child: Child,
    grpc: String,
    metrics: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = cleave()
            .args(["serve", "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cleave serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("listening ") => break l,
                Some(Ok(_)) => continue,
                _ => {
                    let status = child.wait().unwrap();
                    panic!("cleave serve exited ({status}) before listening");
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().to_owned();
        Server { grpc: field("grpc="), metrics: field("metrics="), child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn serve_with_mutual_tls_and_a_token_and_run_against_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = TestPki::generate().write(dir.path()).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a-long-random-edge-token\n").unwrap();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();

    let model_arg = format!("tiny={}", model().display());
    let server = Server::start(&[
        "--model",
        &model_arg,
        "--tls-cert",
        p(&files.server_cert),
        "--tls-key",
        p(&files.server_key),
        "--tls-client-ca",
        p(&files.ca),
        "--auth-token-file",
        p(&token),
    ]);

    let run = |extra: &[&str]| {
        cleave()
            .arg("run")
            .arg(model())
            .args(["--model-name", "tiny", "--edge", &server.grpc, "--cut", "5", "--codec", "fp32"])
            .args(["--frames", "2", "--check", "--json", "--timeout", "60s"])
            .args(["--tls-ca", p(&files.ca), "--tls-cert", p(&files.client_cert), "--tls-key", p(&files.client_key)])
            .args(extra)
            .output()
            .unwrap()
    };

    let out = run(&["--auth-token-file", p(&token)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleave run failed ({}): {stderr}", out.status);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}; stderr: {stderr}"));
    let frames = v["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 2);
    for f in frames {
        assert_eq!(f["status"], "remote", "{f}");
        let tail = f["check"]["vs_local_tail"].as_f64().unwrap();
        let whole = f["check"]["vs_whole"].as_f64().unwrap();
        assert!(tail <= 1e-5 && whole <= 1e-5, "the answer differs from the local one: {f}");
    }

    // A wrong token: a one-line error that says UNAUTHENTICATED and does not show either token.
    let out = run(&["--auth-token-file", p(&wrong)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cleave run with a wrong token succeeded");
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(error[0].contains("Unauthenticated"), "{stderr}");
    assert!(!stderr.contains("not-the-token") && !stderr.contains("a-long-random"), "a token was printed: {stderr}");

    // The metrics port is plain HTTP, and saw the requests.
    let mut s = std::net::TcpStream::connect(&server.metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("nv_inference_request_success{model=\"tiny\"") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[test]
fn a_bad_pem_file_is_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = TestPki::generate().write(dir.path()).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let model_arg = format!("tiny={}", model().display());
    let out = cleave()
        .args(["serve", "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--model", &model_arg])
        .args(["--tls-cert", p(&garbage), "--tls-key", p(&files.server_key)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cleave serve accepted a garbage certificate");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(error[0].contains(p(&garbage)), "{stderr}");
}
