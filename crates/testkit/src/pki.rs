//! Test certificates made at test time (rcgen, ECDSA P-256): a CA, a server certificate for
//! `localhost` and 127.0.0.1, a client certificate, and a second CA with its own client, so
//! tests can present a certificate the server must not trust. Nothing is ever written to the
//! repository.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct CertPem {
    pub cert: String,
    pub key: String,
}

/// Everything a TLS test needs, PEM.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// The CA that signs `server` and `client`.
    pub ca: String,
    /// For `localhost` and 127.0.0.1, signed by `ca`.
    pub server: CertPem,
    /// A client certificate (`device-1`), signed by `ca`.
    pub client: CertPem,
    /// A CA the server does not know.
    pub other_ca: String,
    /// A client certificate signed by `other_ca`.
    pub other_client: CertPem,
}

/// Paths of a [`TestPki`] written to a directory.
#[derive(Clone, Debug)]
pub struct PkiFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("a CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = p.self_signed(&key).expect("a self-signed CA");
    (cert.pem(), Issuer::new(p, key))
}

fn leaf(names: &[&str], usage: ExtendedKeyUsagePurpose, issuer: &Issuer<'_, KeyPair>) -> CertPem {
    let key = KeyPair::generate().expect("a key");
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, issuer).expect("a signed certificate");
    CertPem { cert: cert.pem(), key: key.serialize_pem() }
}

impl TestPki {
    pub fn generate() -> TestPki {
        let (ca_pem, issuer) = ca("cleave test CA");
        let (other_pem, other) = ca("some other CA");
        TestPki {
            server: leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, &issuer),
            client: leaf(&["device-1"], ExtendedKeyUsagePurpose::ClientAuth, &issuer),
            other_client: leaf(&["intruder"], ExtendedKeyUsagePurpose::ClientAuth, &other),
            ca: ca_pem,
            other_ca: other_pem,
        }
    }

    /// Writes every PEM into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<PkiFiles> {
        let w = |name: &str, text: &str| -> std::io::Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            Ok(p)
        };
        Ok(PkiFiles {
            ca: w("ca.pem", &self.ca)?,
            server_cert: w("server.pem", &self.server.cert)?,
            server_key: w("server.key", &self.server.key)?,
            client_cert: w("client.pem", &self.client.cert)?,
            client_key: w("client.key", &self.client.key)?,
            other_ca: w("other-ca.pem", &self.other_ca)?,
            other_client_cert: w("other-client.pem", &self.other_client.cert)?,
            other_client_key: w("other-client.key", &self.other_client.key)?,
        })
    }
}
