//! How every PostgreSQL connection is made: `DATABASE_URL` with libpq's `sslmode` and `sslrootcert`
//! read once into a [`PgEndpoint`], whose TLS connector the pool, the key-change listener, the
//! migrations and the CLI all use.
//!
//! `sslmode` follows libpq: `disable` (plain), `require` (encrypted, certificate not checked —
//! unless a CA is given, then the chain is, as libpq does when a root certificate file exists),
//! `verify-ca` (the chain must lead to a trusted CA), `verify-full` (the chain and the host name).
//! `prefer` and `allow` are refused: they fall back to a plain connection whenever TLS fails, so
//! anyone on the path can switch TLS off, and a gateway's key store should say what it needs.
//! Without `sslmode` the connection is plain, as it was before TLS was configurable.

use std::path::Path;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{CaBundle, Trust, Verification, client_config, explain_tls_failure, tls_failure};

/// The setting that names a CA bundle for PostgreSQL, for messages.
pub const DATABASE_CA_FILE_SETTING: &str = "MAAS_AUTHZ_DATABASE_CA_FILE";

/// libpq's `sslmode`, as far as we accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self, PgEndpointError> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "prefer" | "allow" => Err(PgEndpointError::FallbackSslMode(text.to_owned())),
            other => Err(PgEndpointError::UnknownSslMode(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Why `DATABASE_URL` (with `MAAS_AUTHZ_DATABASE_CA_FILE`) cannot be used. A configuration
/// error: retrying does not help. No message contains the URL, which may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum PgEndpointError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    #[error("DATABASE_URL: sslmode={0:?} is not one of disable, require, verify-ca, verify-full")]
    UnknownSslMode(String),
    #[error(
        "DATABASE_URL: sslmode={0} is refused: it falls back to an unencrypted connection whenever \
         TLS fails, so anyone on the path can switch TLS off; use sslmode=verify-full (or \
         verify-ca, or require for encryption without a certificate check), or sslmode=disable \
         to connect without TLS"
    )]
    FallbackSslMode(String),
    #[error(
        "{setting} is set but DATABASE_URL's sslmode is disable{default}: add sslmode=verify-full \
         (or verify-ca) to DATABASE_URL, or drop {setting}",
        default = if *.explicit { "" } else { " (the default without sslmode)" }
    )]
    CaWithoutTls {
        setting: &'static str,
        explicit: bool,
    },
    #[error(
        "DATABASE_URL has sslrootcert= and MAAS_AUTHZ_DATABASE_CA_FILE is set: name the CA in one \
         place"
    )]
    TwoCaSources,
    #[error("DATABASE_URL's sslrootcert: {0}")]
    RootCertificate(#[source] crate::tls::CaFileError),
    #[error("DATABASE_URL: sslrootcert=system needs sslmode=verify-full (as in libpq), not {0}")]
    SystemRootsNeedVerifyFull(&'static str),
    #[error(
        "DATABASE_URL: sslmode={0} needs a TCP host; PostgreSQL does not use TLS over a Unix socket \
         (use sslmode=disable there)"
    )]
    TlsOverUnixSocket(&'static str),
    #[error("cannot set up TLS for DATABASE_URL: {0}")]
    Tls(rustls::Error),
}

/// Why a connection could not be made. Only [`PgConnectError::Unavailable`] may go away by
/// itself; the others need the configuration (ours or the server's) to change.
#[derive(Debug, thiserror::Error)]
pub enum PgConnectError {
    /// The TLS handshake failed: the certificate did not verify, or the server does not do TLS.
    #[error("{0}")]
    Tls(String),
    /// The server refused a plain connection (its `pg_hba.conf` only has `hostssl` lines for us).
    #[error("{0}")]
    TlsRequired(String),
    /// Unreachable, timed out, authentication, anything else, as the driver reports it.
    #[error("{0}")]
    Unavailable(String),
}

impl PgConnectError {
    pub fn is_transient(&self) -> bool {
        matches!(self, PgConnectError::Unavailable(_))
    }
}

/// A live connection's driver half, as [`PgEndpoint::connect`] returns it (poll or spawn it).
pub type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// Where and how to connect: the driver's settings with `sslmode` applied, and the TLS
/// connector built for it. Cheap to clone.
#[derive(Clone)]
pub struct PgEndpoint {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    sslmode: SslMode,
    /// What server certificates are checked against, when they are.
    trust: Option<Trust>,
}

impl std::fmt::Debug for PgEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres redacts the password in its Debug.
        f.debug_struct("PgEndpoint")
            .field("config", &self.config)
            .field("sslmode", &self.sslmode)
            .field("trust", &self.trust.as_ref().map(Trust::described_as))
            .finish_non_exhaustive()
    }
}

/// Where a server's chain must lead, when a CA was named.
enum NamedRoots {
    /// `sslrootcert=system`: the public roots.
    System,
    Bundle(Trust),
}

impl PgEndpoint {
    /// The one place a PostgreSQL connector is built: parses `database_url` (a `postgres://` URL
    /// or libpq `key=value` string), takes out `sslmode` and `sslrootcert`, and prepares the TLS
    /// client they ask for; `ca_file` is `MAAS_AUTHZ_DATABASE_CA_FILE`.
    pub fn new(database_url: &str, ca_file: Option<&CaBundle>) -> Result<Self, PgEndpointError> {
        let (driver_url, tls) = take_tls_parameters(database_url);
        let mut config = driver_url
            .parse::<tokio_postgres::Config>()
            .map_err(|error| PgEndpointError::InvalidUrl(error_chain(&error)))?;
        let named_roots = match (tls.sslrootcert.as_deref(), ca_file) {
            (Some(_), Some(_)) => return Err(PgEndpointError::TwoCaSources),
            (Some("system"), None) => Some(NamedRoots::System),
            (Some(path), None) => {
                let bundle =
                    CaBundle::read(Path::new(path)).map_err(PgEndpointError::RootCertificate)?;
                Some(NamedRoots::Bundle(Trust::bundle(
                    &bundle,
                    "DATABASE_URL's sslrootcert",
                )))
            }
            (None, Some(bundle)) => Some(NamedRoots::Bundle(Trust::bundle(
                bundle,
                DATABASE_CA_FILE_SETTING,
            ))),
            (None, None) => None,
        };
        let sslmode = match (tls.sslmode.as_deref(), &named_roots) {
            (Some(text), _) => SslMode::parse(text)?,
            // libpq: the system roots make verify-full the default.
            (None, Some(NamedRoots::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Disable,
        };
        match (sslmode, &named_roots) {
            (SslMode::Disable, Some(_)) => {
                return Err(PgEndpointError::CaWithoutTls {
                    setting: if ca_file.is_some() {
                        DATABASE_CA_FILE_SETTING
                    } else {
                        "DATABASE_URL's sslrootcert"
                    },
                    explicit: tls.sslmode.is_some(),
                });
            }
            (SslMode::Require | SslMode::VerifyCa, Some(NamedRoots::System)) => {
                return Err(PgEndpointError::SystemRootsNeedVerifyFull(sslmode.as_str()));
            }
            _ => {}
        }
        let (verification, trust) = match (sslmode, named_roots) {
            // Never used (no TLS is attempted), but the connector needs a configuration.
            (SslMode::Disable, _) => (Verification::ChainAndHostName, None),
            (SslMode::Require, None) => (Verification::Nothing, None),
            (SslMode::Require | SslMode::VerifyCa, Some(NamedRoots::Bundle(trust))) => {
                (Verification::Chain, Some(trust))
            }
            (SslMode::Require | SslMode::VerifyCa, _) => {
                (Verification::Chain, Some(Trust::public_roots()))
            }
            (SslMode::VerifyFull, Some(NamedRoots::Bundle(trust))) => {
                (Verification::ChainAndHostName, Some(trust))
            }
            (SslMode::VerifyFull, _) => {
                (Verification::ChainAndHostName, Some(Trust::public_roots()))
            }
        };
        if sslmode != SslMode::Disable
            && config
                .get_hosts()
                .iter()
                .any(|host| !matches!(host, Host::Tcp(_)))
        {
            return Err(PgEndpointError::TlsOverUnixSocket(sslmode.as_str()));
        }
        config.ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let client = client_config(
            verification,
            trust.as_ref().unwrap_or(&Trust::public_roots()),
            // What PostgreSQL 17 expects (and older servers ignore).
            &[b"postgresql"],
        )
        .map_err(PgEndpointError::Tls)?;
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(client),
            sslmode,
            trust,
        })
    }

    /// The driver's settings, e.g. to set timeouts or the application name.
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The connector, for a pool that connects by itself.
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// Whether this endpoint sends everything in the clear to a host beyond this machine.
    pub fn is_plain_over_network(&self) -> bool {
        self.sslmode == SslMode::Disable
            && self.config.get_hosts().iter().any(|host| match host {
                Host::Tcp(name) => {
                    name != "localhost"
                        && !name
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
                _ => false,
            })
    }

    /// One connection, TLS as configured.
    pub async fn connect(&self) -> Result<(tokio_postgres::Client, PgConnection), PgConnectError> {
        self.config
            .connect(self.tls.clone())
            .await
            .map_err(|error| self.connect_error(&error))
    }

    /// Explains a failure to connect: which TLS check failed and against what, or that the
    /// server wants TLS; anything else as the driver says it.
    pub fn connect_error(&self, error: &tokio_postgres::Error) -> PgConnectError {
        let context = format!("DATABASE_URL (sslmode={})", self.sslmode.as_str());
        if let Some(tls) = tls_failure(error) {
            let mut message = format!(
                "{context}: {}",
                explain_tls_failure(tls, self.trust.as_ref())
            );
            if matches!(
                tls,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                )
            ) {
                message.push_str(
                    "; connect by a name the certificate holds, or use sslmode=verify-ca to check \
                     the CA only",
                );
            }
            return PgConnectError::Tls(message);
        }
        let chain = error_chain(error);
        if chain.contains("server does not support TLS") {
            return PgConnectError::Tls(format!(
                "{context}: the server does not accept TLS connections (its ssl setting is off); \
                 turn TLS on in the server, or use sslmode=disable"
            ));
        }
        if let Some(db_error) = error.as_db_error()
            && db_error.code()
                == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db_error.message().contains("no encryption")
        {
            return PgConnectError::TlsRequired(format!(
                "{context}: the server refuses connections without TLS ({}); set sslmode=verify-full \
                 (or verify-ca, or require) in DATABASE_URL",
                db_error.message()
            ));
        }
        PgConnectError::Unavailable(chain)
    }
}

/// `error` and its causes, as one line (tokio-postgres prints only the outermost).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// libpq's TLS parameters, which tokio-postgres does not know (or knows only in part).
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParameters {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off a connection string; the rest goes to tokio-postgres
/// unchanged. A string we cannot read goes on whole, so that tokio-postgres reports it.
fn take_tls_parameters(url: &str) -> (String, TlsParameters) {
    for scheme in ["postgres://", "postgresql://"] {
        if url.starts_with(scheme) {
            return take_from_url(url, scheme.len());
        }
    }
    take_from_key_values(url).unwrap_or_else(|| (url.to_owned(), TlsParameters::default()))
}

fn take_from_url(url: &str, scheme_len: usize) -> (String, TlsParameters) {
    let mut parameters = TlsParameters::default();
    let after_scheme = &url[scheme_len..];
    // As tokio-postgres reads it: credentials end at the first '@', the query starts at the
    // first '?' after them.
    let authority = after_scheme.find('@').map_or(0, |at| at + 1);
    let Some(question) = after_scheme[authority..].find('?') else {
        return (url.to_owned(), parameters);
    };
    let query_start = scheme_len + authority + question + 1;
    let mut kept = Vec::new();
    for pair in url[query_start..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || percent_decode_str(value).decode_utf8_lossy().into_owned();
        match percent_decode_str(key).decode_utf8_lossy().as_ref() {
            "sslmode" => parameters.sslmode = Some(value()),
            "sslrootcert" => parameters.sslrootcert = Some(value()),
            _ => kept.push(pair),
        }
    }
    let base = &url[..query_start - 1];
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, parameters)
}

/// libpq's `key = value` form, read as tokio-postgres reads it; `None` if it cannot be.
fn take_from_key_values(text: &str) -> Option<(String, TlsParameters)> {
    let mut parameters = TlsParameters::default();
    let mut kept = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        if key_end == 0 {
            // tokio-postgres stops reading here; so do we, keeping the rest as it is.
            kept.push(rest);
            break;
        }
        let key = &rest[..key_end];
        let after_equals = rest[key_end..].trim_start().strip_prefix('=')?.trim_start();
        let (value, length) = key_value(after_equals)?;
        let pair_end = rest.len() - after_equals.len() + length;
        match key {
            "sslmode" => parameters.sslmode = Some(value),
            "sslrootcert" => parameters.sslrootcert = Some(value),
            _ => kept.push(&rest[..pair_end]),
        }
        rest = rest[pair_end..].trim_start();
    }
    Some((kept.join(" "), parameters))
}

/// One value (quoted or not, backslash escapes) and how many bytes it took.
fn key_value(text: &str) -> Option<(String, usize)> {
    let quoted = text.starts_with('\'');
    let mut value = String::new();
    let mut chars = text.char_indices().skip(usize::from(quoted));
    while let Some((index, c)) = chars.next() {
        match c {
            '\'' if quoted => return Some((value, index + 1)),
            c if c.is_whitespace() && !quoted => {
                return (!value.is_empty()).then_some((value, index));
            }
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            c => value.push(c),
        }
    }
    (!quoted && !value.is_empty()).then_some((value, text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(sslmode: Option<&str>, sslrootcert: Option<&str>) -> TlsParameters {
        TlsParameters {
            sslmode: sslmode.map(str::to_owned),
            sslrootcert: sslrootcert.map(str::to_owned),
        }
    }

    #[test]
    fn a_url_gives_up_its_tls_parameters_and_keeps_the_others() {
        let (rest, parameters) = take_tls_parameters(
            "postgres://u:p%40ss@db:5432/maas?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        );

        assert_eq!(
            rest,
            "postgres://u:p%40ss@db:5432/maas?application_name=x&connect_timeout=5"
        );
        assert_eq!(parameters, tls(Some("verify-full"), Some("/etc/ca.pem")));
    }

    #[test]
    fn a_url_with_only_tls_parameters_loses_its_question_mark() {
        let (rest, parameters) = take_tls_parameters("postgresql://db/maas?sslmode=require");

        assert_eq!(rest, "postgresql://db/maas");
        assert_eq!(parameters, tls(Some("require"), None));
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, parameters) =
            take_tls_parameters("postgres://u:pa?ss@db/maas?sslmode=verify-ca");

        assert_eq!(rest, "postgres://u:pa?ss@db/maas");
        assert_eq!(parameters, tls(Some("verify-ca"), None));
    }

    #[test]
    fn a_key_value_string_gives_up_its_tls_parameters() {
        let (rest, parameters) = take_tls_parameters(
            "host=db  password='it s' sslmode = verify-full sslrootcert='/etc/my ca.pem' dbname=maas",
        );

        assert_eq!(rest, "host=db password='it s' dbname=maas");
        assert_eq!(parameters, tls(Some("verify-full"), Some("/etc/my ca.pem")));
    }

    #[test]
    fn a_key_value_string_keeps_escapes_in_the_values_it_passes_on() {
        let (rest, parameters) = take_tls_parameters(r"host=db password='a\'b c' sslmode=require");

        assert_eq!(rest, r"host=db password='a\'b c'");
        assert_eq!(parameters, tls(Some("require"), None));
    }

    #[test]
    fn an_unreadable_key_value_string_goes_to_the_driver_whole() {
        let (rest, parameters) = take_tls_parameters("host=db password='open sslmode=require");

        assert_eq!(rest, "host=db password='open sslmode=require");
        assert_eq!(parameters, TlsParameters::default());
    }

    fn endpoint_error(url: &str) -> String {
        PgEndpoint::new(url, None).unwrap_err().to_string()
    }

    #[test]
    fn every_libpq_mode_but_the_fallback_ones_is_accepted() {
        for (url, mode) in [
            ("postgres://db/maas", SslMode::Disable),
            ("postgres://db/maas?sslmode=disable", SslMode::Disable),
            ("postgres://db/maas?sslmode=require", SslMode::Require),
            ("postgres://db/maas?sslmode=verify-ca", SslMode::VerifyCa),
            (
                "postgres://db/maas?sslmode=verify-full",
                SslMode::VerifyFull,
            ),
            ("host=db sslmode=verify-full", SslMode::VerifyFull),
            ("postgres://db/maas?sslrootcert=system", SslMode::VerifyFull),
        ] {
            let endpoint = PgEndpoint::new(url, None).unwrap();

            assert_eq!(endpoint.sslmode(), mode, "{url}");
        }
    }

    #[test]
    fn the_driver_is_told_to_use_tls_exactly_when_a_mode_asks_for_it() {
        let plain = PgEndpoint::new("postgres://db/maas", None).unwrap();
        let verified = PgEndpoint::new("postgres://db/maas?sslmode=verify-ca", None).unwrap();

        assert_eq!(
            plain.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        assert_eq!(
            verified.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn prefer_and_allow_are_refused_with_the_reason() {
        for mode in ["prefer", "allow"] {
            let error = endpoint_error(&format!("postgres://u:secret@db/maas?sslmode={mode}"));

            assert!(
                error.starts_with(&format!("DATABASE_URL: sslmode={mode} is refused: it falls back to an unencrypted connection")),
                "{error}"
            );
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn an_unknown_sslmode_lists_the_accepted_ones() {
        let error = endpoint_error("postgres://u:secret@db/maas?sslmode=verify_full");

        assert_eq!(
            error,
            "DATABASE_URL: sslmode=\"verify_full\" is not one of disable, require, verify-ca, verify-full"
        );
    }

    #[test]
    fn a_ca_without_an_sslmode_asks_for_one_instead_of_connecting_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(&path, ca.pem()).unwrap();
        let bundle = CaBundle::read(&path).unwrap();

        let error = PgEndpoint::new("postgres://db/maas", Some(&bundle))
            .unwrap_err()
            .to_string();

        assert_eq!(
            error,
            "MAAS_AUTHZ_DATABASE_CA_FILE is set but DATABASE_URL's sslmode is disable (the default \
             without sslmode): add sslmode=verify-full (or verify-ca) to DATABASE_URL, or drop \
             MAAS_AUTHZ_DATABASE_CA_FILE"
        );
    }

    #[test]
    fn a_missing_sslrootcert_file_is_named() {
        let error = endpoint_error(
            "postgres://db/maas?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        );

        assert_eq!(
            error,
            "DATABASE_URL's sslrootcert: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn the_system_roots_need_verify_full() {
        let error = endpoint_error("postgres://db/maas?sslmode=require&sslrootcert=system");

        assert_eq!(
            error,
            "DATABASE_URL: sslrootcert=system needs sslmode=verify-full (as in libpq), not require"
        );
    }

    #[test]
    fn tls_over_a_unix_socket_is_refused() {
        let error = endpoint_error("host=/var/run/postgresql sslmode=verify-full");

        assert!(
            error.starts_with("DATABASE_URL: sslmode=verify-full needs a TCP host"),
            "{error}"
        );
    }

    #[test]
    fn an_invalid_url_is_reported_without_its_password() {
        let error = endpoint_error("postgres://u:secret@db:notaport/maas");

        assert!(
            error.starts_with(
                "DATABASE_URL is not a valid PostgreSQL URL: invalid connection string"
            ),
            "{error}"
        );
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn plain_connections_beyond_this_machine_are_flagged() {
        let remote = PgEndpoint::new("postgres://db.example.com/maas", None).unwrap();
        let local = PgEndpoint::new("postgres://127.0.0.1/maas", None).unwrap();
        let encrypted =
            PgEndpoint::new("postgres://db.example.com/maas?sslmode=require", None).unwrap();

        assert!(remote.is_plain_over_network());
        assert!(!local.is_plain_over_network());
        assert!(!encrypted.is_plain_over_network());
    }
}
