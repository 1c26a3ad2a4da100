//! Token estimates for what a response did not report: four characters of text per token.
//!
//! A response that ends early (client gone, upstream reset) or reports no usage is still charged,
//! never zero. The estimate reads text, not tokenizer output: the prompt's strings (everything a
//! client sent except its structural fields) and the generated text a response carried, at
//! [`CHARS_PER_TOKEN`] characters per token (OpenAI's rule of thumb for English), rounded up, and
//! at least one token for every piece of text a stream sent (a stream's chunk is usually one
//! token). Estimates are counted apart (`maas_authz_tokens_estimated_total`).

use serde_json::Value;

/// Characters of text per estimated token.
pub const CHARS_PER_TOKEN: u64 = 4;

/// Request keys whose values are structure, not text the model reads.
const STRUCTURAL_KEYS: [&str; 6] = ["model", "role", "type", "id", "url", "detail"];

/// Response keys under which the APIs put generated text (OpenAI chat and legacy completions,
/// tool calls and reasoning; Anthropic text, thinking and tool-input deltas; Responses deltas).
const GENERATED_KEYS: [&str; 10] = [
    "content",
    "text",
    "delta",
    "arguments",
    "reasoning_content",
    "reasoning",
    "refusal",
    "partial_json",
    "thinking",
    "output_text",
];

/// Text counted towards an estimate: its characters and how many pieces it came in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TextTally {
    pub chars: u64,
    pub pieces: u64,
}

impl TextTally {
    /// The estimated tokens: characters over [`CHARS_PER_TOKEN`] rounded up, at least one per piece.
    pub fn tokens(&self) -> u64 {
        self.chars.div_ceil(CHARS_PER_TOKEN).max(self.pieces)
    }

    /// Adds another tally (e.g. the next stream event's).
    pub fn add(&mut self, other: TextTally) {
        self.chars = self.chars.saturating_add(other.chars);
        self.pieces = self.pieces.saturating_add(other.pieces);
    }

    /// Counts raw bytes as text, for a body that could not be parsed.
    pub fn add_bytes(&mut self, bytes: usize) {
        self.chars = self.chars.saturating_add(bytes as u64);
    }
}

/// The text a request carries: every string value except structural fields (`model`, `role`,
/// `type`, ids and URLs); pieces are not counted (a prompt is not streamed).
pub fn prompt_text(request: &Value) -> TextTally {
    let mut tally = TextTally::default();
    walk_prompt(request, &mut tally);
    tally.pieces = 0;
    tally
}

fn walk_prompt(value: &Value, tally: &mut TextTally) {
    match value {
        Value::String(text) => tally.chars += text.chars().count() as u64,
        Value::Array(items) => items.iter().for_each(|item| walk_prompt(item, tally)),
        Value::Object(fields) => {
            for (key, value) in fields {
                if !STRUCTURAL_KEYS.contains(&key.as_str()) {
                    walk_prompt(value, tally);
                }
            }
        }
        _ => {}
    }
}

/// The generated text in one response document or stream event: every non-empty string found
/// under a key that carries generated text, anywhere outside `usage`.
pub fn generated_text(document: &Value) -> TextTally {
    let mut tally = TextTally::default();
    walk_generated(document, &mut tally);
    tally
}

fn walk_generated(value: &Value, tally: &mut TextTally) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| walk_generated(item, tally)),
        Value::Object(fields) => {
            for (key, value) in fields {
                match value {
                    Value::String(text) if GENERATED_KEYS.contains(&key.as_str()) => {
                        if !text.is_empty() {
                            tally.chars += text.chars().count() as u64;
                            tally.pieces += 1;
                        }
                    }
                    _ if key == "usage" => {}
                    _ => walk_generated(value, tally),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_prompt_is_its_text_without_structure() {
        let request = json!({
            "model": "qwen3-with-a-long-model-name",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Hello there"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]}
            ],
            "stream": true,
        });
        let tally = prompt_text(&request);
        assert_eq!(
            tally.chars,
            ("Be brief.".len() + "Hello there".len()) as u64
        );
        assert_eq!(tally.tokens(), 5);
    }

    #[test]
    fn generated_text_is_found_in_every_api_shape_and_usage_is_skipped() {
        let cases = [
            (
                json!({"choices": [{"delta": {"content": "Hello"}}], "usage": {"text": "x"}}),
                5,
            ),
            (json!({"choices": [{"text": " world"}]}), 6),
            (
                json!({"choices": [{"message": {"content": "Hi", "tool_calls": [{"function": {"arguments": "{\"a\":1}"}}]}}]}),
                9,
            ),
            (
                json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hey"}}),
                3,
            ),
            (
                json!({"type": "response.output_text.delta", "delta": "abc"}),
                3,
            ),
            (json!({"data": [{"embedding": [0.1, 0.2]}]}), 0),
        ];
        for (document, chars) in cases {
            assert_eq!(generated_text(&document).chars, chars, "{document}");
        }
    }

    #[test]
    fn every_streamed_piece_is_at_least_one_token() {
        let mut tally = TextTally::default();
        for piece in ["a", "b", "c"] {
            tally.add(generated_text(
                &json!({"choices": [{"delta": {"content": piece}}]}),
            ));
        }
        assert_eq!(
            tally,
            TextTally {
                chars: 3,
                pieces: 3
            }
        );
        assert_eq!(tally.tokens(), 3);
        assert_eq!(
            TextTally {
                chars: 41,
                pieces: 2
            }
            .tokens(),
            11
        );
    }
}
