//! Usage from a JSON response body that arrives in chunks, in bounded memory.

use serde_json::Value;

use super::Endpoint;
use super::estimate::{TextTally, generated_text};
use super::extract::UsageTally;

/// Bodies up to this size are kept whole and parsed as one document.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;
/// Beyond [`MAX_JSON_BYTES`] only this many trailing bytes are kept: every API puts `usage` near
/// the end of its response (after the choices, the content or the embedding vectors).
pub const TAIL_BYTES: usize = 64 * 1024;

/// Collects a JSON body; [`JsonBody::read_usage`] reads its `usage` at the end.
#[derive(Debug, Default)]
pub(super) struct JsonBody {
    buffer: Vec<u8>,
    /// The body outgrew [`MAX_JSON_BYTES`]: `buffer` holds only its tail.
    truncated: bool,
    /// Bytes fed so far.
    received: usize,
}

impl JsonBody {
    pub(super) fn feed(&mut self, chunk: &[u8]) {
        self.received = self.received.saturating_add(chunk.len());
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() > MAX_JSON_BYTES
            || self.truncated && self.buffer.len() > 2 * TAIL_BYTES
        {
            self.truncated = true;
            let cut = self.buffer.len() - TAIL_BYTES;
            self.buffer.drain(..cut);
        }
    }

    /// Merges the body's usage into `tally`. A whole body is parsed as JSON and its top-level
    /// `usage` read; a truncated or unparsable one (e.g. an SSE stream sent without its content
    /// type) is searched for its last `"usage":` key, whose value is parsed on its own.
    pub(super) fn read_usage(&self, endpoint: Endpoint, tally: &mut UsageTally) {
        if !self.truncated
            && let Ok(document) = serde_json::from_slice::<Value>(&self.buffer)
        {
            tally.merge_document(endpoint, &document);
            return;
        }
        if let Some(usage) = last_usage_object(&self.buffer) {
            tally.merge_usage(endpoint, &usage);
        }
    }
}

impl JsonBody {
    /// The generated text for an estimate: read from the body when it is whole and parses,
    /// else every byte received counts as a character (an over-estimate, never zero).
    pub(super) fn generated(&self) -> TextTally {
        if !self.truncated
            && let Ok(document) = serde_json::from_slice::<Value>(&self.buffer)
        {
            return generated_text(&document);
        }
        let mut tally = TextTally::default();
        tally.add_bytes(self.received);
        tally
    }
}

/// The value of the last `"usage": {...}` in `text` that parses as an object. A key is a quoted
/// `usage` followed by a colon: inside a JSON string the quotes would be escaped, and a string
/// value is never followed by a colon, so only keys match.
fn last_usage_object(text: &[u8]) -> Option<Value> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = text.len();
    while let Some(start) = find_last(&text[..end], KEY) {
        end = start;
        let after_key = &text[start + KEY.len()..];
        let Some(rest) = skip_whitespace(after_key).strip_prefix(b":") else {
            continue;
        };
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
        if let Some(Ok(value @ Value::Object(_))) = values.next() {
            return Some(value);
        }
    }
    None
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|window| window == needle)
}

fn skip_whitespace(text: &[u8]) -> &[u8] {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::TokenUsage;

    fn read(endpoint: Endpoint, chunks: &[&[u8]]) -> Option<TokenUsage> {
        let mut body = JsonBody::default();
        for chunk in chunks {
            body.feed(chunk);
        }
        let mut tally = UsageTally::default();
        body.read_usage(endpoint, &mut tally);
        tally.usage()
    }

    fn usage(prompt: u64, completion: u64, total: u64) -> Option<TokenUsage> {
        Some(TokenUsage {
            prompt,
            completion,
            total,
        })
    }

    #[test]
    fn a_body_split_anywhere_reads_the_same_usage() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi \"usage\": {}"}}],"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}"#;
        for split in 0..=body.len() {
            let (head, tail) = body.split_at(split);
            assert_eq!(
                read(Endpoint::ChatCompletions, &[head, tail]),
                usage(4, 5, 9),
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_body_over_the_cap_is_read_from_its_tail() {
        let vector = "0.0123456789,".repeat(200_000);
        let body = format!(
            r#"{{"object":"list","data":[{{"embedding":[{vector}0.1]}}],"model":"e","usage":{{"prompt_tokens":8,"total_tokens":8}}}}"#
        );
        assert!(body.len() > MAX_JSON_BYTES);
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(16 * 1024).collect();

        let mut json = JsonBody::default();
        for chunk in &chunks {
            json.feed(chunk);
            assert!(json.buffer.len() <= MAX_JSON_BYTES + 16 * 1024);
        }
        assert!(json.truncated);
        let mut tally = UsageTally::default();
        json.read_usage(Endpoint::Embeddings, &mut tally);
        assert_eq!(tally.usage(), usage(8, 0, 8));
    }

    #[test]
    fn anthropic_and_responses_bodies_read_their_own_field_names() {
        let messages = br#"{"type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":10,"output_tokens":3}}"#;
        assert_eq!(read(Endpoint::Messages, &[messages]), usage(10, 3, 13));
        let responses = br#"{"object":"response","output":[],"usage":{"input_tokens":2,"output_tokens":5,"total_tokens":7},"user":null}"#;
        assert_eq!(read(Endpoint::Responses, &[responses]), usage(2, 5, 7));
    }

    #[test]
    fn malformed_bodies_yield_no_usage_or_the_last_readable_one() {
        let cases: [(&[u8], Option<TokenUsage>); 7] = [
            (b"", None),
            (b"not json", None),
            (b"{\"usage\":", None),
            (b"{\"usage\": {\"prompt_tokens\": 3", None),
            (b"\xff\xfe\"usage\"", None),
            (
                b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n",
                usage(1, 2, 3),
            ),
            (
                b"{\"usage\":{\"prompt_tokens\":1,\"total_tokens\":1}, \"usage\" : [1]",
                usage(1, 0, 1),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                read(Endpoint::ChatCompletions, &[body]),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
