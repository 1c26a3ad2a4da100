//! Usage fields out of parsed JSON: per endpoint family, merged report by report.

use serde_json::Value;

use super::{Endpoint, TokenUsage};

/// The usage field names of one API family.
struct FieldNames {
    prompt: &'static str,
    completion: &'static str,
    /// `None`: the API reports no total (Anthropic); the sum is used.
    total: Option<&'static str>,
}

const OPENAI: FieldNames = FieldNames {
    prompt: "prompt_tokens",
    completion: "completion_tokens",
    total: Some("total_tokens"),
};
const ANTHROPIC: FieldNames = FieldNames {
    prompt: "input_tokens",
    completion: "output_tokens",
    total: None,
};
const RESPONSES: FieldNames = FieldNames {
    prompt: "input_tokens",
    completion: "output_tokens",
    total: Some("total_tokens"),
};

/// The field names of the endpoint's API; for an unknown endpoint, the family whose names the
/// usage object itself uses.
fn field_names(endpoint: Endpoint, usage: &serde_json::Map<String, Value>) -> &'static FieldNames {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => &OPENAI,
        Endpoint::Messages => &ANTHROPIC,
        Endpoint::Responses => &RESPONSES,
        Endpoint::Other if usage.contains_key("prompt_tokens") => &OPENAI,
        Endpoint::Other => &RESPONSES,
    }
}

/// Usage reported so far by one response. Streams report in pieces (Anthropic: input tokens in
/// `message_start`, the running output count in each `message_delta`) or repeatedly (vLLM's
/// continuous usage stats), so every report overwrites the fields it carries: the last word wins.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct UsageTally {
    prompt: Option<u64>,
    completion: Option<u64>,
    total: Option<u64>,
}

impl UsageTally {
    /// Merges the usage objects a document or stream event carries wherever the endpoint's API
    /// puts them: `usage` (OpenAI, Anthropic `message_delta`, a whole JSON response),
    /// `message.usage` (Anthropic `message_start`) and `response.usage` (Responses
    /// `response.completed`, `response.incomplete`, `response.failed`). `null` usage — OpenAI's
    /// chunks before the last when `include_usage` is on — is no report.
    pub(super) fn merge_document(&mut self, endpoint: Endpoint, document: &Value) {
        let candidates = [
            document.get("usage"),
            document.get("message").and_then(|m| m.get("usage")),
            document.get("response").and_then(|r| r.get("usage")),
        ];
        for usage in candidates.into_iter().flatten() {
            self.merge_usage(endpoint, usage);
        }
    }

    /// Merges one usage object; counts that are not non-negative integers are ignored.
    pub(super) fn merge_usage(&mut self, endpoint: Endpoint, usage: &Value) {
        let Some(fields) = usage.as_object() else {
            return;
        };
        let names = field_names(endpoint, fields);
        let count = |name: &str| fields.get(name).and_then(Value::as_u64);
        if let Some(prompt) = count(names.prompt) {
            self.prompt = Some(prompt);
        }
        if let Some(completion) = count(names.completion) {
            self.completion = Some(completion);
        }
        if let Some(total) = names.total.and_then(count) {
            self.total = Some(total);
        }
    }

    /// What was reported, or `None` when nothing was.
    pub(super) fn usage(&self) -> Option<TokenUsage> {
        if self.prompt.is_none() && self.completion.is_none() && self.total.is_none() {
            return None;
        }
        let prompt = self.prompt.unwrap_or(0);
        let completion = self.completion.unwrap_or(0);
        Some(TokenUsage {
            prompt,
            completion,
            total: self
                .total
                .unwrap_or_else(|| prompt.saturating_add(completion)),
        })
    }
}

/// OpenAI's final stream chunk when `stream_options.include_usage` is on: no choices, only usage.
pub(super) fn is_usage_only_chunk(document: &Value) -> bool {
    document
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && document.get("usage").is_some_and(Value::is_object)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn usage_of(endpoint: Endpoint, documents: &[Value]) -> Option<TokenUsage> {
        let mut tally = UsageTally::default();
        for document in documents {
            tally.merge_document(endpoint, document);
        }
        tally.usage()
    }

    #[test]
    fn openai_usage_is_read_with_the_servers_total() {
        let usage = usage_of(
            Endpoint::ChatCompletions,
            &[json!({"usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}})],
        );
        assert_eq!(
            usage,
            Some(TokenUsage {
                prompt: 4,
                completion: 5,
                total: 9
            })
        );
    }

    #[test]
    fn embeddings_report_prompt_tokens_only() {
        let usage = usage_of(
            Endpoint::Embeddings,
            &[json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}})],
        );
        assert_eq!(
            usage,
            Some(TokenUsage {
                prompt: 8,
                completion: 0,
                total: 8
            })
        );
    }

    #[test]
    fn anthropic_stream_usage_is_merged_from_start_and_deltas() {
        let usage = usage_of(
            Endpoint::Messages,
            &[
                json!({"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1}}}),
                json!({"type": "content_block_delta", "delta": {"text": "hi"}}),
                json!({"type": "message_delta", "usage": {"output_tokens": 15}}),
            ],
        );
        assert_eq!(
            usage,
            Some(TokenUsage {
                prompt: 25,
                completion: 15,
                total: 40
            })
        );
    }

    #[test]
    fn responses_usage_comes_from_the_completed_response() {
        let usage = usage_of(
            Endpoint::Responses,
            &[
                json!({"type": "response.created", "response": {"usage": null}}),
                json!({"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 7, "total_tokens": 10}}}),
            ],
        );
        assert_eq!(
            usage,
            Some(TokenUsage {
                prompt: 3,
                completion: 7,
                total: 10
            })
        );
    }

    #[test]
    fn wrong_field_names_negative_and_fractional_counts_are_no_report() {
        let cases = [
            json!({"usage": {"input_tokens": 3}}),
            json!({"usage": {"prompt_tokens": -3}}),
            json!({"usage": {"prompt_tokens": 1.5}}),
            json!({"usage": {"prompt_tokens": "3"}}),
            json!({"usage": null}),
            json!({"usage": [1, 2]}),
            json!([1, 2]),
            json!("usage"),
        ];
        for case in cases {
            assert_eq!(
                usage_of(Endpoint::ChatCompletions, std::slice::from_ref(&case)),
                None,
                "{case}"
            );
        }
    }

    #[test]
    fn only_a_chunk_without_choices_and_with_usage_is_usage_only() {
        assert!(is_usage_only_chunk(
            &json!({"choices": [], "usage": {"prompt_tokens": 1}})
        ));
        assert!(!is_usage_only_chunk(
            &json!({"choices": [{"delta": {}}], "usage": {"prompt_tokens": 1}})
        ));
        assert!(!is_usage_only_chunk(&json!({"choices": [], "usage": null})));
        assert!(!is_usage_only_chunk(
            &json!({"usage": {"prompt_tokens": 1}})
        ));
    }
}
