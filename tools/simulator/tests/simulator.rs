//! The simulator as a real HTTP server on loopback: lax path and body reading, the served model it reports, every API's usage, interruptible streams, and its binary's configuration errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use maas_simulator::{
    DEFAULT_SERVED_MODELS, HEADER_CHUNK_DELAY_MS, HEADER_SERVED_MODEL, ServedModels,
    SimulatorConfig, serve_simulator_with, served_model,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A simulator on a free loopback port, stopped on drop.
struct Simulator {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Simulator {
    async fn start(models: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = SimulatorConfig {
            models: models.parse::<ServedModels>().unwrap(),
        };
        tokio::spawn(serve_simulator_with(listener, config, async {
            let _ = stopped.await;
        }));
        Self { addr, _stop: stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `head` (request line and headers, without the blank line) and `body` byte for byte,
    /// so paths reach the server exactly as written (an HTTP client would normalize them).
    async fn raw(&self, head: &str, body: &[u8]) -> RawResponse {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let mut request =
            format!("{head}\r\nhost: simulator\r\nconnection: close\r\n\r\n").into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request).await.unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.unwrap();
        RawResponse::parse(&bytes)
    }

    async fn raw_post(&self, path: &str, body: &str) -> RawResponse {
        self.raw(
            &format!(
                "POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {}",
                body.len()
            ),
            body.as_bytes(),
        )
        .await
    }
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn parse(bytes: &[u8]) -> Self {
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let mut response = Self {
            status,
            headers,
            body: bytes[split + 4..].to_vec(),
        };
        if response.header("transfer-encoding") == Some("chunked") {
            response.body = dechunk(&response.body);
        }
        response
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
}

fn chat(model: Option<&str>, content: &str, max_tokens: u64) -> String {
    let mut body = json!({
        "messages": [{ "role": "user", "content": content }],
        "max_tokens": max_tokens,
    });
    if let Some(model) = model {
        body["model"] = Value::from(model);
    }
    body.to_string()
}

#[tokio::test]
async fn the_server_serves_the_model_served_model_predicts_for_every_path_trick() {
    let simulator = Simulator::start("simulator,qwen3").await;
    let served = DEFAULT_SERVED_MODELS;
    let paths = [
        "/v1/chat/completions",
        "/V1/Chat/Completions",
        "/qwen3/v1/chat/completions",
        "/llm/qwen3/v1/chat/completions",
        "/llm/qwen3/V1/chat/completions",
        "/qwen3%2Fv1/chat/completions",
        "/qwen3%2fv1%2fchat%2fcompletions",
        "/qwen3/%76%31/chat/completions",
        "/llm%2Fqwen3/v1/chat/completions",
        "/qwen3/./v1/chat/completions",
        "/simulator/../qwen3/v1/chat/completions",
        "/qwen3/v1/../../simulator/v1/chat/completions",
        "/qwen3/%2e%2e/v1/chat/completions",
        "/qwen3//v1///chat//completions/",
        "/qwen3;x/v1/chat/completions",
        "/v1/chat/completions;x",
        "/qwen3%5Cv1/chat/completions",
        "/qwen3+/v1/chat/completions",
        "/qwen3%c0%afv1/chat/completions",
        "/qwen3%252Fv1/chat/completions",
        "/qwen3/v1/chat/completions%3Fx",
        "/qwen3/v1/chat/completions?x=%2F",
        "/gpt-4/v1/chat/completions",
        "/Qwen3/v1/chat/completions",
    ];
    let bodies = [
        chat(None, "one two", 2),
        chat(Some("qwen3"), "one two", 2),
        chat(Some("simulator"), "one two", 2),
        chat(Some("gpt-4"), "one two", 2),
    ];
    for path in paths {
        for body in &bodies {
            let predicted = served_model(path, body.as_bytes(), &served);

            let response = simulator.raw_post(path, body).await;

            let case = format!("POST {path} with {body}");
            assert_eq!(response.header(HEADER_SERVED_MODEL), predicted, "{case}");
            match predicted {
                Some(model) => {
                    assert_eq!(response.status, 200, "{case}");
                    let answer = response.json();
                    assert_eq!(answer["model"], model, "{case}");
                    assert_eq!(answer["usage"]["prompt_tokens"], 2, "{case}");
                }
                None => assert_eq!(response.status, 404, "{case}"),
            }
        }
    }
}

#[tokio::test]
async fn a_prefixed_path_serves_its_model_unless_the_body_names_another_served_model() {
    let simulator = Simulator::start("simulator,qwen3").await;

    let by_path = simulator
        .raw_post("/llm/qwen3/V1/chat/completions", &chat(None, "hi", 1))
        .await;
    let by_body = simulator
        .raw_post(
            "/llm/qwen3/v1/chat/completions",
            &chat(Some("simulator"), "hi", 1),
        )
        .await;
    let unknown_in_body = simulator
        .raw_post("/qwen3/v1/chat/completions", &chat(Some("gpt-4"), "hi", 1))
        .await;

    assert_eq!(by_path.header(HEADER_SERVED_MODEL), Some("qwen3"));
    assert_eq!(by_path.json()["model"], "qwen3");
    assert_eq!(by_body.header(HEADER_SERVED_MODEL), Some("simulator"));
    assert_eq!(by_body.json()["model"], "simulator");
    assert_eq!(unknown_in_body.json()["model"], "qwen3");
}

#[tokio::test]
async fn a_chunked_body_with_a_bom_nan_and_a_duplicate_key_is_read_whole() {
    let simulator = Simulator::start("simulator,qwen3").await;
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend_from_slice(
        br#"{"model": "simulator", "temperature": NaN, "top_p": Infinity, "model": "qwen3",
            "messages": [{"role": "user", "content": "one two three four"}], "max_tokens": "2"}"#,
    );
    let mut chunked = Vec::new();
    for piece in body.chunks(7) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");

    let response = simulator
        .raw(
            "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked",
            &chunked,
        )
        .await;

    assert_eq!(response.status, 200, "{:?}", response);
    assert_eq!(response.header(HEADER_SERVED_MODEL), Some("qwen3"));
    assert_eq!(
        response.json()["usage"],
        json!({ "prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6 })
    );
}

#[tokio::test]
async fn every_generating_route_reports_exact_usage_over_http() {
    let simulator = Simulator::start("simulator,qwen3").await;
    let http = reqwest::Client::new();
    let post = |path: &'static str, body: Value| {
        let request = http.post(simulator.url(path)).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.headers()[HEADER_SERVED_MODEL], "qwen3", "{path}");
            response.json::<Value>().await.unwrap()
        }
    };
    let messages = json!([{ "role": "user", "content": "one two three" }]);

    let chat = post(
        "/qwen3/v1/chat/completions",
        json!({ "messages": messages, "max_tokens": 2 }),
    )
    .await;
    let completion = post(
        "/v1/completions",
        json!({ "model": "qwen3", "prompt": "one two three", "max_tokens": 2 }),
    )
    .await;
    let anthropic = post(
        "/qwen3/v1/messages",
        json!({ "messages": messages, "max_tokens": 2 }),
    )
    .await;
    let responses = post(
        "/qwen3/v1/responses",
        json!({ "input": "one two three", "max_output_tokens": 2 }),
    )
    .await;
    let invocation = post(
        "/invocations",
        json!({ "model": "qwen3", "messages": messages, "max_tokens": 2 }),
    )
    .await;
    let tokenized = post(
        "/tokenize",
        json!({ "model": "qwen3", "prompt": "one two three" }),
    )
    .await;

    let openai = json!({ "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 });
    assert_eq!(chat["usage"], openai);
    assert_eq!(completion["usage"], openai);
    assert_eq!(invocation["usage"], openai);
    assert_eq!(
        anthropic["usage"],
        json!({ "input_tokens": 3, "output_tokens": 2 })
    );
    assert_eq!(responses["usage"]["input_tokens"], 3);
    assert_eq!(responses["usage"]["output_tokens"], 2);
    assert_eq!(responses["usage"]["total_tokens"], 5);
    assert_eq!(tokenized["count"], 3);
}

#[tokio::test]
async fn a_client_can_read_two_events_of_a_slowed_stream_and_hang_up() {
    let simulator = Simulator::start("simulator,qwen3").await;
    let http = reqwest::Client::new();
    let mut response = http
        .post(simulator.url("/qwen3/v1/chat/completions"))
        .header(HEADER_CHUNK_DELAY_MS, "200")
        .json(&json!({ "messages": [{ "role": "user", "content": "hi" }], "stream": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let first = response.chunk().await.unwrap().unwrap();
    let second = response.chunk().await.unwrap().unwrap();
    drop(response);

    let first: Value =
        serde_json::from_slice(first.strip_prefix(b"data: ").unwrap().trim_ascii()).unwrap();
    let second: Value =
        serde_json::from_slice(second.strip_prefix(b"data: ").unwrap().trim_ascii()).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(second["choices"][0]["delta"]["content"], "Hello!");
    assert_eq!(second["model"], "qwen3");
    let health = http.get(simulator.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_chunk_delay_spaces_every_event_after_the_first() {
    let simulator = Simulator::start("simulator,qwen3").await;
    let delay = Duration::from_millis(40);
    let started = Instant::now();

    let response = reqwest::Client::new()
        .post(simulator.url("/v1/messages"))
        .header(HEADER_CHUNK_DELAY_MS, delay.as_millis().to_string())
        .json(&json!({
            "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 1, "stream": true,
        }))
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();

    let events = body.matches("event: ").count();
    // message_start, content_block_start, ping, one delta, block stop, message_delta, stop
    assert_eq!(events, 7);
    assert!(
        started.elapsed() >= delay * (events as u32 - 1),
        "{events} events in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_bad_chunk_delay_is_refused_with_the_reason() {
    let simulator = Simulator::start("simulator,qwen3").await;

    let response = reqwest::Client::new()
        .post(simulator.url("/v1/chat/completions"))
        .header(HEADER_CHUNK_DELAY_MS, "soon")
        .json(&json!({ "messages": [], "stream": true }))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "x-simulator-chunk-delay-ms must be a whole number of milliseconds (0 to 1000)"
    );
}

#[tokio::test]
async fn a_wrong_method_is_405_and_an_unknown_path_404_without_a_served_model() {
    let simulator = Simulator::start("simulator,qwen3").await;
    let http = reqwest::Client::new();

    let get_chat = http
        .get(simulator.url("/qwen3/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    let unknown = http
        .post(simulator.url("/v2/chat/completions"))
        .json(&json!({ "model": "qwen3" }))
        .send()
        .await
        .unwrap();

    assert_eq!(get_chat.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get_chat.headers()["allow"], "POST");
    assert_eq!(get_chat.headers()[HEADER_SERVED_MODEL], "qwen3");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(unknown.headers().get(HEADER_SERVED_MODEL).is_none());
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_configured_model_list_is_listed_and_its_first_model_is_the_default() {
    let simulator = Simulator::start("llama,qwen3").await;
    let http = reqwest::Client::new();

    let models: Value = http
        .get(simulator.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bare = http
        .post(simulator.url("/v1/chat/completions"))
        .json(&json!({ "model": "simulator", "messages": [] }))
        .send()
        .await
        .unwrap();
    let unserved_prefix = simulator
        .raw_post("/simulator/v1/chat/completions", &chat(None, "hi", 1))
        .await;

    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama", "qwen3"]);
    assert_eq!(bare.headers()[HEADER_SERVED_MODEL], "llama");
    assert_eq!(unserved_prefix.status, 404);
}

#[test]
fn the_binary_refuses_a_bad_model_list_naming_the_variable() {
    let cases = [
        (
            " , ",
            "name at least one model to serve (a comma-separated list such as simulator,qwen3)",
        ),
        (
            "qwen3,my model",
            "model name \"my model\" must be printable ASCII without spaces",
        ),
    ];
    for (value, reason) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_maas-simulator"))
            .env_clear()
            .env("MAAS_SIMULATOR_MODELS", value)
            .env("MAAS_SIMULATOR_ADDR", "127.0.0.1:0")
            .output()
            .expect("run maas-simulator");

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "invalid value '{value}' for '--models <MAAS_SIMULATOR_MODELS>': {reason}"
            )),
            "{stderr}"
        );
    }
}
