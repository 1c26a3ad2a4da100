//! The request-side rewrite: ask for the usage chunk of a stream the client did not ask for.

use serde_json::{Map, Value};

/// For a streaming OpenAI chat or completion request (`"stream": true`) whose
/// `stream_options.include_usage` is not `true`, the same request with it set, re-serialised;
/// `None` when nothing needs changing or the body is not a JSON object (it then goes upstream
/// untouched and the model server answers it as it would have). Without this, OpenAI-compatible
/// servers report no usage at all in a stream, and the tokens would go unmetered.
pub fn force_stream_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut request: Map<String, Value> = serde_json::from_slice(body).ok()?;
    if request.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    let options = request
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if !options.is_object() {
        *options = Value::Object(Map::new());
    }
    let options = options.as_object_mut()?;
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return None;
    }
    options.insert("include_usage".to_owned(), Value::Bool(true));
    serde_json::to_vec(&request).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rewritten(body: &Value) -> Option<Value> {
        force_stream_usage(body.to_string().as_bytes())
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
    fn requests_that_need_nothing_are_left_alone() {
        let cases = [
            json!({"model": "m"}),
            json!({"stream": false}),
            json!({"stream": "true"}),
            json!({"stream": true, "stream_options": {"include_usage": true}}),
            json!([1, 2]),
            json!("stream"),
        ];
        for case in cases {
            assert_eq!(rewritten(&case), None, "{case}");
        }
        for junk in [&b""[..], b"{", b"\xff", b"{\"stream\": tru}"] {
            assert_eq!(force_stream_usage(junk), None);
        }
    }
}
