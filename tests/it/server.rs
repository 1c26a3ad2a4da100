//! The served process: health, reflection, metrics, policy reload and shutdown.

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::check::http_get;
use crate::support::*;

#[tokio::test]
async fn health_reports_serving_for_check_and_validate() {
    let server = TestServer::start().await;
    let mut client = HealthClient::new(server.channel().await);

    for service in [
        "",
        "envoy.service.auth.v3.Authorization",
        "maas.authz.v1.KeyValidation",
    ] {
        let response = client
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status, 1, "{service:?} should be SERVING");
    }
}

#[tokio::test]
async fn reflection_lists_our_services_for_grpcurl() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };

    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();

    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"maas.authz.v1.KeyValidation"), "{names:?}");
}

#[tokio::test]
async fn metrics_count_decisions_and_report_cache_pool_and_policy_state() {
    // Minted before the server starts: the insert's notice would otherwise evict the entry at
    // an unpredictable moment and turn a hit into a miss.
    let db = TestDb::migrated().await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let server = TestServer {
        server: maas_authz::app::Application::build(serve_config(&db))
            .await
            .expect("server starts"),
        db,
    };
    let mut client = server.check_client().await;
    for _ in 0..3 {
        client
            .check(check_request(
                "/simulator/v1/chat/completions",
                &[("authorization", &bearer(&key))],
            ))
            .await
            .unwrap();
    }
    client
        .check(check_request("/v1/models", &[]))
        .await
        .unwrap();

    let metrics = http_get(server.server.metrics_addr, "/metrics").await;

    for expected in [
        "maas_authz_check_decisions_total{outcome=\"allow\",reason=\"\"} 3",
        "maas_authz_check_decisions_total{outcome=\"deny\",reason=\"missing_credentials\"} 1",
        "maas_authz_cache_lookups_total{result=\"miss\"} 1",
        "maas_authz_cache_lookups_total{result=\"hit\"} 2",
        "maas_authz_check_duration_seconds_count 4",
        "maas_authz_db_query_duration_seconds_count{statement=\"select_key_by_hash\"} 1",
        "maas_authz_db_pool_connections{state=\"max\"} 4",
        "maas_authz_policy_objects{kind=\"subscriptions\"} 3",
        "maas_authz_cache_entries{cache=\"known\"}",
    ] {
        assert!(metrics.contains(expected), "missing {expected}:\n{metrics}");
    }
}

#[tokio::test]
async fn policy_changes_are_picked_up_and_an_invalid_change_keeps_the_last_good_policy() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(example_policy_path()).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut config = serve_config(&db);
    config.policy_path = Some(dir.path().to_owned());
    let server = maas_authz::app::Application::build(config).await.unwrap();
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .unwrap();
    let qwen3 = || {
        check_request(
            "/qwen3/v1/chat/completions",
            &[("authorization", &bearer(&key))],
        )
    };
    let allowed = |r: &envoy_types::pb::envoy::service::auth::v3::CheckResponse| {
        r.status.as_ref().unwrap().code == 0
    };
    assert!(!allowed(&client.check(qwen3()).await.unwrap().into_inner()));

    // An invalid edit is rejected and changes nothing.
    std::fs::write(dir.path().join("broken.yaml"), "kind: MaaSSubscription\napiVersion: maas.opendatahub.io/v1alpha1\nmetadata: {name: x}\nspec: {}\n").unwrap();
    wait_for_metric(
        server.metrics_addr,
        "maas_authz_policy_reloads_total{result=\"rejected\"}",
    )
    .await;
    assert!(!allowed(&client.check(qwen3()).await.unwrap().into_inner()));

    // A valid edit granting qwen3 to the free tier takes effect without a restart.
    std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
    let subscriptions = std::fs::read_to_string(dir.path().join("subscriptions.yaml")).unwrap();
    let auth = std::fs::read_to_string(dir.path().join("auth-policies.yaml")).unwrap();
    std::fs::write(dir.path().join("subscriptions.yaml"), subscriptions.replacen(
        "    - name: simulator\n      namespace: llm\n",
        "    - name: qwen3\n      namespace: llm\n      tokenRateLimits:\n        - limit: 100\n          window: 1m\n    - name: simulator\n      namespace: llm\n",
        1,
    )).unwrap();
    std::fs::write(
        dir.path().join("auth-policies.yaml"),
        auth.replacen(
            "    - name: simulator\n      namespace: llm\n",
            "    - name: simulator\n      namespace: llm\n    - qwen3\n",
            1,
        ),
    )
    .unwrap();
    let mut granted = false;
    for _ in 0..100 {
        if allowed(&client.check(qwen3()).await.unwrap().into_inner()) {
            granted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        granted,
        "the new policy should grant qwen3 to the free tier"
    );
    server.shutdown().await.unwrap();
}

async fn wait_for_metric(addr: std::net::SocketAddr, needle: &str) {
    for _ in 0..100 {
        if http_get(addr, "/metrics").await.contains(needle) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("metric {needle} never appeared");
}

#[tokio::test]
async fn shutdown_stops_the_listeners() {
    let server = TestServer::start().await;
    let grpc_addr = server.server.grpc_addr;

    server.server.shutdown().await.unwrap();

    assert!(tokio::net::TcpStream::connect(grpc_addr).await.is_err());
}

#[tokio::test]
async fn shutdown_drains_without_waiting_out_the_grace_period() {
    let db = TestDb::migrated().await;
    let mut config = serve_config(&db);
    // Were shutdown to wait for the grace period, this test would hang and hit the guard below.
    config.shutdown_grace = std::time::Duration::from_secs(3_600);
    let server = maas_authz::app::Application::build(config).await.unwrap();

    let stopped = tokio::time::timeout(std::time::Duration::from_secs(60), server.shutdown()).await;

    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
}
