//! TLS for the connections we open (PostgreSQL, Redis): CA bundles, rustls client settings for
//! libpq's verification levels, and certificate failures explained to an operator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// CA certificates read from a PEM file once, at start-up: a server's chain must lead to one.
#[derive(Clone)]
pub struct CaBundle {
    path: PathBuf,
    pem: Arc<[u8]>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.roots.len())
            .finish()
    }
}

/// Why a CA file cannot be used. The messages name the file; callers name the setting.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a PEM file: {reason}", path.display())]
    NotPem { path: PathBuf, reason: String },
    #[error(
        "{} holds no certificate (expected PEM blocks that begin with -----BEGIN CERTIFICATE-----)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error("{}: certificate {number} is not a usable CA certificate: {reason}", path.display())]
    BadCertificate {
        path: PathBuf,
        number: usize,
        reason: String,
    },
}

impl CaBundle {
    /// Reads and checks every certificate in the PEM file at `path`.
    pub fn read(path: &Path) -> Result<Self, CaFileError> {
        let pem = std::fs::read(path).map_err(|source| CaFileError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        let mut roots = RootCertStore::empty();
        for (index, certificate) in CertificateDer::pem_slice_iter(&pem).enumerate() {
            let certificate = certificate.map_err(|error| CaFileError::NotPem {
                path: path.to_owned(),
                reason: error.to_string(),
            })?;
            roots
                .add(certificate)
                .map_err(|error| CaFileError::BadCertificate {
                    path: path.to_owned(),
                    number: index + 1,
                    reason: error.to_string(),
                })?;
        }
        if roots.is_empty() {
            return Err(CaFileError::NoCertificate {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            pem: pem.into(),
            roots: Arc::new(roots),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file as read, for clients that take PEM (the Redis client).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

/// The CA certificates a server's chain is checked against, and how to name them in messages.
#[derive(Clone, Debug)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    described_as: String,
}

impl Trust {
    /// The public web PKI (Mozilla's roots, built in, so that a distroless image needs no files).
    pub fn public_roots() -> Self {
        Self {
            roots: Arc::new(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
            described_as: "the built-in public CA roots (webpki-roots)".to_owned(),
        }
    }

    /// The bundle configured by `setting` (e.g. `MAAS_AUTHZ_DATABASE_CA_FILE`).
    pub fn bundle(bundle: &CaBundle, setting: &str) -> Self {
        Self {
            roots: bundle.roots.clone(),
            described_as: format!("{setting}={}", bundle.path.display()),
        }
    }

    /// Where the roots come from, e.g. `MAAS_AUTHZ_DATABASE_CA_FILE=/etc/ca.pem`.
    pub fn described_as(&self) -> &str {
        &self.described_as
    }
}

/// How much of the server's certificate is checked (libpq's `sslmode` levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Encryption only: any certificate is accepted (libpq's `require`). The handshake still
    /// proves the server holds the key of the certificate it shows.
    Nothing,
    /// The chain must lead to a trusted CA; the host name is not compared (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    ChainAndHostName,
}

/// A rustls client configuration for `verification` against `trust`, offering `alpn`.
pub fn client_config(
    verification: Verification,
    trust: &Trust,
    alpn: &[&[u8]],
) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::Nothing => Arc::new(AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }),
        Verification::Chain => Arc::new(ChainOnly {
            inner: web_pki_verifier(trust, &provider)?,
        }),
        Verification::ChainAndHostName => web_pki_verifier(trust, &provider)?,
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

fn web_pki_verifier(
    trust: &Trust,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
    WebPkiServerVerifier::builder_with_provider(trust.roots.clone(), provider.clone())
        .build()
        .map_err(|error| rustls::Error::General(error.to_string()))
}

/// libpq's `verify-ca`: webpki checks the chain before the name, so a name mismatch means the
/// chain verified.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// libpq's `require` without a CA: any certificate, but its key must sign the handshake.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls error somewhere in `error`'s chain (TLS libraries wrap it in `io::Error`).
pub fn tls_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = error.source();
    }
    None
}

/// What failed in a TLS handshake, in words, naming where the trusted CAs came from.
pub fn explain_tls_failure(error: &rustls::Error, trust: Option<&Trust>) -> String {
    let trusted = trust.map_or("the configured CA", Trust::described_as);
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("the server's certificate is not signed by a CA in {trusted}")
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => format!(
            "the server's certificate is not valid for the host name {:?} (it names {})",
            expected.to_str(),
            if presented.is_empty() {
                "no host at all".to_owned()
            } else {
                presented
                    .iter()
                    .map(|name| presented_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            "the server's certificate is not valid for the host name connected to".to_owned()
        }
        rustls::Error::InvalidCertificate(problem) => {
            format!("the server's certificate does not verify against {trusted}: {problem}")
        }
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// A subject name as webpki reports it (`DnsName("db")`, `IpAddress(10.0.0.1)`), bare.
fn presented_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            name.strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, contents).unwrap();
        (dir, path)
    }

    #[test]
    fn a_missing_ca_file_is_named_with_the_reason() {
        let error = CaBundle::read(Path::new("/nonexistent/ca.pem")).unwrap_err();

        assert_eq!(
            error.to_string(),
            "cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_says_what_was_expected() {
        let (_dir, path) = temp_file(b"just some text\n");

        let error = CaBundle::read(&path).unwrap_err();

        assert_eq!(
            error.to_string(),
            format!(
                "{} holds no certificate (expected PEM blocks that begin with -----BEGIN CERTIFICATE-----)",
                path.display()
            )
        );
    }

    #[test]
    fn a_ca_file_with_a_broken_certificate_says_which_one() {
        let (_dir, path) =
            temp_file(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");

        let error = CaBundle::read(&path).unwrap_err();

        assert!(
            error.to_string().starts_with(&format!(
                "{}: certificate 1 is not a usable CA",
                path.display()
            )),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_issuer_is_explained_with_the_trusted_bundle() {
        let trust = Trust {
            roots: Arc::new(RootCertStore::empty()),
            described_as: "MAAS_AUTHZ_DATABASE_CA_FILE=/etc/ca.pem".to_owned(),
        };
        let error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);

        assert_eq!(
            explain_tls_failure(&error, Some(&trust)),
            "the server's certificate is not signed by a CA in MAAS_AUTHZ_DATABASE_CA_FILE=/etc/ca.pem"
        );
    }

    #[test]
    fn a_name_mismatch_lists_the_names_the_certificate_holds() {
        let error = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("db.example").unwrap(),
            presented: vec![
                "DnsName(\"localhost\")".to_owned(),
                "IpAddress(127.0.0.1)".to_owned(),
            ],
        });

        assert_eq!(
            explain_tls_failure(&error, None),
            "the server's certificate is not valid for the host name \"db.example\" (it names \
             localhost, 127.0.0.1)"
        );
    }

    #[test]
    fn a_rustls_error_is_found_inside_an_io_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );

        let found = tls_failure(&io);

        assert!(matches!(
            found,
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ));
    }
}
