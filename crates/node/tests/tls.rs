//! Secure links, with the server in-process on port 0 and certificates made at test time: TLS
//! end to end, mutual TLS refusing clients without a trusted certificate, the bearer token
//! (UNAUTHENTICATED without it, open health RPCs), and a server that keeps serving after each
//! refusal.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cleave_codec::{Codec, EncodeOptions};
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::ModelGraph;
use cleave_node::security::Pem;
use cleave_node::{
    AuthToken, ClientError, ClientSecurity, ClientTls, Device, DeviceConfig, EdgeClient, FrameStatus, RunningServer,
    ServerConfig, ServerTls,
};
use cleave_testkit::pki::{CertPem, TestPki};
use tonic::Code;

const TOKEN: &str = "0123456789abcdef-edge-token";

struct Fixture {
    server: RunningServer,
    graph: Arc<ModelGraph>,
    addr: String,
    _dir: tempfile::TempDir,
}

fn server_tls(pki: &TestPki, mutual: bool) -> ServerTls {
    let tls = ServerTls::new(
        Pem::from_bytes("server.pem", pki.server.cert.as_bytes()),
        Pem::from_bytes("server.key", pki.server.key.as_bytes()),
    )
    .unwrap();
    if mutual { tls.with_client_ca(Pem::from_bytes("ca.pem", pki.ca.as_bytes())).unwrap() } else { tls }
}

async fn start(tls: Option<ServerTls>, token: Option<&str>) -> Fixture {
    let config =
        ServerConfig { tls, auth_token: token.map(|t| AuthToken::new(t).unwrap()), ..common::loopback_config() };
    let common::Tiny { server, graph, dir } = common::serve_tiny(config).await;
    let addr = server.grpc_addr.to_string();
    Fixture { server, graph, addr, _dir: dir }
}

fn client_tls(ca: &str, identity: Option<&CertPem>) -> ClientTls {
    let tls = ClientTls::new(Pem::from_bytes("ca.pem", ca.as_bytes())).unwrap();
    match identity {
        Some(id) => tls
            .with_identity(
                Pem::from_bytes("client.pem", id.cert.as_bytes()),
                Pem::from_bytes("client.key", id.key.as_bytes()),
            )
            .unwrap(),
        None => tls,
    }
}

fn security(tls: Option<ClientTls>, token: Option<&str>) -> ClientSecurity {
    ClientSecurity { tls, token: token.map(|t| AuthToken::new(t).unwrap()) }
}

/// A guard against a hang, not a timing assertion: every call here answers in milliseconds.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f).await.unwrap_or_else(|_| panic!("{what}: no answer within 60 s"))
}

/// Two frames of the tail after cut 4, fp32, checked against the local references.
async fn assert_tail_works(f: &Fixture, security: &ClientSecurity, what: &str) {
    let client = bounded(what, EdgeClient::connect_with(&f.addr, 64 << 20, security))
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot connect: {e}"));
    let config = DeviceConfig {
        model_name: "tiny".into(),
        cut: 4,
        encode: EncodeOptions::new(Codec::Fp32),
        max_in_flight: 2,
        timeout: Some(Duration::from_secs(30)),
        fps: None,
        check: true,
    };
    let device = Arc::new(
        Device::new(Arc::new(Engine::new(EngineConfig::default())), f.graph.clone(), Some(client), config).unwrap(),
    );
    let frames: Vec<TensorMap> =
        (0..2).map(|k| f.graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, k))).collect()).collect();
    for frame in bounded(what, device.run(frames)).await {
        let r = &frame.record;
        assert_eq!(r.status, FrameStatus::Remote, "{what}: the frame was not answered by the server: {:?}", r.error);
        let check = r.check.as_ref().unwrap();
        assert!(check.vs_local_tail <= 1e-5, "{what}: the server's tail differs: {check:?}");
        assert!(check.vs_whole <= 1e-5, "{what}: the fp32 answer differs from the whole model: {check:?}");
    }
}

/// Connecting, then asking whether the model is ready, must fail; returns the error.
async fn assert_refused(f: &Fixture, security: &ClientSecurity, what: &str) -> ClientError {
    let result = bounded(what, async {
        let mut c = EdgeClient::connect_with(&f.addr, 64 << 20, security).await?;
        c.model_ready("tiny").await
    })
    .await;
    match result {
        Ok(ready) => panic!("{what}: the server answered (ready = {ready}) instead of refusing"),
        Err(e) => {
            eprintln!("{what}: refused as expected: {e}");
            e
        }
    }
}

fn code(e: &ClientError) -> Option<Code> {
    match e {
        ClientError::Status { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_by_ip_and_by_name() {
    let pki = TestPki::generate();
    let f = start(Some(server_tls(&pki, false)), None).await;
    // The certificate names 127.0.0.1 ...
    assert_tail_works(&f, &security(Some(client_tls(&pki.ca, None)), None), "TLS to 127.0.0.1").await;
    // ... and localhost, checked when the device says which name to expect.
    let by_name = client_tls(&pki.ca, None).with_domain("localhost");
    assert_tail_works(&f, &security(Some(by_name), None), "TLS, domain localhost").await;
    // A name the certificate does not carry is refused.
    let wrong = client_tls(&pki.ca, None).with_domain("edge.example");
    assert_refused(&f, &security(Some(wrong), None), "TLS, wrong domain").await;
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_or_untrusting_clients_fail_cleanly_and_the_server_keeps_serving() {
    let pki = TestPki::generate();
    let f = start(Some(server_tls(&pki, false)), None).await;
    let e = assert_refused(&f, &ClientSecurity::default(), "plaintext client, TLS server").await;
    assert!(!matches!(e, ClientError::Malformed(_)), "{e}");
    // A device that trusts another CA does not accept this server's certificate.
    let e = assert_refused(&f, &security(Some(client_tls(&pki.other_ca, None)), None), "untrusted server").await;
    assert!(format!("{e}").contains("certificate"), "the error should say why: {e}");
    assert_tail_works(&f, &security(Some(client_tls(&pki.ca, None)), None), "TLS after refusals").await;
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let pki = TestPki::generate();
    let f = start(Some(server_tls(&pki, true)), None).await;
    assert_refused(&f, &security(Some(client_tls(&pki.ca, None)), None), "mTLS, no client certificate").await;
    assert_refused(
        &f,
        &security(Some(client_tls(&pki.ca, Some(&pki.other_client))), None),
        "mTLS, a client certificate from another CA",
    )
    .await;
    assert_refused(&f, &ClientSecurity::default(), "mTLS, plaintext client").await;
    assert_tail_works(&f, &security(Some(client_tls(&pki.ca, Some(&pki.client))), None), "mTLS, trusted client").await;
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_unauthenticated_and_health_stays_open() {
    let f = start(None, Some(TOKEN)).await;
    for (token, what) in [(None, "no token"), (Some("not-the-token"), "wrong token"), (Some(&TOKEN[..10]), "a prefix")]
    {
        let e = assert_refused(&f, &security(None, token), what).await;
        assert_eq!(code(&e), Some(Code::Unauthenticated), "{what}: {e}");
        assert!(!format!("{e}").contains(TOKEN), "{what}: the error shows the token: {e}");
        // A tail request is refused the same way, before the server reads it.
        let mut c = EdgeClient::connect_with(&f.addr, 64 << 20, &security(None, token)).await.unwrap();
        let e = bounded(what, c.probe("tiny", 1000)).await.unwrap_err();
        assert_eq!(code(&e), Some(Code::Unauthenticated), "{what}: {e}");
        // ServerLive and ServerReady need no token (probes do not carry one).
        bounded(what, c.rtt(1)).await.unwrap_or_else(|e| panic!("{what}: ServerLive refused: {e}"));
    }
    assert_tail_works(&f, &security(None, Some(TOKEN)), "the right token").await;
    // Surrounding whitespace (a file's trailing newline) is not part of the token.
    assert_tail_works(&f, &security(None, Some(&format!("{TOKEN}\n"))), "the token with a newline").await;
    f.server.shutdown().await.unwrap();
}

/// The acceptance: without a client certificate mutual TLS rejects the connection,
/// without the token the answer is UNAUTHENTICATED, with both it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_token_together() {
    let pki = TestPki::generate();
    let f = start(Some(server_tls(&pki, true)), Some(TOKEN)).await;
    let e = assert_refused(&f, &security(Some(client_tls(&pki.ca, None)), Some(TOKEN)), "token, no certificate").await;
    assert_ne!(code(&e), Some(Code::Unauthenticated), "the TLS handshake should refuse first: {e}");
    let e = assert_refused(&f, &security(Some(client_tls(&pki.ca, Some(&pki.client))), None), "certificate, no token")
        .await;
    assert_eq!(code(&e), Some(Code::Unauthenticated), "{e}");
    assert_tail_works(&f, &security(Some(client_tls(&pki.ca, Some(&pki.client))), Some(TOKEN)), "both").await;
    f.server.shutdown().await.unwrap();
}

#[test]
fn bad_pem_files_are_one_line_errors_naming_the_file() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write(dir.path()).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let truncated = dir.path().join("truncated.pem");
    std::fs::write(&truncated, &pki.server.cert[..pki.server.cert.len() / 2]).unwrap();
    let missing = dir.path().join("missing.pem");

    let cases: Vec<(String, &std::path::Path, cleave_node::SecurityError)> = vec![
        ("missing cert".into(), &missing, ServerTls::load(&missing, &files.server_key, None).unwrap_err()),
        ("garbage cert".into(), &garbage, ServerTls::load(&garbage, &files.server_key, None).unwrap_err()),
        ("truncated cert".into(), &truncated, ServerTls::load(&truncated, &files.server_key, None).unwrap_err()),
        (
            "a cert as key".into(),
            &files.server_cert,
            ServerTls::load(&files.server_cert, &files.server_cert, None).unwrap_err(),
        ),
        (
            "garbage client CA".into(),
            &garbage,
            ServerTls::load(&files.server_cert, &files.server_key, Some(&garbage)).unwrap_err(),
        ),
        // The key does not belong to the certificate: rustls refuses the pair.
        (
            "another key".into(),
            &files.client_key,
            ServerTls::load(&files.server_cert, &files.client_key, None).unwrap_err(),
        ),
        ("missing CA".into(), &missing, ClientTls::load(&missing, None, None).unwrap_err()),
        (
            "garbage client key".into(),
            &garbage,
            ClientTls::load(&files.ca, Some((&files.client_cert, &garbage)), None).unwrap_err(),
        ),
    ];
    for (what, path, e) in cases {
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{what}: the error does not name {}: {msg}", path.display());
        assert!(!msg.contains('\n'), "{what}: not one line: {msg}");
        assert!(!msg.contains("PRIVATE KEY"), "{what}: shows key material: {msg}");
    }
    // Good files load.
    ServerTls::load(&files.server_cert, &files.server_key, Some(&files.ca)).unwrap();
    ClientTls::load(&files.ca, Some((&files.client_cert, &files.client_key)), Some("localhost")).unwrap();
}
