//! The request side of metering: read the body as strictly as any model server could, and ask
//! for the usage chunk of a stream the client did not ask for.
//!
//! Model servers are often Python: `json.loads` accepts `NaN`, `Infinity` and a UTF-8 BOM,
//! pydantic's lax mode takes `"stream": "true"` or `1` as true, and a plain `if body["stream"]`
//! streams on anything truthy. A request whose body we read one way and the server another
//! would stream tokens we never asked usage for, or reach another model than Check authorized.
//! So the meter refuses (400) every body it cannot read unambiguously: anything `serde_json`
//! rejects, a body that is not an object, a top-level key given twice (parsers disagree on
//! which copy wins), a `stream` that is not a JSON boolean, a `model` that is not a string, a
//! `stream_options` that is not an object. What passes reads the same to every server.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::Endpoint;
use super::estimate::{TextTally, prompt_text};

/// What the meter learned from a request body, and the body to send on instead, if changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedRequest {
    /// The body's `model`, if it names one.
    pub model: Option<String>,
    /// `"stream": true`.
    pub streaming: bool,
    /// The prompt's text, for an estimate if the response reports no usage.
    pub prompt: TextTally,
    /// The body with `stream_options.include_usage` set, when the gateway asked for usage.
    pub rewritten: Option<Vec<u8>>,
}

/// Why a request body is refused; the `Display` text is the client's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RequestRefusal {
    #[error(
        "the request body is not valid JSON (send UTF-8 JSON without a byte-order mark, NaN, Infinity or comments)"
    )]
    NotJson,
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("the request body has a top-level key more than once")]
    DuplicateKey,
    #[error("'stream' must be true or false")]
    StreamNotBoolean,
    #[error("'stream_options' must be an object")]
    StreamOptionsNotAnObject,
    #[error("'model' must be a string")]
    ModelNotAString,
}

impl RequestRefusal {
    pub const ALL: [RequestRefusal; 6] = [
        RequestRefusal::NotJson,
        RequestRefusal::NotAnObject,
        RequestRefusal::DuplicateKey,
        RequestRefusal::StreamNotBoolean,
        RequestRefusal::StreamOptionsNotAnObject,
        RequestRefusal::ModelNotAString,
    ];

    /// The metric label and `x-ext-auth-reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestRefusal::NotJson => "body_not_json",
            RequestRefusal::NotAnObject => "body_not_an_object",
            RequestRefusal::DuplicateKey => "body_duplicate_key",
            RequestRefusal::StreamNotBoolean => "stream_not_boolean",
            RequestRefusal::StreamOptionsNotAnObject => "stream_options_not_an_object",
            RequestRefusal::ModelNotAString => "model_not_a_string",
        }
    }
}

/// Reads a whole request body. With `force_stream_usage`, a streaming chat or legacy completion
/// request whose `stream_options.include_usage` is not `true` is rewritten to ask for it:
/// without it OpenAI-compatible servers report no usage in a stream.
pub fn inspect_request(
    body: &[u8],
    endpoint: Endpoint,
    force_stream_usage: bool,
) -> Result<InspectedRequest, RequestRefusal> {
    let mut request = parse_object(body)?;
    let streaming = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(on)) => *on,
        Some(_) => return Err(RequestRefusal::StreamNotBoolean),
    };
    let model = match request.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(model)) => Some(model.clone()),
        Some(_) => return Err(RequestRefusal::ModelNotAString),
    };
    let options_given = match request.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(_)) => true,
        Some(_) => return Err(RequestRefusal::StreamOptionsNotAnObject),
    };
    let prompt = prompt_text(&Value::Object(request.clone()));
    let mut rewritten = None;
    if force_stream_usage && streaming && endpoint.accepts_stream_options() {
        let options = request
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options_given {
            *options = Value::Object(Map::new());
        }
        if let Some(options) = options.as_object_mut()
            && options.get("include_usage") != Some(&Value::Bool(true))
        {
            options.insert("include_usage".to_owned(), Value::Bool(true));
            rewritten = serde_json::to_vec(&request).ok();
        }
    }
    Ok(InspectedRequest {
        model,
        streaming,
        prompt,
        rewritten,
    })
}

/// The body as a JSON object whose top-level keys are all distinct.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, RequestRefusal> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = deserializer.deserialize_any(ObjectVisitor);
    let parsed = parsed.and_then(|parsed| deserializer.end().map(|()| parsed));
    match parsed {
        Ok(Parsed::Object(map)) => Ok(map),
        Ok(Parsed::Duplicate) => Err(RequestRefusal::DuplicateKey),
        Ok(Parsed::NotAnObject) => Err(RequestRefusal::NotAnObject),
        Err(_) => Err(RequestRefusal::NotJson),
    }
}

enum Parsed {
    Object(Map<String, Value>),
    Duplicate,
    NotAnObject,
}

/// Reads a top-level object key by key, noticing a repeated key (which a map would silently
/// merge); any other JSON value is read whole and reported as not an object.
struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Parsed, A::Error> {
        let mut map = Map::new();
        let mut duplicate = false;
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            duplicate |= map.insert(key, value).is_some();
        }
        Ok(if duplicate {
            Parsed::Duplicate
        } else {
            Parsed::Object(map)
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut access: A) -> Result<Parsed, A::Error> {
        while access.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Parsed::NotAnObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_str<E>(self, _: &str) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_unit<E>(self) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn inspect(body: &Value) -> Result<InspectedRequest, RequestRefusal> {
        inspect_request(body.to_string().as_bytes(), Endpoint::ChatCompletions, true)
    }

    fn rewritten(body: &Value) -> Option<Value> {
        inspect(body)
            .unwrap()
            .rewritten
            .map(|bytes| serde_json::from_slice(&bytes).expect("rewritten body is JSON"))
    }

    #[test]
    fn a_stream_without_include_usage_gets_it_and_keeps_everything_else() {
        let request = json!({
            "model": "m", "stream": true, "temperature": 0.7,
            "messages": [{"role": "user", "content": "héllo \"quoted\""}],
        });
        let mut expected = request.clone();
        expected["stream_options"] = json!({"include_usage": true});
        assert_eq!(rewritten(&request), Some(expected));
        let inspected = inspect(&request).unwrap();
        assert!(inspected.streaming);
        assert_eq!(inspected.model.as_deref(), Some("m"));
    }

    #[test]
    fn other_stream_options_are_kept_and_false_is_overridden() {
        let request = json!({"stream": true, "stream_options": {"include_usage": false, "x": 1}});
        assert_eq!(
            rewritten(&request).unwrap()["stream_options"],
            json!({"include_usage": true, "x": 1})
        );
        let request = json!({"stream": true, "stream_options": null});
        assert_eq!(
            rewritten(&request).unwrap()["stream_options"],
            json!({"include_usage": true})
        );
    }

    #[test]
    fn requests_that_need_no_rewrite_are_left_alone() {
        for case in [
            json!({"model": "m"}),
            json!({"stream": false}),
            json!({"stream": null}),
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ] {
            assert_eq!(rewritten(&case), None, "{case}");
        }
        let embeddings = inspect_request(br#"{"stream":true}"#, Endpoint::Embeddings, true);
        assert_eq!(embeddings.unwrap().rewritten, None);
        let off = inspect_request(br#"{"stream":true}"#, Endpoint::ChatCompletions, false);
        assert_eq!(off.unwrap().rewritten, None);
    }

    #[test]
    fn bodies_a_lax_server_reads_differently_are_refused() {
        let cases: [(&[u8], RequestRefusal); 17] = [
            (br#"{"stream": "true"}"#, RequestRefusal::StreamNotBoolean),
            (br#"{"stream": "false"}"#, RequestRefusal::StreamNotBoolean),
            (br#"{"stream": 1}"#, RequestRefusal::StreamNotBoolean),
            (br#"{"stream": 0}"#, RequestRefusal::StreamNotBoolean),
            (br#"{"stream": [1]}"#, RequestRefusal::StreamNotBoolean),
            (br#"{"stream": {}}"#, RequestRefusal::StreamNotBoolean),
            (br#"{"temperature": NaN}"#, RequestRefusal::NotJson),
            (br#"{"temperature": Infinity}"#, RequestRefusal::NotJson),
            (br#"{"temperature": -Infinity}"#, RequestRefusal::NotJson),
            (b"\xef\xbb\xbf{\"stream\": true}", RequestRefusal::NotJson),
            (
                br#"{"stream": true} {"stream": false}"#,
                RequestRefusal::NotJson,
            ),
            (br#"{"stream": true /* c */}"#, RequestRefusal::NotJson),
            (b"", RequestRefusal::NotJson),
            (br#"[{"stream": true}]"#, RequestRefusal::NotAnObject),
            (
                br#"{"stream": false, "stream": true}"#,
                RequestRefusal::DuplicateKey,
            ),
            (br#"{"model": ["qwen3"]}"#, RequestRefusal::ModelNotAString),
            (
                br#"{"stream": true, "stream_options": "x"}"#,
                RequestRefusal::StreamOptionsNotAnObject,
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                inspect_request(body, Endpoint::ChatCompletions, true),
                Err(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let utf16: Vec<u8> = "{\"stream\": true}"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(
            inspect_request(&utf16, Endpoint::ChatCompletions, true),
            Err(RequestRefusal::NotJson)
        );
    }

    #[test]
    fn the_prompt_text_is_kept_for_an_estimate() {
        let inspected = inspect(&json!({
            "model": "m", "messages": [{"role": "user", "content": "twelve chars"}]
        }))
        .unwrap();
        assert_eq!(inspected.prompt.chars, 12);
        assert_eq!(inspected.prompt.tokens(), 3);
    }
}
