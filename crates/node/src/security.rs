//! Secure links: TLS for the gRPC port (rustls, ring provider, through tonic) and a bearer token
//! checked on every RPC by a tonic interceptor.
//!
//! - [`ServerTls`]: the server's certificate chain and key, and optionally a client CA (mutual
//!   TLS: a client must present a certificate signed by it, or the handshake fails).
//! - [`ClientTls`]: the CA a device trusts for the server, optionally its own certificate and
//!   key (for mutual TLS), and the name to verify the server's certificate against.
//! - [`AuthToken`]: a shared secret. The server's [`RequireToken`] interceptor answers
//!   `UNAUTHENTICATED` when `authorization: Bearer <token>` is missing or wrong, comparing in
//!   constant time; the client's [`AttachToken`] adds the header to every call.
//!
//! Every PEM input is parsed here before anything is served or dialled, so a missing or
//! malformed file is a one-line error naming it. Nothing in this module logs or formats a token
//! or a private key (`Debug` shows where they came from, never their contents).
//!
//! The health RPCs `ServerLive` and `ServerReady` are open: orchestrators' probes (Kubernetes
//! gRPC/exec probes, load balancers) do not carry application tokens, and they reveal one
//! boolean. Every other RPC, metadata and model readiness included (they name the served
//! models), needs the token.

use std::fmt;
use std::path::Path;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The gRPC methods that need no token (see the module's documentation).
pub const OPEN_RPCS: [&str; 2] =
    ["/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"];

/// The request header carrying the token.
pub const AUTHORIZATION: &str = "authorization";

/// Why a TLS or token setting was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{origin}: {message}")]
    Pem { origin: String, message: String },
    #[error("{0}")]
    Tls(String),
    #[error("the auth token {0}")]
    Token(&'static str),
}

/// PEM text and where it came from (a path, or a label for PEM built in memory), for errors.
#[derive(Clone)]
pub struct Pem {
    origin: String,
    text: Vec<u8>,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text may be a private key.
        write!(f, "Pem({})", self.origin)
    }
}

impl Pem {
    /// Reads a PEM file.
    pub fn read(path: &Path) -> Result<Pem, SecurityError> {
        let text = std::fs::read(path)
            .map_err(|e| SecurityError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Ok(Pem { origin: path.display().to_string(), text })
    }

    /// PEM text held in memory; `origin` names it in errors.
    pub fn from_bytes(origin: impl Into<String>, text: impl Into<Vec<u8>>) -> Pem {
        Pem { origin: origin.into(), text: text.into() }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn error(&self, message: impl Into<String>) -> SecurityError {
        SecurityError::Pem { origin: self.origin.clone(), message: message.into() }
    }

    /// Checks that the text holds at least one certificate, and nothing malformed.
    fn check_certificates(&self) -> Result<(), SecurityError> {
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(&self.text) {
            c.map_err(|e| self.error(format!("not a valid PEM certificate ({e})")))?;
            n += 1;
        }
        if n == 0 {
            return Err(self.error("no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"));
        }
        Ok(())
    }

    /// Checks that the text holds a private key (PKCS#8, PKCS#1 or SEC1).
    fn check_private_key(&self) -> Result<(), SecurityError> {
        PrivateKeyDer::from_pem_slice(&self.text).map(|_| ()).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                self.error("no PEM private key in it (expected PKCS#8, PKCS#1 or SEC1)")
            }
            e => self.error(format!("not a valid PEM private key ({e})")),
        })
    }
}

/// The server's side of TLS.
#[derive(Clone, Debug)]
pub struct ServerTls {
    cert: Pem,
    key: Pem,
    client_ca: Option<Pem>,
}

impl ServerTls {
    /// The server's certificate chain (leaf first) and its private key.
    pub fn new(cert: Pem, key: Pem) -> Result<ServerTls, SecurityError> {
        cert.check_certificates()?;
        key.check_private_key()?;
        let tls = ServerTls { cert, key, client_ca: None };
        // Let rustls build it once now, so a key that does not fit is refused before serving.
        tonic::transport::Server::builder().tls_config(tls.tonic_config()).map_err(|e| tls.build_error(&e))?;
        Ok(tls)
    }

    /// Mutual TLS: clients must present a certificate signed by `ca`.
    pub fn with_client_ca(mut self, ca: Pem) -> Result<ServerTls, SecurityError> {
        ca.check_certificates()?;
        self.client_ca = Some(ca);
        tonic::transport::Server::builder().tls_config(self.tonic_config()).map_err(|e| self.build_error(&e))?;
        Ok(self)
    }

    /// Reads the PEM files (`cleave serve --tls-cert --tls-key [--tls-client-ca]`).
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, SecurityError> {
        let tls = ServerTls::new(Pem::read(cert)?, Pem::read(key)?)?;
        match client_ca {
            Some(ca) => tls.with_client_ca(Pem::read(ca)?),
            None => Ok(tls),
        }
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    fn build_error(&self, e: &dyn std::error::Error) -> SecurityError {
        let files = match &self.client_ca {
            Some(ca) => format!("{}, {} and {}", self.cert.origin, self.key.origin, ca.origin),
            None => format!("{} and {}", self.cert.origin, self.key.origin),
        };
        SecurityError::Tls(format!("{files}: {}", error_chain(e)))
    }

    pub(crate) fn tonic_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert.text, &self.key.text))
            // A peer that opens a connection and never finishes the handshake holds a task.
            .timeout(std::time::Duration::from_secs(10));
        match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(&ca.text)),
            None => config,
        }
    }

    pub(crate) fn describe(&self) -> &'static str {
        if self.is_mutual() { "TLS with client certificates" } else { "TLS" }
    }
}

/// The device's side of TLS.
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca: Pem,
    identity: Option<(Pem, Pem)>,
    domain: Option<String>,
}

impl ClientTls {
    /// Trust servers whose certificate `ca` signed.
    pub fn new(ca: Pem) -> Result<ClientTls, SecurityError> {
        ca.check_certificates()?;
        Ok(ClientTls { ca, identity: None, domain: None })
    }

    /// Present this certificate and key (for a server that requires client certificates).
    pub fn with_identity(mut self, cert: Pem, key: Pem) -> Result<ClientTls, SecurityError> {
        cert.check_certificates()?;
        key.check_private_key()?;
        self.identity = Some((cert, key));
        Ok(self)
    }

    /// Verify the server's certificate against `name` instead of the host dialled.
    pub fn with_domain(mut self, name: impl Into<String>) -> ClientTls {
        self.domain = Some(name.into());
        self
    }

    /// Reads the PEM files (`cleave run --tls-ca [--tls-cert --tls-key] [--tls-domain]`).
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>, domain: Option<&str>) -> Result<ClientTls, SecurityError> {
        let mut tls = ClientTls::new(Pem::read(ca)?)?;
        if let Some((cert, key)) = identity {
            tls = tls.with_identity(Pem::read(cert)?, Pem::read(key)?)?;
        }
        if let Some(d) = domain {
            tls = tls.with_domain(d);
        }
        Ok(tls)
    }

    pub(crate) fn tonic_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca.text));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(&cert.text, &key.text));
        }
        if let Some(d) = &self.domain {
            config = config.domain_name(d.clone());
        }
        config
    }

    pub(crate) fn origins(&self) -> String {
        let mut v = vec![self.ca.origin.as_str()];
        if let Some((c, k)) = &self.identity {
            v.push(&c.origin);
            v.push(&k.origin);
        }
        v.join(", ")
    }
}

/// A bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct AuthToken {
    /// `Bearer <token>`, the header value a client sends.
    header: MetadataValue<Ascii>,
    digest: [u8; 32],
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl AuthToken {
    /// A token from text such as a file's contents: surrounding whitespace (a trailing newline)
    /// is dropped; the rest must be non-empty printable ASCII without spaces.
    pub fn new(text: &str) -> Result<AuthToken, SecurityError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(SecurityError::Token("is empty"));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecurityError::Token("must be printable ASCII without spaces"));
        }
        let header = MetadataValue::try_from(format!("Bearer {t}"))
            .map_err(|_| SecurityError::Token("must be printable ASCII without spaces"))?;
        Ok(AuthToken { header, digest: Sha256::digest(t.as_bytes()).into() })
    }

    /// Whether `presented` is this token. The comparison takes the same time wherever the two
    /// differ: both are hashed to 32 bytes, compared without an early exit, so neither the
    /// position of the first wrong byte nor the token's length leaks.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        let diff = d.iter().zip(&self.digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// The server's interceptor: with a token, every RPC but [`OPEN_RPCS`] must carry
/// `authorization: Bearer <token>`, else `UNAUTHENTICATED`. Without one it lets everything by.
#[derive(Clone, Debug, Default)]
pub struct RequireToken {
    token: Option<AuthToken>,
}

impl RequireToken {
    pub fn new(token: Option<AuthToken>) -> RequireToken {
        RequireToken { token }
    }
}

/// Set on a request's extensions by [`MarkOpenRpcs`] when it calls one of [`OPEN_RPCS`]
/// (extensions are the server's own; a client cannot set them).
#[derive(Clone, Copy, Debug)]
pub struct OpenRpc;

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else { return Ok(request) };
        if request.extensions().get::<OpenRpc>().is_some() {
            return Ok(request);
        }
        let Some(value) = request.metadata().get(AUTHORIZATION) else {
            return Err(Status::unauthenticated("this server needs a bearer token (authorization: Bearer <token>)"));
        };
        let v = value.as_bytes();
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let presented = match v.get(..7) {
            Some(s) if s.eq_ignore_ascii_case(b"bearer ") => &v[7..],
            _ => return Err(Status::unauthenticated("the authorization header is not `Bearer <token>`")),
        };
        if token.matches(presented) { Ok(request) } else { Err(Status::unauthenticated("wrong bearer token")) }
    }
}

/// The client's interceptor: adds the token, when there is one, to every call.
#[derive(Clone, Debug, Default)]
pub struct AttachToken {
    token: Option<AuthToken>,
}

impl AttachToken {
    pub fn new(token: Option<AuthToken>) -> AttachToken {
        AttachToken { token }
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.token {
            request.metadata_mut().insert(AUTHORIZATION, t.header.clone());
        }
        Ok(request)
    }
}

/// A layer that marks calls to [`OPEN_RPCS`] with [`OpenRpc`]: tonic's interceptors see the
/// metadata and extensions of a request, not its path.
#[derive(Clone, Copy, Debug, Default)]
pub struct MarkOpenRpcs;

impl<S> tower_layer::Layer<S> for MarkOpenRpcs {
    type Service = MarkOpenRpcsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MarkOpenRpcsService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct MarkOpenRpcsService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for MarkOpenRpcsService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if OPEN_RPCS.contains(&req.uri().path()) {
            req.extensions_mut().insert(OpenRpc);
        }
        self.inner.call(req)
    }
}

/// An error and its sources on one line (tonic's transport errors say little at the top).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut last = s.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if m != last {
            s.push_str(": ");
            s.push_str(&m);
        }
        last = m;
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(i: &mut RequireToken, header: Option<&str>, open: bool) -> Result<(), tonic::Code> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert(AUTHORIZATION, h.parse().unwrap());
        }
        if open {
            r.extensions_mut().insert(OpenRpc);
        }
        i.call(r).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn the_interceptor_wants_the_exact_token() {
        let mut i = RequireToken::new(Some(AuthToken::new("s3cret\n").unwrap()));
        assert_eq!(call(&mut i, Some("Bearer s3cret"), false), Ok(()));
        assert_eq!(call(&mut i, Some("bearer s3cret"), false), Ok(()));
        for bad in [None, Some("Bearer s3cre"), Some("Bearer s3cret2"), Some("Basic s3cret"), Some("s3cret"), Some("")]
        {
            assert_eq!(call(&mut i, bad, false), Err(tonic::Code::Unauthenticated), "{bad:?}");
        }
        // Health RPCs are open.
        assert_eq!(call(&mut i, None, true), Ok(()));
        // No token configured: everything passes.
        assert_eq!(call(&mut RequireToken::new(None), None, false), Ok(()));
    }

    #[test]
    fn tokens_are_validated_and_never_printed() {
        assert!(AuthToken::new(" \n").is_err());
        assert!(AuthToken::new("two words").is_err());
        assert!(AuthToken::new("naïve").is_err());
        let t = AuthToken::new("hunter2").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        assert!(!format!("{:?}", RequireToken::new(Some(t.clone()))).contains("hunter2"));
        assert!(t.matches(b"hunter2") && !t.matches(b"hunter3") && !t.matches(b""));
    }

    #[test]
    fn bad_pem_is_an_error_naming_its_origin() {
        let e = ServerTls::new(Pem::from_bytes("a.pem", "hello"), Pem::from_bytes("k.pem", "x")).unwrap_err();
        assert!(e.to_string().starts_with("a.pem: no PEM certificate"), "{e}");
        let e = ClientTls::new(Pem::from_bytes("ca.pem", "-----BEGIN CERTIFICATE-----\n!!!\n")).unwrap_err();
        assert!(e.to_string().starts_with("ca.pem: "), "{e}");
        let e = Pem::read(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read /nonexistent/ca.pem: "), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}
