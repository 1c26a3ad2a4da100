//! `maas.authz.v1.KeyValidation/Validate`: upstream's validate contract over gRPC.

use maas_authz::pb::ValidateRequest;
use maas_authz::pb::key_validation_client::KeyValidationClient;
use maas_authz::store::KeyStore;

use crate::support::*;

#[tokio::test]
async fn validate_reports_a_valid_key_with_upstream_fields() {
    let server = TestServer::start().await;
    let (key, record) = mint(&server.db.store(), &PREMIUM_USER).await;
    let mut client = KeyValidationClient::new(server.channel().await);

    let response = client
        .validate(ValidateRequest { key })
        .await
        .unwrap()
        .into_inner();

    assert!(response.valid);
    assert_eq!(response.user_id, record.id.to_string());
    assert_eq!(response.key_id, record.id.to_string());
    assert_eq!(response.username, "bob");
    assert_eq!(response.key_name, "test key");
    assert_eq!(
        response.groups,
        vec!["system:authenticated", "premium-users"]
    );
    assert_eq!(response.subscription, "premium");
    assert_eq!(response.tenant, "models-as-a-service");
    assert_eq!(response.reason, "");
}

#[tokio::test]
async fn validate_gives_upstreams_reason_for_each_invalid_key() {
    let server = TestServer::start().await;
    let store = server.db.store();
    let (revoked, record) = mint(&store, &FREE_USER).await;
    store.revoke_key(record.id).await.unwrap();
    let legacy = KeyOwner {
        user: "x",
        groups: &[],
        subscription: "",
    };
    let (unbound, _) = insert_raw(
        &store,
        &legacy,
        chrono::Utc::now() + chrono::Duration::hours(1),
    )
    .await;
    let unknown = maas_authz::key::ApiKey::generate()
        .unwrap()
        .expose()
        .to_owned();
    let mut client = KeyValidationClient::new(server.channel().await);
    let cases = [
        ("sk-oai-nope".to_owned(), "invalid key format"),
        (unknown, "key not found"),
        (revoked, "key revoked or expired"),
        (unbound, "key has no subscription bound"),
    ];

    for (key, reason) in cases {
        let response = client
            .validate(ValidateRequest { key })
            .await
            .unwrap()
            .into_inner();
        assert!(!response.valid);
        assert_eq!(response.reason, reason);
        assert_eq!(response.username, "");
    }
}

#[tokio::test]
async fn validate_refuses_an_empty_key_as_an_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = KeyValidationClient::new(server.channel().await);

    let status = client
        .validate(ValidateRequest { key: String::new() })
        .await
        .expect_err("empty key");

    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "key is required");
}
