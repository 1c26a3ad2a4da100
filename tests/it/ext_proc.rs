//! The token meter's gRPC service over real loopback gRPC, driven the way Envoy drives it, with a
//! sink that records every charge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use maas_authz::assertion::{HEADER_IDENTITY_ASSERTION, IdentityAssertion, SigningKeys};
use maas_authz::grpc::ext_proc::{ExtProcService, MeterSettings};
use maas_authz::policy::Policy;
use maas_authz::usage::{TokenSink, UsageSubject};
use tokio::sync::Notify;
use tonic::Streaming;

/// Remembers every charge and wakes whoever waits for one.
#[derive(Default)]
struct RecordingSink {
    charges: Mutex<Vec<(UsageSubject, u64)>>,
    charged: Notify,
}

#[async_trait::async_trait]
impl TokenSink for RecordingSink {
    async fn charge(&self, subject: &UsageSubject, charge: &maas_authz::usage::Charge) {
        self.charges
            .lock()
            .unwrap()
            .push((subject.clone(), charge.usage.total));
        self.charged.notify_one();
    }
}

impl RecordingSink {
    async fn next_charge(&self) -> Vec<(UsageSubject, u64)> {
        tokio::time::timeout(Duration::from_secs(10), self.charged.notified())
            .await
            .expect("a charge within 10 s");
        self.charges.lock().unwrap().clone()
    }
}

/// The meter served on a free loopback port; returns a client and the sink.
async fn serve_meter() -> (
    ExternalProcessorClient<tonic::transport::Channel>,
    Arc<RecordingSink>,
) {
    let sink = Arc::new(RecordingSink::default());
    let policy = Policy::load(&crate::support::example_policy_path()).unwrap();
    let service = ExtProcService::new(
        sink.clone(),
        Arc::new(()),
        MeterSettings::default(),
        Arc::new(signing_keys()),
        Arc::new(ArcSwap::from_pointee(policy)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let client = ExternalProcessorClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    (client, sink)
}

/// One ext_proc stream: what Envoy sends, and the replies.
struct Conversation {
    to_meter: mpsc::Sender<ProcessingRequest>,
    replies: Streaming<ProcessingResponse>,
}

impl Conversation {
    async fn open(client: &mut ExternalProcessorClient<tonic::transport::Channel>) -> Self {
        let (to_meter, requests) = mpsc::channel(8);
        let replies = client.process(requests).await.expect("stream").into_inner();
        Self { to_meter, replies }
    }

    async fn send(&mut self, request: Message) -> Reply {
        self.send_with(request, None).await
    }

    async fn send_with(&mut self, request: Message, metadata: Option<Metadata>) -> Reply {
        self.to_meter
            .send(ProcessingRequest {
                metadata_context: metadata,
                request: Some(request),
                ..Default::default()
            })
            .await
            .expect("send");
        self.replies
            .next()
            .await
            .expect("a reply")
            .expect("an OK reply")
            .response
            .expect("a response")
    }
}

const SUBSCRIPTION_KEY: &str = "maas/premium@models-as-a-service/simulator";

fn signing_keys() -> SigningKeys {
    SigningKeys::parse("it=an-integration-test-secret-of-32-bytes").unwrap()
}

/// Check's assertion for alice on the simulator, as Check stamps it now.
fn assertion() -> String {
    signing_keys().sign(&IdentityAssertion {
        user: "alice".to_owned(),
        subscription_key: SUBSCRIPTION_KEY.to_owned(),
        model: "models-as-a-service/simulator".to_owned(),
        key_id: "0f".to_owned(),
        issued_at: chrono::Utc::now().timestamp(),
    })
}

/// Request headers of a POST that carries no body, with Check's assertion.
fn request_headers(path: &str) -> Message {
    let token = assertion();
    let mut message = headers(&[
        (":method", "POST"),
        (":path", path),
        (HEADER_IDENTITY_ASSERTION, &token),
    ]);
    message.end_of_stream = true;
    Message::RequestHeaders(message)
}

/// What an attacker on the gRPC port sends: Envoy's old identity metadata, naming a victim.
fn forged_identity(user: &str, subscription_key: &str) -> Metadata {
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    Metadata {
        filter_metadata: HashMap::from([(
            "envoy.filters.http.ext_authz".to_owned(),
            Struct {
                fields: HashMap::from([
                    ("user".to_owned(), text(user)),
                    (
                        "selected_subscription_key".to_owned(),
                        text(subscription_key),
                    ),
                ]),
            },
        )]),
        ..Default::default()
    }
}

fn headers(pairs: &[(&str, &str)]) -> HttpHeaders {
    HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(key, value)| HeaderValue {
                    key: (*key).to_owned(),
                    raw_value: value.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        }),
        ..Default::default()
    }
}

fn body(bytes: &[u8], end_of_stream: bool) -> HttpBody {
    HttpBody {
        body: bytes.to_vec(),
        end_of_stream,
        ..Default::default()
    }
}

fn alice() -> UsageSubject {
    UsageSubject {
        user: "alice".to_owned(),
        subscription_key: maas_authz::ids::SubscriptionKey::from_wire(SUBSCRIPTION_KEY),
        key_id: "0f".to_owned(),
    }
}

#[tokio::test]
async fn ext_proc_charges_the_identity_check_stamped_once_at_the_end_of_the_response() {
    let (mut client, sink) = serve_meter().await;
    let mut conversation = Conversation::open(&mut client).await;

    let reply = conversation.send(request_headers("/m/v1/embeddings")).await;
    assert!(matches!(reply, Reply::RequestHeaders(_)), "{reply:?}");
    let reply = conversation
        .send(Message::ResponseHeaders(headers(&[
            (":status", "200"),
            ("content-type", "application/json"),
        ])))
        .await;
    assert!(matches!(reply, Reply::ResponseHeaders(_)), "{reply:?}");
    let reply = conversation
        .send(Message::ResponseBody(body(
            br#"{"data":[],"usage":{"prompt_tok"#,
            false,
        )))
        .await;
    assert!(matches!(reply, Reply::ResponseBody(_)), "{reply:?}");
    assert!(
        sink.charges.lock().unwrap().is_empty(),
        "charged before the end"
    );
    let reply = conversation
        .send(Message::ResponseBody(body(
            br#"ens":8,"total_tokens":8}}"#,
            true,
        )))
        .await;
    assert!(matches!(reply, Reply::ResponseBody(_)), "{reply:?}");

    let charges = sink.next_charge().await;
    assert_eq!(charges, [(alice(), 8)]);
}

#[tokio::test]
async fn ext_proc_charges_what_it_saw_and_an_estimate_when_envoy_drops_the_stream_mid_response() {
    let (mut client, sink) = serve_meter().await;
    let mut conversation = Conversation::open(&mut client).await;
    conversation
        .send(request_headers("/claude/v1/messages"))
        .await;
    conversation
        .send(Message::ResponseHeaders(headers(&[
            (":status", "200"),
            ("content-type", "text/event-stream"),
        ])))
        .await;
    conversation
        .send(Message::ResponseBody(body(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"twelve chars\"}}\n\n",
            false,
        )))
        .await;

    drop(conversation);

    // 30 reported prompt tokens, and 3 estimated from the 12 characters streamed (the stream
    // reported 1 so far).
    assert_eq!(sink.next_charge().await, [(alice(), 33)]);
}

#[tokio::test]
async fn a_forged_process_call_naming_a_victim_is_refused_and_charges_nobody() {
    let (mut client, sink) = serve_meter().await;
    let mut forged = Conversation::open(&mut client).await;

    let reply = forged
        .send_with(
            Message::RequestHeaders(headers(&[
                (":method", "POST"),
                (":path", "/simulator/v1/chat/completions"),
                ("x-maas-username", "victim"),
            ])),
            Some(forged_identity(
                "victim",
                "maas/free@models-as-a-service/simulator",
            )),
        )
        .await;

    let Reply::ImmediateResponse(answer) = reply else {
        panic!("not refused: {reply:?}");
    };
    assert_eq!(answer.status.map(|s| s.code), Some(403));
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["error"]["code"], "identity_missing");
    // The attacker now claims a response with 999,999,999 tokens; the meter charges nothing.
    forged
        .to_meter
        .send(ProcessingRequest {
            request: Some(Message::ResponseBody(body_with_usage(999_999_999))),
            ..Default::default()
        })
        .await
        .unwrap();
    drop(forged);

    // A real conversation afterwards is charged, and it is the only charge.
    let mut real = Conversation::open(&mut client).await;
    real.send(request_headers("/m/v1/embeddings")).await;
    real.send(Message::ResponseHeaders(headers(&[(":status", "200")])))
        .await;
    real.send(Message::ResponseBody(body_with_usage(8))).await;
    assert_eq!(sink.next_charge().await, [(alice(), 8)]);
}

fn body_with_usage(total: u64) -> HttpBody {
    body(
        format!(r#"{{"usage":{{"prompt_tokens":{total},"total_tokens":{total}}}}}"#).as_bytes(),
        true,
    )
}
