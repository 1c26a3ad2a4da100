//! `maas-authz check`: one ext_authz Check, built as Envoy builds it, sent to a running server,
//! and its decision printed for people or scripts (so the hot path can be tried without grpcurl).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValueOption, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use serde::Serialize;
use tonic::transport::Endpoint;

use crate::assertion::HEADER_IDENTITY_ASSERTION;
use crate::authorizer::CONTEXT_EXTENSION_MODEL;
use crate::config::{CheckCommand, OutputFormat, SecretSetting};
use crate::gateway_headers::HEADER_REASON;

/// What Check decided, as Envoy would act on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Whether Envoy forwards the request.
    pub allowed: bool,
    /// The HTTP status the client gets from Envoy for a denial; 200 when forwarded.
    pub status: u16,
    /// Why it was denied (the `x-ext-auth-reason` header); `null` when allowed.
    pub reason: Option<String>,
    /// Allowed: the headers Envoy stamps on the request before it goes on. Denied: the headers
    /// of the answer the client gets.
    pub headers: BTreeMap<String, String>,
    /// The request headers Envoy removes before the request goes on (the credentials).
    pub headers_removed: Vec<String>,
    /// Allowed: the headers Envoy adds to the model's response (the `x-ratelimit-*` ones).
    pub response_headers: BTreeMap<String, String>,
    /// The body of a denial.
    pub body: Option<String>,
    /// The ext_authz dynamic metadata, for Envoy's later filters (rate limit, access log).
    pub dynamic_metadata: BTreeMap<String, serde_json::Value>,
}

/// Asks the server's Check and prints its decision to `out`. An `Err` is neither decision: the
/// server could not be reached or did not answer one.
pub async fn run_check(command: &CheckCommand, out: &mut impl Write) -> anyhow::Result<Decision> {
    let mut command = command.clone();
    if let Some(path) = command.key_file.take() {
        command.key = Some(read_key_file(&path, &mut std::io::stdin().lock())?);
    }
    let command = &command;
    let request = check_request(command)?;
    let server = command.server.url();
    let channel = Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("{server} is not a gRPC server address"))?
        .connect_timeout(command.timeout)
        .timeout(command.timeout)
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach maas-authz's gRPC listener at {server}: is `scripts/run.sh` \
                 (or `maas-authz serve`) running there? Give its address with --server"
            )
        })?;
    let response = AuthorizationClient::new(channel)
        .check(request)
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "Check answered gRPC {:?} ({}) rather than a decision; Envoy would answer its \
                 status_on_error (503 in deploy/envoy/envoy.yaml)",
                status.code(),
                status.message()
            )
        })?
        .into_inner();
    let decision = Decision::from_response(&response)?;
    match command.output {
        OutputFormat::Text => write_text(&decision, out)?,
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(&decision)?)?,
    }
    Ok(decision)
}

/// The key in `--key-file`: the file's text (`-`: `stdin`'s) without surrounding whitespace.
/// Errors name the file, never its content.
pub fn read_key_file(path: &Path, stdin: &mut impl Read) -> anyhow::Result<SecretSetting> {
    let mut text = String::new();
    if path == Path::new("-") {
        stdin
            .read_to_string(&mut text)
            .context("--key-file -: cannot read the key from standard input")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("--key-file {}: cannot read the key", path.display()))?;
    }
    let key = text.trim();
    if key.is_empty() {
        bail!("--key-file {}: the file holds no key", path.display());
    }
    if key.contains(char::is_whitespace) {
        bail!(
            "--key-file {}: the file must hold one key and nothing else",
            path.display()
        );
    }
    Ok(SecretSetting::new(key))
}

/// The `CheckRequest` Envoy sends for this request: pseudo-headers and headers by lowercase
/// name, the client's address, the route's model as a context extension.
pub fn check_request(command: &CheckCommand) -> anyhow::Result<CheckRequest> {
    let mut headers: HashMap<String, String> = HashMap::from([
        (":method".to_owned(), command.method.clone()),
        (":path".to_owned(), command.path.clone()),
        (":authority".to_owned(), command.host.clone()),
        (":scheme".to_owned(), "http".to_owned()),
    ]);
    if command.key.is_some() && command.headers.iter().any(|h| h.name == "authorization") {
        bail!("give the key either with --key or as an authorization header, not both");
    }
    for header in &command.headers {
        // Envoy joins repeated headers with a comma, as HTTP allows.
        headers
            .entry(header.name.clone())
            .and_modify(|value| {
                value.push(',');
                value.push_str(&header.value);
            })
            .or_insert_with(|| header.value.clone());
    }
    if let Some(key) = &command.key {
        headers.insert(
            "authorization".to_owned(),
            format!("Bearer {}", key.expose()),
        );
    }
    let body = command.body.clone().unwrap_or_default();
    let mut context_extensions = HashMap::new();
    if let Some(model) = &command.model {
        context_extensions.insert(CONTEXT_EXTENSION_MODEL.to_owned(), model.clone());
    }
    Ok(CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: command.source_address.to_string(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: command.method.clone(),
                    path: command.path.clone(),
                    host: command.host.clone(),
                    scheme: "http".to_owned(),
                    protocol: "HTTP/1.1".to_owned(),
                    size: i64::try_from(body.len()).unwrap_or(i64::MAX),
                    headers,
                    body,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    })
}

impl Decision {
    /// Reads Check's answer as Envoy does: an `ok_response` forwards (with its headers), a
    /// `denied_response` answers the client with its status, headers and body.
    pub fn from_response(response: &CheckResponse) -> anyhow::Result<Self> {
        let dynamic_metadata = response
            .dynamic_metadata
            .as_ref()
            .map(|metadata| {
                metadata
                    .fields
                    .iter()
                    .map(|(name, value)| (name.clone(), json_of(value)))
                    .collect()
            })
            .unwrap_or_default();
        let allowed = response
            .status
            .as_ref()
            .is_none_or(|status| status.code == 0);
        match (&response.http_response, allowed) {
            (Some(HttpResponse::DeniedResponse(denied)), false) => Ok(Self {
                allowed: false,
                status: denied
                    .status
                    .as_ref()
                    .and_then(|status| u16::try_from(status.code).ok())
                    .filter(|code| *code != 0)
                    // Envoy's default for a denial without a status.
                    .unwrap_or(403),
                reason: header_value(&denied.headers, HEADER_REASON),
                headers: headers_of(&denied.headers),
                headers_removed: Vec::new(),
                response_headers: BTreeMap::new(),
                body: Some(denied.body.clone()).filter(|body| !body.is_empty()),
                dynamic_metadata,
            }),
            (Some(HttpResponse::OkResponse(ok)), true) => Ok(Self {
                allowed: true,
                status: 200,
                reason: None,
                headers: headers_of(&ok.headers),
                headers_removed: ok.headers_to_remove.clone(),
                response_headers: headers_of(&ok.response_headers_to_add),
                body: None,
                dynamic_metadata,
            }),
            (None, true) => Ok(Self {
                allowed: true,
                status: 200,
                reason: None,
                headers: BTreeMap::new(),
                headers_removed: Vec::new(),
                response_headers: BTreeMap::new(),
                body: None,
                dynamic_metadata,
            }),
            _ => bail!("Check answered a status that does not match its HTTP response"),
        }
    }
}

fn header_value(headers: &[HeaderValueOption], name: &str) -> Option<String> {
    headers_of(headers).remove(name)
}

fn headers_of(headers: &[HeaderValueOption]) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .map(|header| {
            let value = if header.raw_value.is_empty() {
                header.value.clone()
            } else {
                String::from_utf8_lossy(&header.raw_value).into_owned()
            };
            (header.key.to_ascii_lowercase(), value)
        })
        .collect()
}

fn json_of(value: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => list.values.iter().map(json_of).collect(),
        Some(Kind::StructValue(fields)) => serde_json::Value::Object(
            fields
                .fields
                .iter()
                .map(|(name, value)| (name.clone(), json_of(value)))
                .collect(),
        ),
    }
}

/// The decision for people: the verdict first, then what Envoy would do with the request.
pub fn write_text(decision: &Decision, out: &mut impl Write) -> std::io::Result<()> {
    if decision.allowed {
        writeln!(out, "allowed: Envoy forwards the request")?;
        if !decision.headers.is_empty() {
            writeln!(out, "headers set on the request:")?;
            write_headers(&decision.headers, out)?;
        }
        if !decision.headers_removed.is_empty() {
            writeln!(
                out,
                "headers removed from the request: {}",
                decision.headers_removed.join(", ")
            )?;
        }
        if !decision.response_headers.is_empty() {
            writeln!(out, "headers added to the response:")?;
            write_headers(&decision.response_headers, out)?;
        }
        return Ok(());
    }
    let status_text = axum::http::StatusCode::from_u16(decision.status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or_default();
    write!(out, "denied: HTTP {} {status_text}", decision.status)?;
    match &decision.reason {
        Some(reason) => writeln!(out, ", reason {reason}")?,
        None => writeln!(out)?,
    }
    if let Some(message) = decision.body.as_deref().and_then(error_message) {
        writeln!(out, "message: {message}")?;
    }
    if !decision.headers.is_empty() {
        writeln!(out, "headers of the answer:")?;
        write_headers(&decision.headers, out)?;
    }
    if let Some(body) = &decision.body {
        writeln!(out, "body: {body}")?;
    }
    Ok(())
}

fn write_headers(headers: &BTreeMap<String, String>, out: &mut impl Write) -> std::io::Result<()> {
    for (name, value) in headers {
        if name == HEADER_IDENTITY_ASSERTION {
            // Long and opaque: what matters is that it is there (`--output json` has it whole).
            let start: String = value.chars().take(24).collect();
            writeln!(
                out,
                "  {name}: {start}… (signed, {} characters)",
                value.len()
            )?;
        } else {
            writeln!(out, "  {name}: {value}")?;
        }
    }
    Ok(())
}

/// `error.message` of an OpenAI-style error body.
fn error_message(body: &str) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(body).ok()?;
    body.pointer("/error/message")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::envoy::service::auth::v3::{DeniedHttpResponse, OkHttpResponse};
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::rpc;

    use super::*;
    use crate::config::{Cli, Command};

    fn parse(args: &[&str]) -> Result<CheckCommand, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("maas-authz").chain(args.iter().copied()))?;
        match cli.command {
            Command::Check(check) => Ok(check),
            other => panic!("not check: {other:?}"),
        }
    }

    #[test]
    fn key_file_gives_the_key_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-oai-abc_def\n").unwrap();

        let key = read_key_file(&path, &mut std::io::empty()).unwrap();

        assert_eq!(key.expose(), "sk-oai-abc_def");
    }

    #[test]
    fn key_file_dash_reads_standard_input() {
        let key = read_key_file(Path::new("-"), &mut "sk-oai-from_stdin\n".as_bytes()).unwrap();

        assert_eq!(key.expose(), "sk-oai-from_stdin");
    }

    #[test]
    fn key_file_errors_name_the_file_and_never_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let two = dir.path().join("two");
        std::fs::write(&two, "sk-oai-secret_one sk-oai-secret_two\n").unwrap();

        let missing = read_key_file(&missing, &mut std::io::empty()).unwrap_err();
        let empty = read_key_file(&empty, &mut std::io::empty()).unwrap_err();
        let two = read_key_file(&two, &mut std::io::empty()).unwrap_err();

        assert!(
            format!("{missing:#}").contains("cannot read the key"),
            "{missing:#}"
        );
        assert!(format!("{empty:#}").contains("holds no key"), "{empty:#}");
        let two = format!("{two:#}");
        assert!(two.contains("one key and nothing else"), "{two}");
        assert!(!two.contains("secret"), "{two}");
    }

    #[test]
    fn key_and_key_file_together_are_refused() {
        let error = parse(&[
            "check",
            "/v1/models",
            "--key",
            "sk-oai-a",
            "--key-file",
            "k",
        ])
        .unwrap_err();

        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    fn header(name: &str, value: &str) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: name.to_owned(),
                value: value.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn text(decision: &Decision) -> String {
        let mut out = Vec::new();
        write_text(decision, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_request_carries_what_envoy_sends_the_key_as_a_bearer_and_the_route_model() {
        let command = parse(&[
            "check",
            "/qwen3/v1/chat/completions",
            "--key",
            "sk-oai-secret",
            "--model",
            "llm/qwen3",
            "-H",
            "X-Gateway-Model-Name: qwen3",
            "--body",
            r#"{"model":"qwen3"}"#,
        ])
        .unwrap();

        let request = check_request(&command).unwrap();

        let attributes = request.attributes.unwrap();
        let http = attributes.request.unwrap().http.unwrap();
        assert_eq!(http.method, "POST");
        assert_eq!(http.path, "/qwen3/v1/chat/completions");
        assert_eq!(http.headers["authorization"], "Bearer sk-oai-secret");
        assert_eq!(http.headers["x-gateway-model-name"], "qwen3");
        assert_eq!(http.headers[":path"], "/qwen3/v1/chat/completions");
        assert_eq!(http.body, r#"{"model":"qwen3"}"#);
        assert_eq!(attributes.context_extensions["model"], "llm/qwen3");
        assert!(!format!("{command:?}").contains("sk-oai-secret"));
    }

    #[test]
    fn a_key_given_twice_is_refused_rather_than_one_silently_chosen() {
        let command = parse(&[
            "check",
            "/v1/models",
            "--key",
            "sk-oai-a",
            "-H",
            "authorization: Bearer sk-oai-b",
        ])
        .unwrap();

        let error = check_request(&command).unwrap_err().to_string();

        assert!(error.contains("not both"), "{error}");
    }

    #[test]
    fn bad_arguments_say_what_is_expected_without_echoing_a_header_value() {
        let no_colon = parse(&["check", "/v1/models", "-H", "sk-oai-secret"])
            .unwrap_err()
            .to_string();
        let https = parse(&["check", "/v1/models", "--server", "https://x:1"])
            .unwrap_err()
            .to_string();
        let no_port = parse(&["check", "/v1/models", "--server", "localhost"])
            .unwrap_err()
            .to_string();

        assert!(no_colon.contains("must be `name: value`"), "{no_colon}");
        assert!(!no_colon.contains("sk-oai-secret"), "{no_colon}");
        assert!(https.contains("without TLS"), "{https}");
        assert!(no_port.contains("host:port"), "{no_port}");
        assert_eq!(
            parse(&["check", "/v1/models", "--server", "localhost:50051"])
                .unwrap()
                .server
                .url(),
            "http://localhost:50051"
        );
    }

    #[test]
    fn an_allow_reads_as_the_headers_envoy_sets_and_removes() {
        let response = CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![
                    header("x-maas-username", "developer"),
                    header(HEADER_IDENTITY_ASSERTION, &"a".repeat(200)),
                ],
                headers_to_remove: vec!["authorization".to_owned()],
                response_headers_to_add: vec![header("x-ratelimit-remaining-requests", "19")],
                ..Default::default()
            })),
            ..Default::default()
        };

        let decision = Decision::from_response(&response).unwrap();
        let shown = text(&decision);

        assert!(decision.allowed && decision.status == 200);
        assert_eq!(
            shown,
            "allowed: Envoy forwards the request\n\
             headers set on the request:\n  \
             x-maas-identity-assertion: aaaaaaaaaaaaaaaaaaaaaaaa… (signed, 200 characters)\n  \
             x-maas-username: developer\n\
             headers removed from the request: authorization\n\
             headers added to the response:\n  \
             x-ratelimit-remaining-requests: 19\n"
        );
    }

    #[test]
    fn a_denial_reads_as_its_status_reason_and_message() {
        let body =
            r#"{"error":{"message":"no access","type":"permission_error","code":"access_denied"}}"#;
        let response = CheckResponse {
            status: Some(rpc::Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: 403 }),
                headers: vec![header(HEADER_REASON, "model_not_in_subscription")],
                body: body.to_owned(),
            })),
            ..Default::default()
        };

        let decision = Decision::from_response(&response).unwrap();

        assert_eq!(decision.status, 403);
        assert_eq!(
            decision.reason.as_deref(),
            Some("model_not_in_subscription")
        );
        assert_eq!(
            text(&decision),
            format!(
                "denied: HTTP 403 Forbidden, reason model_not_in_subscription\n\
                 message: no access\n\
                 headers of the answer:\n  x-ext-auth-reason: model_not_in_subscription\n\
                 body: {body}\n"
            )
        );
        let json: serde_json::Value = serde_json::to_value(&decision).unwrap();
        assert_eq!(json["allowed"], false);
        assert_eq!(json["status"], 403);
        assert_eq!(json["reason"], "model_not_in_subscription");
    }
}
