//! The token meter's gRPC service over real loopback gRPC, driven the way Envoy drives it, with a
//! sink that records every charge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use maas_authz::grpc::ext_proc::{EXT_AUTHZ_NAMESPACE, ExtProcService, MeterSettings};
use maas_authz::usage::{TokenSink, UsageSubject};
use tokio::sync::Notify;
use tonic::Streaming;

/// Remembers every charge and wakes whoever waits for one.
#[derive(Default)]
struct RecordingSink {
    charges: Mutex<Vec<(UsageSubject, u64)>>,
    charged: Notify,
}

impl TokenSink for RecordingSink {
    fn charge<'a>(
        &'a self,
        subject: &'a UsageSubject,
        tokens: u64,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        self.charges.lock().unwrap().push((subject.clone(), tokens));
        self.charged.notify_one();
        Box::pin(std::future::ready(()))
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
    let service = ExtProcService::new(
        sink.clone(),
        Arc::new(()),
        MeterSettings {
            force_stream_usage: true,
        },
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
        let metadata = identity("alice", "maas/premium@llm/simulator");
        self.to_meter
            .send(ProcessingRequest {
                metadata_context: Some(metadata),
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

fn identity(user: &str, subscription_key: &str) -> Metadata {
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    Metadata {
        filter_metadata: HashMap::from([(
            EXT_AUTHZ_NAMESPACE.to_owned(),
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
        subscription_key: "maas/premium@llm/simulator".to_owned(),
    }
}

#[tokio::test]
async fn ext_proc_charges_the_identity_check_stamped_once_at_the_end_of_the_response() {
    let (mut client, sink) = serve_meter().await;
    let mut conversation = Conversation::open(&mut client).await;

    let reply = conversation
        .send(Message::RequestHeaders(headers(&[
            (":method", "POST"),
            (":path", "/m/v1/embeddings"),
        ])))
        .await;
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
async fn ext_proc_charges_what_it_saw_when_envoy_drops_the_stream_mid_response() {
    let (mut client, sink) = serve_meter().await;
    let mut conversation = Conversation::open(&mut client).await;
    conversation
        .send(Message::RequestHeaders(headers(&[
            (":method", "POST"),
            (":path", "/claude/v1/messages"),
        ])))
        .await;
    conversation
        .send(Message::ResponseHeaders(headers(&[
            (":status", "200"),
            ("content-type", "text/event-stream"),
        ])))
        .await;
    conversation
        .send(Message::ResponseBody(body(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n",
            false,
        )))
        .await;

    drop(conversation);

    assert_eq!(sink.next_charge().await, [(alice(), 31)]);
}
