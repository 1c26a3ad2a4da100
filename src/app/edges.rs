//! The edges `serve` exposes (gRPC: Check, token meter, key validation, health; the public and
//! internal REST APIs; metrics), each built from only the services it uses.

use std::sync::Arc;

use anyhow::Context;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

use super::background::DATABASE_HEALTH_SERVICE;
use super::services::Services;
use crate::cache::KeyCache;
use crate::config::ServeConfig;
use crate::grpc::check_server::CheckServer;
use crate::grpc::ext_authz::ExtAuthzService;
use crate::grpc::ext_proc::{ExtProcService, MeterSettings};
use crate::grpc::key_validation::KeyValidationService;
use crate::http::{InternalApi, PublicApi};
use crate::keys::{KeyManager, KeyPolicySettings};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::pb::key_validation_server::KeyValidationServer;
use crate::store::served::ServedStore;

/// The gRPC router: health, reflection, Check, KeyValidation and the token meter.
pub(crate) fn grpc_router(
    config: &ServeConfig,
    services: &Services,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> anyhow::Result<tonic::transport::server::Router> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build gRPC reflection")?;
    let check = CheckServer::new(
        ExtAuthzService::new(
            services.authorizer.clone(),
            services.metrics.clone(),
            services.signing.clone(),
        )
        .with_dynamic_metadata(config.dynamic_metadata)
        .with_invalid_keys_forbidden(config.enforcement.invalid_key_status == "403"),
    );
    let key_validation = KeyValidationServer::new(KeyValidationService::new(
        services.authorizer.clone(),
        config.database.tenant.clone(),
    ));
    let meter = ExtProcService::new(
        services.token_sink.clone(),
        services.metrics.clone(),
        MeterSettings {
            force_stream_usage: config.force_stream_usage,
            max_request_bytes: usize::try_from(config.enforcement.meter_max_request_bytes)
                .unwrap_or(usize::MAX),
        },
        services.signing.clone(),
        services.policy.clone(),
    );
    let max_message = meter.max_message_bytes();
    Ok(tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(check)
        .add_service(key_validation)
        .add_service(ExternalProcessorServer::new(meter).max_decoding_message_size(max_message)))
}

/// Marks every gRPC service SERVING, and the database too: migrations (or the pool) just ran, so
/// SERVING until the database watcher's first ping says otherwise.
pub(super) async fn report_serving(health: &tonic_health::server::HealthReporter) {
    health.set_serving::<CheckServer<ServedStore>>().await;
    health
        .set_serving::<KeyValidationServer<KeyValidationService<ServedStore>>>()
        .await;
    health
        .set_serving::<ExternalProcessorServer<ExtProcService>>()
        .await;
    health
        .set_service_status(
            DATABASE_HEALTH_SERVICE,
            tonic_health::ServingStatus::Serving,
        )
        .await;
}

/// The key-management operations both REST listeners share.
pub(crate) fn key_manager(
    config: &ServeConfig,
    services: &Services,
) -> Arc<KeyManager<ServedStore>> {
    Arc::new(KeyManager::new(
        services.store.clone(),
        services.cache.clone(),
        services.policy.clone(),
        KeyPolicySettings {
            max_expiration_days: config.http.api_key_max_expiration_days,
            token_max_lifetime: config.http.token_max_expiration,
            max_active_keys_per_user: config.abuse.max_active_keys_per_user.0,
        },
    ))
}

/// What the public REST routes use (the only edge that authenticates callers).
pub(crate) fn public_api(
    config: &ServeConfig,
    services: &Services,
    keys: Arc<KeyManager<ServedStore>>,
) -> Arc<PublicApi> {
    Arc::new(PublicApi {
        keys,
        identity: services.identity.clone(),
        policy: services.policy.clone(),
        policy_sync: services.policy_sync.clone(),
        limiter: services.limiter.clone(),
        store: services.store.clone(),
        public_url: config.http.public_url.clone(),
        request_timeout: config.http.http_request_timeout,
        billing_currency: config.ledger.billing_currency.clone(),
        portal: portal_settings(config),
    })
}

/// The portal's sign-in options: OIDC when both an issuer and a portal client id are set.
fn portal_settings(config: &ServeConfig) -> crate::http::PortalSettings {
    let oidc = match (
        &config.identity.oidc_issuer,
        &config.http.portal_oidc_client_id,
    ) {
        (Some(issuer), Some(client_id)) => Some(crate::http::PortalOidc {
            issuer: issuer.trim_end_matches('/').to_owned(),
            client_id: client_id.clone(),
            scopes: config.http.portal_oidc_scopes.clone(),
        }),
        _ => None,
    };
    crate::http::PortalSettings { oidc }
}

/// What the internal REST routes (validate, clean-up) use.
pub(super) fn internal_api(
    config: &ServeConfig,
    services: &Services,
    keys: Arc<KeyManager<ServedStore>>,
) -> Arc<InternalApi> {
    Arc::new(InternalApi {
        keys,
        authorizer: services.authorizer.clone(),
        tenant: config.database.tenant.clone(),
        request_timeout: config.http.http_request_timeout,
    })
}

/// `GET /metrics`: refreshes the gauges read on demand (cache sizes, pool, counter store) and
/// renders every metric.
pub(super) fn metrics_router(
    metrics: Arc<Metrics>,
    cache: KeyCache,
    store: Arc<ServedStore>,
    limiter: Option<Arc<Limiter>>,
) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, cache, store, limiter) = (
                metrics.clone(),
                cache.clone(),
                store.clone(),
                limiter.clone(),
            );
            async move {
                metrics.set_state(
                    cache.sizes(),
                    cache.known_keys().map_or(0, |known| known.len()),
                    store.pool_state(),
                );
                if let Some(limiter) = limiter {
                    metrics.set_counter_store_up(limiter.ping().await.is_ok());
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    )
}
