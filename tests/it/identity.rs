//! The REST API's identity layer against real sources: PostgreSQL keys, a static token file, an
//! OIDC issuer and a Kubernetes API server, the last two as small local HTTP servers.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maas_authz::authorizer::Authorizer;
use maas_authz::cache::{CacheSettings, KeyCache};
use maas_authz::config::IdentitySettings;
use maas_authz::identity::{AuthError, Caller, CredentialKind, IdentityResolver};
use maas_authz::policy::Policy;
use maas_authz::store::KeyStore;
use maas_authz::store::postgres::{NoQueryObserver, PgKeyStore, PgSettings};
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::NamedTempFile;

use crate::rest_admin;
use crate::rest_support::{BOB, RestServer};
use crate::support::{FREE_USER, KeyOwner, TestDb, admin_url, insert_raw, mint};

type Resolver = IdentityResolver<PgKeyStore>;

const AUDIENCE: &str = "maas-api";

// ---------------------------------------------------------------------------------------------
// Fixtures

fn authorizer_on(store: PgKeyStore) -> Arc<Authorizer<PgKeyStore>> {
    Arc::new(Authorizer::new(
        Arc::new(store),
        KeyCache::new(CacheSettings {
            capacity: 100,
            ttl: Duration::from_secs(30),
            max_staleness: Duration::from_secs(900),
            negative_capacity: 100,
            negative_ttl: Duration::from_secs(5),
        }),
        Arc::new(ArcSwap::from_pointee(Policy::empty())),
        Arc::new(()),
    ))
}

fn store_at(database_url: String) -> PgKeyStore {
    PgKeyStore::connect(
        &PgSettings {
            database_url,
            database_ca_file: None,
            tenant: "models-as-a-service".to_owned(),
            pool_size: 1,
            query_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        },
        Arc::new(NoQueryObserver),
    )
    .expect("pool")
}

/// For tests that send no sk-oai key: the pool connects lazily, so no database is touched.
async fn resolver(args: IdentitySettings) -> Resolver {
    IdentityResolver::from_settings(&args, authorizer_on(store_at(admin_url())))
        .await
        .expect("identity sources set up")
}

async fn setup_error(args: IdentitySettings) -> String {
    let error = IdentityResolver::from_settings(&args, authorizer_on(store_at(admin_url())))
        .await
        .expect_err("set-up fails");
    format!("{error:#}")
}

fn file_with(content: &str) -> NamedTempFile {
    let mut file = NamedTempFile::new().expect("temp file");
    file.write_all(content.as_bytes()).expect("write temp file");
    file
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn groups(names: &[&str]) -> Vec<String> {
    names.iter().map(|g| (*g).to_owned()).collect()
}

/// A resolved caller as the REST API reads it: username, groups, admin, credential.
fn seen(
    result: &Result<Caller, AuthError>,
) -> Result<(&str, Vec<&str>, bool, CredentialKind), AuthError> {
    match result {
        Ok(caller) => Ok((
            caller.username.as_str(),
            caller.groups.iter().map(String::as_str).collect(),
            caller.is_admin(),
            caller.credential.clone(),
        )),
        Err(error) => Err(error.clone()),
    }
}

/// A port nothing listens on.
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

// ---------------------------------------------------------------------------------------------
// Authorization header

#[tokio::test]
async fn a_request_without_authorization_header_is_missing_credentials() {
    let resolver = resolver(IdentitySettings::default()).await;

    let result = resolver.authenticate(None).await;

    assert_eq!(result, Err(AuthError::Missing));
}

#[tokio::test]
async fn an_authorization_header_that_is_not_bearer_is_malformed() {
    let resolver = resolver(IdentitySettings::default()).await;

    for header in [
        "Basic YWxpY2U6cHc=",
        "Bearer",
        "Bearer a b",
        "sk-oai-abc_def",
    ] {
        let result = resolver.authenticate(Some(header)).await;

        assert_eq!(result, Err(AuthError::Malformed), "header {header:?}");
    }
}

#[tokio::test]
async fn a_token_no_source_knows_is_invalid() {
    let resolver = resolver(IdentitySettings::default()).await;

    let result = resolver.authenticate(Some("Bearer whatever")).await;

    assert!(matches!(result, Err(AuthError::Invalid(_))), "{result:?}");
}

#[tokio::test]
async fn an_unsafe_admin_group_fails_start_up() {
    let args = IdentitySettings {
        admin_groups: groups(&["maas-admins", "ops team"]),
        ..Default::default()
    };

    let error = setup_error(args).await;

    assert!(
        error.contains("MAAS_AUTHZ_ADMIN_GROUPS: \"ops team\" is not a valid group name"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Static tokens

const STATIC_TOKENS: &str = r#"
- token: dev-admin-token
  username: admin
  groups: [maas-admins]
- token: dev-user-token
  username: carol
  groups: [premium-users, system:authenticated]
"#;

fn static_args(file: &NamedTempFile) -> IdentitySettings {
    IdentitySettings {
        static_tokens_file: Some(file.path().to_path_buf()),
        admin_groups: groups(&["maas-admins"]),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_static_token_yields_its_user_with_groups_and_admin_flag() {
    let file = file_with(STATIC_TOKENS);
    let resolver = resolver(static_args(&file)).await;

    let admin = resolver.authenticate(Some("Bearer dev-admin-token")).await;
    let user = resolver.authenticate(Some("bearer  dev-user-token ")).await;

    assert_eq!(
        seen(&admin),
        Ok((
            "admin",
            vec!["maas-admins", "system:authenticated"],
            true,
            CredentialKind::StaticToken,
        ))
    );
    assert_eq!(
        seen(&user),
        Ok((
            "carol",
            vec!["premium-users", "system:authenticated"],
            false,
            CredentialKind::StaticToken,
        ))
    );
}

#[tokio::test]
async fn a_wrong_static_token_is_invalid() {
    let file = file_with(STATIC_TOKENS);
    let resolver = resolver(static_args(&file)).await;

    for token in ["dev-admin-tokenx", "dev-admin-toke", "DEV-ADMIN-TOKEN"] {
        let result = resolver.authenticate(Some(&bearer(token))).await;

        assert!(matches!(result, Err(AuthError::Invalid(_))), "{result:?}");
    }
}

#[tokio::test]
async fn a_static_token_entry_without_username_fails_start_up_naming_variable_and_entry() {
    let file = file_with("- token: secret-one\n  username: a\n- token: secret-two\n  groups: []\n");

    let error = setup_error(static_args(&file)).await;

    assert!(
        error.contains(&format!(
            "MAAS_AUTHZ_STATIC_TOKENS_FILE={}",
            file.path().display()
        )),
        "{error}"
    );
    assert!(
        error.contains("entry 2: missing field `username`"),
        "{error}"
    );
    assert!(!error.contains("secret-two"), "the token leaked: {error}");
}

#[tokio::test]
async fn a_static_token_with_an_unsafe_group_fails_start_up_naming_the_group() {
    let file =
        file_with("- {token: t1, username: a}\n- {token: t2, username: b, groups: [\"a b\"]}\n");

    let error = setup_error(static_args(&file)).await;

    assert!(
        error.contains(&format!(
            "MAAS_AUTHZ_STATIC_TOKENS_FILE={}: entry 2: groups[0] \"a b\" is not a valid group name",
            file.path().display()
        )),
        "{error}"
    );
}

#[tokio::test]
async fn a_token_of_the_wrong_type_fails_start_up_without_quoting_it() {
    let file = file_with("- {token: 31415926535, username: a}\n");

    let error = setup_error(static_args(&file)).await;

    assert!(error.contains("entry 1: token must be a string"), "{error}");
    assert!(!error.contains("31415926535"), "the token leaked: {error}");
}

#[tokio::test]
async fn an_unreadable_static_token_file_fails_start_up_naming_the_path() {
    let args = IdentitySettings {
        static_tokens_file: Some(PathBuf::from("/nonexistent/tokens.yaml")),
        ..Default::default()
    };

    let error = setup_error(args).await;

    assert!(
        error.contains(
            "MAAS_AUTHZ_STATIC_TOKENS_FILE=/nonexistent/tokens.yaml: cannot read the file"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_static_token_file_that_is_not_yaml_fails_start_up() {
    let file = file_with("- token: [unclosed\n");

    let error = setup_error(static_args(&file)).await;

    assert!(error.contains("MAAS_AUTHZ_STATIC_TOKENS_FILE="), "{error}");
    assert!(error.contains("not valid YAML"), "{error}");
}

#[tokio::test]
async fn duplicate_static_tokens_fail_start_up() {
    let file = file_with("- {token: same, username: a}\n- {token: same, username: b}\n");

    let error = setup_error(static_args(&file)).await;

    assert!(
        error.contains("entry 2: the token is the same as entry 1's"),
        "{error}"
    );
}

#[tokio::test]
async fn an_edited_static_token_file_applies_to_the_next_request() {
    let file = file_with(STATIC_TOKENS);
    let resolver = resolver(static_args(&file)).await;
    let before = resolver.authenticate(Some("Bearer dev-admin-token")).await;
    std::fs::write(
        file.path(),
        "- {token: dev-admin-token, username: admin, groups: [premium-users]}\n",
    )
    .expect("rewrite");

    let demoted = resolver.authenticate(Some("Bearer dev-admin-token")).await;
    let removed = resolver.authenticate(Some("Bearer dev-user-token")).await;

    assert!(before.expect("admin").is_admin());
    assert_eq!(
        seen(&demoted),
        Ok((
            "admin",
            vec!["premium-users", "system:authenticated"],
            false,
            CredentialKind::StaticToken,
        ))
    );
    assert_eq!(
        removed,
        Err(AuthError::Invalid("the token is not recognised".to_owned()))
    );
}

#[tokio::test]
async fn a_static_token_file_broken_while_running_accepts_no_token_until_fixed() {
    let file = file_with(STATIC_TOKENS);
    let resolver = resolver(static_args(&file)).await;
    std::fs::write(file.path(), "- token: [unclosed\n").expect("break");

    let while_broken = resolver.authenticate(Some("Bearer dev-admin-token")).await;
    std::fs::write(file.path(), STATIC_TOKENS).expect("fix");
    let fixed = resolver.authenticate(Some("Bearer dev-admin-token")).await;

    assert_eq!(
        while_broken,
        Err(AuthError::Invalid("the token is not recognised".to_owned()))
    );
    assert!(fixed.expect("accepted again").is_admin());
}

// ---------------------------------------------------------------------------------------------
// sk-oai API keys

#[tokio::test]
async fn an_api_key_yields_its_owner_with_the_stored_group_snapshot() {
    let db = TestDb::migrated().await;
    let store = db.store();
    let (key, record) = mint(&store, &FREE_USER).await;
    let resolver =
        IdentityResolver::from_settings(&IdentitySettings::default(), authorizer_on(store))
            .await
            .expect("set up");

    let caller = resolver.authenticate(Some(&bearer(&key))).await;

    assert_eq!(
        seen(&caller),
        Ok((
            "alice",
            vec!["system:authenticated"],
            false,
            CredentialKind::ApiKey {
                id: record.id,
                subscription: "free".to_owned(),
            },
        ))
    );
}

#[tokio::test]
async fn an_api_key_whose_stored_owner_is_empty_is_refused() {
    let db = TestDb::migrated().await;
    let store = db.store();
    let nobody = KeyOwner {
        user: "",
        ..FREE_USER
    };
    let (key, _) = insert_raw(
        &store,
        &nobody,
        chrono::Utc::now() + chrono::Duration::hours(1),
    )
    .await;
    let resolver =
        IdentityResolver::from_settings(&IdentitySettings::default(), authorizer_on(store))
            .await
            .expect("set up");

    let caller = resolver.authenticate(Some(&bearer(&key))).await;

    assert_eq!(
        caller,
        Err(AuthError::Invalid(
            "the identity has an empty username".to_owned()
        ))
    );
}

#[tokio::test]
async fn an_api_key_is_never_admin_even_with_an_admin_group_in_its_snapshot() {
    let db = TestDb::migrated().await;
    let store = db.store();
    let owner = KeyOwner {
        user: "root-admin",
        groups: &["system:authenticated", "maas-admins"],
        subscription: "free",
    };
    let (key, record) = mint(&store, &owner).await;
    let resolver = IdentityResolver::from_settings(
        &IdentitySettings {
            admin_groups: groups(&["maas-admins"]),
            ..Default::default()
        },
        authorizer_on(store),
    )
    .await
    .expect("set up");

    let caller = resolver.authenticate(Some(&bearer(&key))).await;

    assert_eq!(
        seen(&caller),
        Ok((
            "root-admin",
            vec!["system:authenticated", "maas-admins"],
            false,
            CredentialKind::ApiKey {
                id: record.id,
                subscription: "free".to_owned(),
            },
        ))
    );
}

#[tokio::test]
async fn a_revoked_api_key_is_invalid_with_upstreams_reason() {
    let db = TestDb::migrated().await;
    let store = db.store();
    let (key, record) = mint(&store, &FREE_USER).await;
    store
        .revoke_key(record.id)
        .await
        .expect("revoke")
        .expect("revoked");
    let resolver =
        IdentityResolver::from_settings(&IdentitySettings::default(), authorizer_on(store))
            .await
            .expect("set up");

    let result = resolver.authenticate(Some(&bearer(&key))).await;

    assert_eq!(
        result,
        Err(AuthError::Invalid("key revoked or expired".to_owned()))
    );
}

#[tokio::test]
async fn an_unknown_api_key_is_invalid_and_never_tried_as_a_static_token() {
    let db = TestDb::migrated().await;
    let file = file_with("- {token: sk-oaj-lookalike, username: a}\n");
    let resolver = IdentityResolver::from_settings(&static_args(&file), authorizer_on(db.store()))
        .await
        .expect("set up");
    let unknown = maas_authz::key::ApiKey::generate().expect("randomness");

    let result = resolver.authenticate(Some(&bearer(unknown.expose()))).await;

    assert_eq!(result, Err(AuthError::Invalid("key not found".to_owned())));
}

#[tokio::test]
async fn an_api_key_while_the_database_is_down_is_unavailable() {
    let url = closed_port_url()
        .await
        .replace("http://", "postgres://postgres@");
    let resolver = IdentityResolver::from_settings(
        &IdentitySettings::default(),
        authorizer_on(store_at(format!("{url}/postgres"))),
    )
    .await
    .expect("set up");
    let key = maas_authz::key::ApiKey::generate().expect("randomness");

    let result = resolver.authenticate(Some(&bearer(key.expose()))).await;

    assert!(
        matches!(result, Err(AuthError::Unavailable(_))),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// OIDC

/// A P-256 signing key with its `kid`.
struct TestKey {
    kid: String,
    signing: SigningKey,
}

impl TestKey {
    fn new(kid: &str) -> Self {
        let signing = loop {
            let mut bytes = [0_u8; 32];
            getrandom::fill(&mut bytes).expect("randomness");
            // A random scalar is out of range with negligible probability; draw again then.
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                break key;
            }
        };
        Self {
            kid: kid.to_owned(),
            signing,
        }
    }

    fn jwk(&self) -> Value {
        let point = self.signing.verifying_key().to_encoded_point(false);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "use": "sig",
            "alg": "ES256",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().expect("x")),
            "y": URL_SAFE_NO_PAD.encode(point.y().expect("y")),
        })
    }

    /// A compact ES256 JWS over `claims`, headed with this key's `kid`.
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: p256::ecdsa::Signature = self.signing.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

/// What the test issuer serves, changeable while it runs.
struct IssuerState {
    issuer: Mutex<String>,
    keys: Mutex<Vec<Value>>,
    jwks_requests: AtomicUsize,
}

/// A local OIDC issuer: discovery document and JWKS over HTTP.
struct TestIssuer {
    url: String,
    state: Arc<IssuerState>,
}

impl TestIssuer {
    async fn start(keys: &[&TestKey]) -> Self {
        let state = Arc::new(IssuerState {
            issuer: Mutex::new(String::new()),
            keys: Mutex::new(keys.iter().map(|k| k.jwk()).collect()),
            jwks_requests: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(state): State<Arc<IssuerState>>| async move {
                    let issuer = state.issuer.lock().unwrap().clone();
                    Json(json!({
                        "issuer": issuer,
                        "jwks_uri": format!("{issuer}/keys"),
                        "id_token_signing_alg_values_supported": ["ES256"],
                    }))
                }),
            )
            .route(
                "/keys",
                get(|State(state): State<Arc<IssuerState>>| async move {
                    state.jwks_requests.fetch_add(1, Ordering::SeqCst);
                    Json(json!({"keys": state.keys.lock().unwrap().clone()}))
                }),
            )
            .with_state(state.clone());
        let url = format!("http://{}", serve(router).await);
        *state.issuer.lock().unwrap() = url.clone();
        Self { url, state }
    }

    fn serve_keys(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }

    fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    fn args(&self) -> IdentitySettings {
        IdentitySettings {
            oidc_issuer: Some(self.url.clone()),
            oidc_audience: Some(AUDIENCE.to_owned()),
            admin_groups: groups(&["maas-admins"]),
            ..Default::default()
        }
    }

    /// Claims of a valid token for `dana`, to be altered by each test.
    fn claims(&self) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.url,
            "aud": [AUDIENCE, "account"],
            "azp": AUDIENCE,
            "sub": "3f2c9a1e-dana",
            "preferred_username": "dana",
            "groups": ["premium-users", "maas-admins"],
            "iat": now,
            "nbf": now - 5,
            "exp": now + 300,
        })
    }
}

#[tokio::test]
async fn an_oidc_user_is_named_by_issuer_and_subject_by_default() {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(issuer.args()).await;

    let caller = resolver
        .authenticate(Some(&bearer(&key.sign(&issuer.claims()))))
        .await;

    let expected = format!("{}#3f2c9a1e-dana", issuer.url);
    assert_eq!(
        seen(&caller),
        Ok((
            expected.as_str(),
            vec!["premium-users", "maas-admins", "system:authenticated"],
            true,
            CredentialKind::OidcToken,
        ))
    );
}

#[tokio::test]
async fn a_preferred_username_the_user_chose_does_not_change_who_they_are() {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(issuer.args()).await;
    let mut spoofing = issuer.claims();
    spoofing["preferred_username"] = json!("root-admin");
    let mut impostor = issuer.claims();
    impostor["sub"] = json!("9d41-mallory");

    let dana = resolver
        .authenticate(Some(&bearer(&key.sign(&issuer.claims()))))
        .await
        .expect("authenticated");
    let renamed = resolver
        .authenticate(Some(&bearer(&key.sign(&spoofing))))
        .await
        .expect("authenticated");
    let mallory = resolver
        .authenticate(Some(&bearer(&key.sign(&impostor))))
        .await
        .expect("authenticated");

    assert_eq!(dana.username, format!("{}#3f2c9a1e-dana", issuer.url));
    assert_eq!(renamed.username, dana.username);
    assert_eq!(mallory.username, format!("{}#9d41-mallory", issuer.url));
}

#[tokio::test]
async fn an_oidc_token_without_the_username_claim_is_refused_naming_the_claim() {
    let result = oidc_rejection(|claims| {
        claims.as_object_mut().unwrap().remove("sub");
    })
    .await;

    assert_eq!(
        result,
        Err(AuthError::Invalid(
            "JWT has no \"sub\" claim, which names its user here".to_owned()
        ))
    );
}

#[tokio::test]
async fn a_username_claim_that_is_not_a_string_is_refused_naming_the_claim() {
    for sub in [json!(42), json!(["dana", "admin"]), json!({"name": "dana"})] {
        let result = oidc_rejection(|claims| claims["sub"] = sub.clone()).await;

        assert_eq!(
            result,
            Err(AuthError::Invalid(
                "JWT claim \"sub\", which names its user here, must be a string".to_owned()
            )),
            "sub {sub}"
        );
    }
}

#[tokio::test]
async fn a_configured_username_claim_does_not_fall_back_to_another() {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(IdentitySettings {
        oidc_username_claim: Some("preferred_username".to_owned()),
        ..issuer.args()
    })
    .await;
    let mut claims = issuer.claims();
    claims.as_object_mut().unwrap().remove("preferred_username");

    let result = resolver
        .authenticate(Some(&bearer(&key.sign(&claims))))
        .await;

    assert_eq!(
        result,
        Err(AuthError::Invalid(
            "JWT has no \"preferred_username\" claim, which names its user here".to_owned()
        ))
    );
}

#[tokio::test]
async fn an_email_username_needs_a_verified_address_and_gets_no_prefix() {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(IdentitySettings {
        oidc_username_claim: Some("email".to_owned()),
        ..issuer.args()
    })
    .await;
    let with_email = |verified: Option<Value>| {
        let mut claims = issuer.claims();
        claims["email"] = json!("dana@example.com");
        if let Some(verified) = verified {
            claims["email_verified"] = verified;
        }
        bearer(&key.sign(&claims))
    };

    let unverified = resolver
        .authenticate(Some(&with_email(Some(json!(false)))))
        .await;
    let not_a_boolean = resolver
        .authenticate(Some(&with_email(Some(json!("true")))))
        .await;
    let verified = resolver
        .authenticate(Some(&with_email(Some(json!(true)))))
        .await;
    let unstated = resolver.authenticate(Some(&with_email(None))).await;

    assert_eq!(
        unverified,
        Err(AuthError::Invalid(
            "JWT email is not verified (email_verified is false)".to_owned()
        ))
    );
    assert_eq!(
        not_a_boolean,
        Err(AuthError::Invalid(
            "JWT claim \"email_verified\" must be a boolean".to_owned()
        ))
    );
    assert_eq!(verified.expect("verified").username, "dana@example.com");
    assert_eq!(unstated.expect("accepted").username, "dana@example.com");
}

#[tokio::test]
async fn a_dash_prefix_takes_the_claim_as_it_is() {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(IdentitySettings {
        oidc_username_claim: Some("preferred_username".to_owned()),
        oidc_username_prefix: Some("-".to_owned()),
        ..issuer.args()
    })
    .await;

    let caller = resolver
        .authenticate(Some(&bearer(&key.sign(&issuer.claims()))))
        .await;

    assert_eq!(caller.expect("authenticated").username, "dana");
}

#[tokio::test]
async fn configured_prefixes_and_groups_claim_name_users_and_groups() {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(IdentitySettings {
        oidc_username_prefix: Some("oidc:".to_owned()),
        oidc_groups_claim: Some("roles".to_owned()),
        oidc_groups_prefix: Some("idp:".to_owned()),
        admin_groups: groups(&["idp:maas-admins"]),
        ..issuer.args()
    })
    .await;
    let mut listed = issuer.claims();
    listed["roles"] = json!(["premium-users", "maas-admins"]);
    let mut single = issuer.claims();
    single["roles"] = json!("premium-users");
    let mut unusable = issuer.claims();
    unusable["roles"] = json!({"premium-users": true});

    let admin = resolver
        .authenticate(Some(&bearer(&key.sign(&listed))))
        .await;
    let member = resolver
        .authenticate(Some(&bearer(&key.sign(&single))))
        .await;
    let refused = resolver
        .authenticate(Some(&bearer(&key.sign(&unusable))))
        .await;

    assert_eq!(
        seen(&admin),
        Ok((
            "oidc:3f2c9a1e-dana",
            vec![
                "idp:premium-users",
                "idp:maas-admins",
                "system:authenticated"
            ],
            true,
            CredentialKind::OidcToken,
        ))
    );
    assert_eq!(
        seen(&member),
        Ok((
            "oidc:3f2c9a1e-dana",
            vec!["idp:premium-users", "system:authenticated"],
            false,
            CredentialKind::OidcToken,
        ))
    );
    assert_eq!(
        refused,
        Err(AuthError::Invalid(
            "JWT claim \"roles\", which lists its groups here, must be a list of strings"
                .to_owned()
        ))
    );
}

#[test]
fn bad_oidc_claim_settings_stop_serve_naming_the_variable() {
    let cases = [
        (
            "MAAS_AUTHZ_OIDC_USERNAME_CLAIM",
            "",
            "must name a JWT claim, e.g. sub, email or preferred_username; it cannot be empty",
        ),
        (
            "MAAS_AUTHZ_OIDC_GROUPS_CLAIM",
            "realm roles",
            "a claim name cannot contain whitespace or control characters",
        ),
        (
            "MAAS_AUTHZ_OIDC_GROUPS_PREFIX",
            "idp groups/",
            "prefixed groups must still be valid group names: use only letters, digits and : . _ -",
        ),
        (
            "MAAS_AUTHZ_OIDC_USERNAME_PREFIX",
            "oidc\u{7}",
            "a username prefix cannot contain control characters",
        ),
    ];

    for (variable, value, message) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_maas-authz"))
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", "postgres://x@127.0.0.1:9/x")
            .env("MAAS_AUTHZ_POLICY_PATH", "examples/policy")
            .env(
                "MAAS_AUTHZ_OIDC_ISSUER",
                "https://keycloak.example/realms/maas",
            )
            .env("MAAS_AUTHZ_OIDC_AUDIENCE", AUDIENCE)
            .env(variable, value)
            .output()
            .expect("run maas-authz");

        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}");
        assert!(
            text.contains(&format!("<{variable}>': {message}")),
            "{variable}: {text}"
        );
    }
}

#[tokio::test]
async fn oidc_keys_are_fetched_once_for_many_tokens() {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(issuer.args()).await;
    let token = key.sign(&issuer.claims());

    for _ in 0..3 {
        resolver
            .authenticate(Some(&bearer(&token)))
            .await
            .expect("authenticated");
    }

    assert_eq!(issuer.jwks_requests(), 1);
}

async fn oidc_rejection(alter: impl FnOnce(&mut Value)) -> Result<Caller, AuthError> {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(issuer.args()).await;
    let mut claims = issuer.claims();
    alter(&mut claims);
    resolver
        .authenticate(Some(&bearer(&key.sign(&claims))))
        .await
}

#[tokio::test]
async fn an_expired_oidc_token_is_invalid() {
    let result = oidc_rejection(|claims| {
        claims["exp"] = json!(chrono::Utc::now().timestamp() - 3_600);
    })
    .await;

    assert_eq!(result, Err(AuthError::Invalid("JWT expired".to_owned())));
}

#[tokio::test]
async fn an_oidc_token_not_yet_valid_is_invalid() {
    let result = oidc_rejection(|claims| {
        claims["nbf"] = json!(chrono::Utc::now().timestamp() + 3_600);
    })
    .await;

    assert_eq!(
        result,
        Err(AuthError::Invalid("JWT not yet valid".to_owned()))
    );
}

#[tokio::test]
async fn an_oidc_token_for_another_audience_is_invalid() {
    let result = oidc_rejection(|claims| {
        claims["aud"] = json!("some-other-client");
        claims.as_object_mut().unwrap().remove("azp");
    })
    .await;

    assert_eq!(
        result,
        Err(AuthError::Invalid(
            "JWT audience does not include the configured audience".to_owned()
        ))
    );
}

#[tokio::test]
async fn an_oidc_token_without_audience_is_invalid() {
    let result = oidc_rejection(|claims| {
        claims.as_object_mut().unwrap().remove("aud");
    })
    .await;

    assert_eq!(
        result,
        Err(AuthError::Invalid("JWT has no aud claim".to_owned()))
    );
}

#[tokio::test]
async fn an_oidc_token_issued_to_another_client_is_invalid() {
    let result = oidc_rejection(|claims| {
        claims["azp"] = json!("some-other-client");
    })
    .await;

    assert_eq!(
        result,
        Err(AuthError::Invalid(
            "JWT azp is not the configured client".to_owned()
        ))
    );
}

#[tokio::test]
async fn an_oidc_token_with_an_unsafe_group_is_invalid() {
    let result = oidc_rejection(|claims| {
        claims["groups"] = json!(["premium-users", "admins; drop"]);
    })
    .await;

    assert_eq!(
        result,
        Err(AuthError::Invalid(
            "JWT group \"admins; drop\" is not a valid group name".to_owned()
        ))
    );
}

#[tokio::test]
async fn a_jwt_from_another_issuer_is_not_accepted() {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(issuer.args()).await;
    let mut claims = issuer.claims();
    claims["iss"] = json!("https://evil.example");

    let result = resolver
        .authenticate(Some(&bearer(&key.sign(&claims))))
        .await;

    assert!(matches!(result, Err(AuthError::Invalid(_))), "{result:?}");
    assert_eq!(
        issuer.jwks_requests(),
        0,
        "no key fetch for a foreign token"
    );
}

#[tokio::test]
async fn an_oidc_token_with_a_forged_signature_is_invalid() {
    let key = TestKey::new("k1");
    let forger = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(issuer.args()).await;

    let result = resolver
        .authenticate(Some(&bearer(&forger.sign(&issuer.claims()))))
        .await;

    assert_eq!(
        result,
        Err(AuthError::Invalid("bad JWT signature".to_owned()))
    );
}

#[tokio::test]
async fn an_oidc_token_signed_with_a_rotated_in_key_is_accepted_after_one_refetch() {
    let old = TestKey::new("2026-08");
    let new = TestKey::new("2026-09");
    let issuer = TestIssuer::start(&[&old]).await;
    let resolver = resolver(issuer.args()).await;
    resolver
        .authenticate(Some(&bearer(&old.sign(&issuer.claims()))))
        .await
        .expect("old key accepted");
    issuer.serve_keys(&[&new]);

    let caller = resolver
        .authenticate(Some(&bearer(&new.sign(&issuer.claims()))))
        .await;

    assert_eq!(
        caller.expect("new key accepted").username,
        format!("{}#3f2c9a1e-dana", issuer.url)
    );
    assert_eq!(issuer.jwks_requests(), 2);
}

#[tokio::test]
async fn unknown_kids_cause_at_most_one_refetch_per_interval() {
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(issuer.args()).await;
    resolver
        .authenticate(Some(&bearer(&key.sign(&issuer.claims()))))
        .await
        .expect("accepted");

    let first = resolver
        .authenticate(Some(&bearer(&key.sign_as("ghost-1", &issuer.claims()))))
        .await;
    let second = resolver
        .authenticate(Some(&bearer(&key.sign_as("ghost-2", &issuer.claims()))))
        .await;

    assert!(matches!(first, Err(AuthError::Invalid(_))), "{first:?}");
    assert!(matches!(second, Err(AuthError::Invalid(_))), "{second:?}");
    assert_eq!(
        issuer.jwks_requests(),
        2,
        "one initial fetch, one forced refetch"
    );
}

#[tokio::test]
async fn an_oidc_token_while_the_issuer_is_down_is_unavailable() {
    let key = TestKey::new("k1");
    let url = closed_port_url().await;
    let resolver = resolver(IdentitySettings {
        oidc_issuer: Some(url.clone()),
        oidc_audience: Some(AUDIENCE.to_owned()),
        ..Default::default()
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let token = key.sign(&json!({"iss": url, "aud": AUDIENCE, "sub": "dana", "exp": now + 300}));

    let result = resolver.authenticate(Some(&bearer(&token))).await;

    assert!(
        matches!(result, Err(AuthError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_oidc_issuer_without_audience_fails_start_up() {
    let args = IdentitySettings {
        oidc_issuer: Some("https://keycloak.example/realms/maas".to_owned()),
        ..Default::default()
    };

    let error = setup_error(args).await;

    assert!(
        error.contains("MAAS_AUTHZ_OIDC_AUDIENCE is required"),
        "{error}"
    );
}

#[tokio::test]
async fn an_oidc_issuer_that_is_not_a_url_fails_start_up() {
    let args = IdentitySettings {
        oidc_issuer: Some("keycloak/realms/maas".to_owned()),
        oidc_audience: Some(AUDIENCE.to_owned()),
        ..Default::default()
    };

    let error = setup_error(args).await;

    assert!(
        error.contains("MAAS_AUTHZ_OIDC_ISSUER=keycloak/realms/maas"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// OIDC callers of the real REST API

async fn rest_server_trusting(issuer: &TestIssuer) -> RestServer {
    RestServer::start_with(|config| {
        config.identity.oidc_issuer = Some(issuer.url.clone());
        config.identity.oidc_audience = Some(AUDIENCE.to_owned());
    })
    .await
}

#[tokio::test]
async fn an_oidc_user_mints_and_finds_keys_under_the_issuer_prefixed_name() {
    let signing = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&signing]).await;
    let server = rest_server_trusting(&issuer).await;
    let mut claims = issuer.claims();
    claims["groups"] = json!(["premium-users"]);
    let token = signing.sign(&claims);
    let owner = format!("{}#3f2c9a1e-dana", issuer.url);

    let created = server.create_key(&token, json!({"name": "dana's"})).await;
    let (key, id) = (
        created["key"].as_str().unwrap(),
        created["id"].as_str().unwrap(),
    );
    let read = server
        .call(Method::GET, &format!("/v1/api-keys/{id}"))
        .token(&token)
        .send()
        .await;
    let by_owner = server
        .call(Method::POST, "/v1/api-keys/search")
        .token(&token)
        .json(json!({"filters": {"username": owner}}))
        .send()
        .await;
    let validated = server
        .internal(Method::POST, "/internal/v1/api-keys/validate")
        .json(json!({"key": key}))
        .send()
        .await;

    assert!(owner.starts_with("http://127.0.0.1:"), "{owner}");
    assert_eq!(created["subscription"], "premium");
    assert_eq!(read.assert_status(200)["username"], owner.as_str());
    let page = by_owner.assert_status(200);
    assert_eq!(rest_admin::names(page), ["dana's"]);
    assert_eq!(page["data"][0]["username"], owner.as_str());
    assert_eq!(validated.assert_status(200)["username"], owner.as_str());
    assert_eq!(server.check("qwen3", key).await, None);
}

#[tokio::test]
async fn an_oidc_admin_demoted_at_the_issuer_is_no_admin_with_the_next_token_nor_with_old_keys() {
    let signing = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&signing]).await;
    let server = rest_server_trusting(&issuer).await;
    let bobs = server.create_key(BOB, json!({"name": "bobs"})).await;
    let bobs_id = bobs["id"].as_str().unwrap();
    let admin_token = signing.sign(&issuer.claims());
    let danas = server
        .create_key(&admin_token, json!({"name": "minted while admin"}))
        .await;
    let danas_key = danas["key"].as_str().unwrap();
    let while_admin = server
        .call(Method::POST, "/v1/api-keys/search")
        .token(&admin_token)
        .json(json!({"filters": {"username": "bob"}}))
        .send()
        .await;

    let mut demoted = issuer.claims();
    demoted["groups"] = json!(["premium-users"]);
    let demoted_token = signing.sign(&demoted);
    let token_after = rest_admin::attempts_on_bobs_keys(&server, &demoted_token, bobs_id).await;
    let key_after = rest_admin::attempts_on_bobs_keys(&server, danas_key, bobs_id).await;

    assert_eq!(rest_admin::names(while_admin.assert_status(200)), ["bobs"]);
    assert_eq!(token_after, rest_admin::non_admin_answers());
    assert_eq!(key_after, rest_admin::non_admin_answers());
    assert_eq!(
        server
            .check("simulator", bobs["key"].as_str().unwrap())
            .await,
        None
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes TokenReview

const SERVICE_ACCOUNT_TOKEN: &str = "sa-token-of-maas-authz";

/// How the test API server answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ApiServerMode {
    Review,
    Fail,
}

struct ApiServerState {
    mode: Mutex<ApiServerMode>,
    requests: AtomicUsize,
    /// token → (username, groups) of the users it knows.
    users: Vec<(&'static str, &'static str, Vec<&'static str>)>,
}

/// A local Kubernetes API server that implements TokenReview only.
struct TestApiServer {
    url: String,
    state: Arc<ApiServerState>,
    token_file: NamedTempFile,
}

async fn token_review(
    State(state): State<Arc<ApiServerState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if *state.mode.lock().unwrap() == ApiServerMode::Fail {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"kind": "Status"})),
        );
    }
    let expected = format!("Bearer {SERVICE_ACCOUNT_TOKEN}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"kind": "Status", "code": 401})),
        );
    }
    if body["apiVersion"] != "authentication.k8s.io/v1" || body["kind"] != "TokenReview" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"kind": "Status", "code": 400})),
        );
    }
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let status = match state.users.iter().find(|(t, _, _)| *t == token) {
        Some((_, username, groups)) => json!({
            "authenticated": true,
            "user": {"username": username, "uid": "u-1", "groups": groups},
        }),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    (
        StatusCode::CREATED,
        Json(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
            "status": status,
        })),
    )
}

impl TestApiServer {
    async fn start() -> Self {
        let state = Arc::new(ApiServerState {
            mode: Mutex::new(ApiServerMode::Review),
            requests: AtomicUsize::new(0),
            users: vec![
                (
                    "k8s-token-of-erin",
                    "erin",
                    vec!["premium-users", "system:authenticated"],
                ),
                ("k8s-token-of-mallory", "mallory", vec!["bad group!"]),
            ],
        });
        let router = axum::Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .with_state(state.clone());
        let url = format!("http://{}", serve(router).await);
        Self {
            url,
            state,
            token_file: file_with(&format!("{SERVICE_ACCOUNT_TOKEN}\n")),
        }
    }

    fn args(&self) -> IdentitySettings {
        IdentitySettings {
            kube_api_url: Some(self.url.clone()),
            kube_token_file: Some(self.token_file.path().to_path_buf()),
            ..Default::default()
        }
    }

    fn fail(&self) {
        *self.state.mode.lock().unwrap() = ApiServerMode::Fail;
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_kubernetes_token_yields_the_reviewed_user_and_groups() {
    let api = TestApiServer::start().await;
    let resolver = resolver(api.args()).await;

    let caller = resolver
        .authenticate(Some("Bearer k8s-token-of-erin"))
        .await;

    assert_eq!(
        seen(&caller),
        Ok((
            "erin",
            vec!["premium-users", "system:authenticated"],
            false,
            CredentialKind::KubernetesToken,
        ))
    );
}

#[tokio::test]
async fn a_kubernetes_token_the_api_server_rejects_is_invalid() {
    let api = TestApiServer::start().await;
    let resolver = resolver(api.args()).await;

    let result = resolver
        .authenticate(Some("Bearer not-a-cluster-token"))
        .await;

    assert!(matches!(result, Err(AuthError::Invalid(_))), "{result:?}");
}

#[tokio::test]
async fn a_kubernetes_user_with_an_unsafe_group_is_invalid() {
    let api = TestApiServer::start().await;
    let resolver = resolver(api.args()).await;

    let result = resolver
        .authenticate(Some("Bearer k8s-token-of-mallory"))
        .await;

    assert_eq!(
        result,
        Err(AuthError::Invalid(
            "Kubernetes group \"bad group!\" is not a valid group name".to_owned()
        ))
    );
}

#[tokio::test]
async fn a_failing_api_server_makes_kubernetes_tokens_unavailable() {
    let api = TestApiServer::start().await;
    let resolver = resolver(api.args()).await;
    api.fail();

    let result = resolver
        .authenticate(Some("Bearer k8s-token-of-erin"))
        .await;

    assert!(
        matches!(result, Err(AuthError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_api_server_refusing_our_service_account_makes_tokens_unavailable() {
    let api = TestApiServer::start().await;
    let wrong_token = file_with("someone-elses-token");
    let resolver = resolver(IdentitySettings {
        kube_token_file: Some(wrong_token.path().to_path_buf()),
        ..api.args()
    })
    .await;

    let result = resolver
        .authenticate(Some("Bearer k8s-token-of-erin"))
        .await;

    assert!(
        matches!(result, Err(AuthError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_makes_kubernetes_tokens_unavailable() {
    let api = TestApiServer::start().await;
    let resolver = resolver(IdentitySettings {
        kube_api_url: Some(closed_port_url().await),
        ..api.args()
    })
    .await;

    let result = resolver
        .authenticate(Some("Bearer k8s-token-of-erin"))
        .await;

    assert!(
        matches!(result, Err(AuthError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn token_reviews_are_cached_for_accepted_and_rejected_tokens() {
    let api = TestApiServer::start().await;
    let resolver = resolver(api.args()).await;

    for _ in 0..2 {
        resolver
            .authenticate(Some("Bearer k8s-token-of-erin"))
            .await
            .expect("authenticated");
        let rejected = resolver
            .authenticate(Some("Bearer not-a-cluster-token"))
            .await;
        assert!(
            matches!(rejected, Err(AuthError::Invalid(_))),
            "{rejected:?}"
        );
    }

    assert_eq!(api.requests(), 2, "one review per token");
}

#[tokio::test]
async fn a_failed_review_is_not_cached() {
    let api = TestApiServer::start().await;
    let resolver = resolver(api.args()).await;
    api.fail();
    let failed = resolver
        .authenticate(Some("Bearer k8s-token-of-erin"))
        .await;
    *api.state.mode.lock().unwrap() = ApiServerMode::Review;

    let caller = resolver
        .authenticate(Some("Bearer k8s-token-of-erin"))
        .await;

    assert!(
        matches!(failed, Err(AuthError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(caller.expect("authenticated").username, "erin");
}

#[tokio::test]
async fn a_service_account_jwt_goes_to_token_review_when_oidc_is_also_configured() {
    let api = TestApiServer::start().await;
    let key = TestKey::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resolver = resolver(IdentitySettings {
        oidc_issuer: issuer.args().oidc_issuer,
        oidc_audience: issuer.args().oidc_audience,
        ..api.args()
    })
    .await;
    let mut claims = issuer.claims();
    claims["iss"] = json!("https://kubernetes.default.svc");
    let cluster_jwt = key.sign(&claims);

    let result = resolver.authenticate(Some(&bearer(&cluster_jwt))).await;

    assert!(matches!(result, Err(AuthError::Invalid(_))), "{result:?}");
    assert_eq!(api.requests(), 1, "the JWT was reviewed by the API server");
    assert_eq!(issuer.jwks_requests(), 0);
}

#[tokio::test]
async fn an_unreadable_service_account_token_fails_start_up_naming_the_variable() {
    let api = TestApiServer::start().await;

    let error = setup_error(IdentitySettings {
        kube_token_file: Some(PathBuf::from("/nonexistent/sa-token")),
        ..api.args()
    })
    .await;

    assert!(
        error.contains("MAAS_AUTHZ_KUBE_TOKEN_FILE=/nonexistent/sa-token: cannot read the file"),
        "{error}"
    );
}

#[tokio::test]
async fn a_kubernetes_api_url_that_is_not_http_fails_start_up() {
    let api = TestApiServer::start().await;

    let error = setup_error(IdentitySettings {
        kube_api_url: Some("ftp://cluster.local".to_owned()),
        ..api.args()
    })
    .await;

    assert!(
        error.contains("MAAS_AUTHZ_KUBE_API_URL=ftp://cluster.local"),
        "{error}"
    );
}
