//! [`ResponseMeter`]: one response body in, its usage out, the body passed on (filtered if asked).

use serde_json::Value;

use super::estimate::{TextTally, generated_text};
use super::extract::{UsageTally, is_usage_only_chunk};
use super::json::JsonBody;
use super::sse::{MAX_EVENT_BYTES, SseReader};
use super::{Endpoint, TokenUsage};

/// What to do with a body chunk that went through the meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkAction {
    /// Forward the chunk unchanged.
    Forward,
    /// Forward these bytes instead (possibly none).
    Replace(Vec<u8>),
}

/// The result of metering a whole response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metered {
    /// `None` when the response reported no usage the meter could read.
    pub usage: Option<TokenUsage>,
    /// The generated text seen so far, for an estimate when usage is missing or incomplete.
    pub generated: TextTally,
    /// SSE events skipped because they exceeded [`super::MAX_EVENT_BYTES`].
    pub oversized_events: u64,
}

/// Reads the usage of one response body, fed chunk by chunk as it streams to the client.
///
/// - `text/event-stream` bodies are read event by event ([`super::MAX_EVENT_BYTES`] per event);
///   every event's JSON `data` is searched for usage where the endpoint's API reports it.
/// - Other bodies are JSON: kept whole up to [`super::MAX_JSON_BYTES`] and parsed at the end;
///   beyond that only the last [`super::TAIL_BYTES`] are kept, where every API puts its `usage`.
///
/// With `strip_usage_chunk` (set when the gateway added `stream_options.include_usage` to a
/// request whose client did not ask for it) OpenAI's usage-only final chunk (`"choices": []`) is
/// read and then removed from the stream, so the client gets the stream it asked for; other
/// events pass byte for byte, each held back only until it is complete.
#[derive(Debug)]
pub struct ResponseMeter {
    endpoint: Endpoint,
    body: Body,
    tally: UsageTally,
    /// Generated text seen in stream events (JSON bodies are read at the end).
    generated: TextTally,
    strip_usage_chunk: bool,
}

#[derive(Debug)]
enum Body {
    Json(JsonBody),
    EventStream(SseReader),
}

impl ResponseMeter {
    pub fn new(endpoint: Endpoint, content_type: Option<&str>, strip_usage_chunk: bool) -> Self {
        let event_stream = content_type.is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
        });
        let strip_usage_chunk = strip_usage_chunk && event_stream;
        Self {
            endpoint,
            body: if event_stream {
                Body::EventStream(SseReader::new(strip_usage_chunk))
            } else {
                Body::Json(JsonBody::default())
            },
            tally: UsageTally::default(),
            generated: TextTally::default(),
            strip_usage_chunk,
        }
    }

    /// Reads the next chunk; `end_of_stream` marks the last one (possibly empty).
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkAction {
        let (endpoint, strip) = (self.endpoint, self.strip_usage_chunk);
        let (tally, generated) = (&mut self.tally, &mut self.generated);
        match &mut self.body {
            Body::Json(json) => {
                json.feed(chunk);
                if end_of_stream {
                    json.read_usage(endpoint, tally);
                }
                ChunkAction::Forward
            }
            Body::EventStream(reader) => {
                let mut on_event =
                    |data: &[u8]| read_event(endpoint, strip, tally, generated, data);
                let mut out = reader.feed(chunk, &mut on_event);
                if end_of_stream {
                    out.extend(reader.finish(&mut on_event));
                }
                if strip {
                    ChunkAction::Replace(out)
                } else {
                    ChunkAction::Forward
                }
            }
        }
    }

    /// Whether [`Self::feed`] may return [`ChunkAction::Replace`], i.e. change the body's length.
    pub fn rewrites_body(&self) -> bool {
        self.strip_usage_chunk
    }

    /// What was read so far (the whole response's usage once `end_of_stream` was fed).
    pub fn metered(&self) -> Metered {
        let usage = self.tally.usage();
        let (generated, oversized_events) = match &self.body {
            // Reading a JSON body's text costs a parse: only when there is no usage to charge.
            Body::Json(json) if usage.is_none() => (json.generated(), 0),
            Body::Json(_) => (TextTally::default(), 0),
            Body::EventStream(reader) => {
                let mut generated = self.generated;
                // An event too large to read was at least that much text.
                let oversized = reader.oversized_events();
                generated.add_bytes(MAX_EVENT_BYTES.saturating_mul(oversized as usize));
                (generated, oversized)
            }
        };
        Metered {
            usage,
            generated,
            oversized_events,
        }
    }
}

/// Tallies one SSE event's usage and generated text; says whether the event stays in the
/// stream. `[DONE]` is kept and ignored; other data that is not JSON is kept and counted as text.
fn read_event(
    endpoint: Endpoint,
    strip: bool,
    tally: &mut UsageTally,
    generated: &mut TextTally,
    data: &[u8],
) -> bool {
    let trimmed = data.trim_ascii();
    if trimmed.is_empty() || trimmed == b"[DONE]" {
        return true;
    }
    let Ok(document) = serde_json::from_slice::<Value>(trimmed) else {
        generated.add(TextTally {
            chars: trimmed.len() as u64,
            pieces: 1,
        });
        return true;
    };
    tally.merge_document(endpoint, &document);
    generated.add(generated_text(&document));
    !(strip && is_usage_only_chunk(&document))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::MAX_EVENT_BYTES;

    const SSE: &str = "text/event-stream";

    fn usage(prompt: u64, completion: u64, total: u64) -> Option<TokenUsage> {
        Some(TokenUsage {
            prompt,
            completion,
            total,
        })
    }

    /// Feeds `chunks` (the last one with end of stream); returns the forwarded body and usage.
    fn run(meter: &mut ResponseMeter, chunks: &[&[u8]]) -> (Vec<u8>, Option<TokenUsage>) {
        let mut forwarded = Vec::new();
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.iter().enumerate() {
            match meter.feed(chunk, i == last) {
                ChunkAction::Forward => forwarded.extend_from_slice(chunk),
                ChunkAction::Replace(bytes) => forwarded.extend(bytes),
            }
        }
        (forwarded, meter.metered().usage)
    }

    fn openai_stream(with_usage: bool) -> String {
        let mut text = String::new();
        text.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n");
        text.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n");
        text.push_str(
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        );
        if with_usage {
            text.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}\n\n");
        }
        text.push_str("data: [DONE]\n\n");
        text
    }

    #[test]
    fn an_openai_stream_split_at_every_byte_reads_the_same_usage_and_passes_unchanged() {
        let stream = openai_stream(true);
        let bytes = stream.as_bytes();
        for split in 0..=bytes.len() {
            let mut meter = ResponseMeter::new(Endpoint::ChatCompletions, Some(SSE), false);
            let (forwarded, read) = run(&mut meter, &[&bytes[..split], &bytes[split..]]);
            assert_eq!(read, usage(4, 1, 5), "split at {split}");
            assert_eq!(forwarded, bytes, "split at {split}");
        }
    }

    #[test]
    fn stripping_removes_only_the_usage_chunk_wherever_the_chunks_split() {
        let with_usage = openai_stream(true);
        let without_usage = openai_stream(false);
        let bytes = with_usage.as_bytes();
        for split in 0..=bytes.len() {
            for second in split..=bytes.len() {
                if second % 7 != 0 {
                    continue;
                }
                let mut meter = ResponseMeter::new(Endpoint::ChatCompletions, Some(SSE), true);
                let (forwarded, read) = run(
                    &mut meter,
                    &[&bytes[..split], &bytes[split..second], &bytes[second..]],
                );
                assert_eq!(read, usage(4, 1, 5), "splits {split}/{second}");
                assert_eq!(
                    String::from_utf8(forwarded).unwrap(),
                    without_usage,
                    "splits {split}/{second}"
                );
            }
        }
    }

    #[test]
    fn crlf_and_cr_line_endings_are_events_too() {
        let lf = openai_stream(true);
        for ending in ["\r\n", "\r"] {
            let stream = lf.replace('\n', ending);
            let bytes = stream.as_bytes();
            for split in 0..=bytes.len() {
                let mut meter = ResponseMeter::new(Endpoint::ChatCompletions, Some(SSE), true);
                let (forwarded, read) = run(&mut meter, &[&bytes[..split], &bytes[split..]]);
                assert_eq!(read, usage(4, 1, 5), "{ending:?} split at {split}");
                let expected = openai_stream(false).replace('\n', ending);
                assert_eq!(
                    String::from_utf8(forwarded).unwrap(),
                    expected,
                    "{ending:?} split at {split}"
                );
            }
        }
    }

    #[test]
    fn a_client_that_asked_for_usage_keeps_its_usage_chunk() {
        let stream = openai_stream(true);
        let mut meter = ResponseMeter::new(Endpoint::ChatCompletions, Some(SSE), false);
        let (forwarded, _) = run(&mut meter, &[stream.as_bytes()]);
        assert_eq!(forwarded, stream.as_bytes());
    }

    #[test]
    fn anthropic_message_stream_usage_is_input_plus_final_output() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            ": a comment line\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let chunks: Vec<&[u8]> = stream.as_bytes().chunks(13).collect();
        let mut meter = ResponseMeter::new(
            Endpoint::Messages,
            Some("text/event-stream; charset=utf-8"),
            true,
        );
        let (forwarded, read) = run(&mut meter, &chunks);
        assert_eq!(read, usage(25, 15, 40));
        // Stripping only ever concerns OpenAI's usage-only chunk.
        assert_eq!(forwarded, stream.as_bytes());
    }

    #[test]
    fn responses_stream_usage_comes_from_response_completed() {
        let stream = concat!(
            "event: response.created\n",
            "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"usage\":null}}\n\n",
            "event: response.output_text.delta\n",
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
            "event: response.completed\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":9,\"output_tokens\":2,\"total_tokens\":11}}}\n\n",
        );
        let mut meter = ResponseMeter::new(Endpoint::Responses, Some(SSE), false);
        let (_, read) = run(&mut meter, &[stream.as_bytes()]);
        assert_eq!(read, usage(9, 2, 11));
    }

    #[test]
    fn multi_line_data_is_joined_before_parsing() {
        let stream = "data: {\"choices\":[],\n data: \"usage\":{\"prompt_tokens\":2,\ndata:\"total_tokens\":2}}\n\n";
        let stream = stream.replace("\n data", "\ndata");
        let mut meter = ResponseMeter::new(Endpoint::Completions, Some(SSE), false);
        let (_, read) = run(&mut meter, &[stream.as_bytes()]);
        assert_eq!(read, usage(2, 0, 2));
    }

    #[test]
    fn a_last_event_without_its_blank_line_still_counts_and_is_forwarded() {
        let stream = "data: {\"choices\":[{\"delta\":{}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";
        let mut meter = ResponseMeter::new(Endpoint::ChatCompletions, Some(SSE), false);
        let (forwarded, read) = run(&mut meter, &[stream.as_bytes()]);
        assert_eq!(read, usage(1, 1, 2));
        assert_eq!(forwarded, stream.as_bytes());
    }

    #[test]
    fn an_oversized_event_is_skipped_and_forwarded_and_later_events_still_count() {
        let huge = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(MAX_EVENT_BYTES + 10)
        );
        let tail = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n";
        let stream = format!("{huge}{tail}");
        let chunks: Vec<&[u8]> = stream.as_bytes().chunks(64 * 1024).collect();

        for strip in [false, true] {
            let mut meter = ResponseMeter::new(Endpoint::ChatCompletions, Some(SSE), strip);
            let (forwarded, read) = run(&mut meter, &chunks);
            assert_eq!(read, usage(3, 4, 7), "strip {strip}");
            assert_eq!(meter.metered().oversized_events, 1, "strip {strip}");
            let expected = if strip {
                format!("{huge}data: [DONE]\n\n")
            } else {
                stream.clone()
            };
            assert!(forwarded == expected.as_bytes(), "strip {strip}");
        }
    }

    #[test]
    fn garbage_never_panics_and_passes_unchanged() {
        // A small deterministic generator instead of a property-testing dependency: random
        // bytes from an alphabet rich in SSE syntax, cut into random chunks.
        let alphabet: &[u8] = b"data:{}\"usage\r\n :[]0123456789,prompt_tokens\xff\x00";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..300 {
            let len = (next() % 600) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut cuts: Vec<usize> = (0..(next() % 6))
                .map(|_| (next() as usize) % (len + 1))
                .collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&bytes[start..cut]);
                start = cut;
            }
            chunks.push(&bytes[start..]);
            for endpoint in Endpoint::ALL {
                for content_type in [Some(SSE), Some("application/json"), None] {
                    let mut meter = ResponseMeter::new(endpoint, content_type, false);
                    let (forwarded, usage) = run(&mut meter, &chunks);
                    assert_eq!(forwarded, bytes, "round {round}");
                    // However the body is cut, the meter reads and forwards the same.
                    let mut whole = ResponseMeter::new(endpoint, content_type, false);
                    assert_eq!(run(&mut whole, &[&bytes]).1, usage, "round {round}");
                    let mut meter = ResponseMeter::new(endpoint, content_type, true);
                    let (stripped, _) = run(&mut meter, &chunks);
                    let mut whole = ResponseMeter::new(endpoint, content_type, true);
                    assert_eq!(run(&mut whole, &[&bytes]).0, stripped, "round {round}");
                    assert!(stripped.len() <= bytes.len(), "round {round}");
                }
            }
        }
    }

    #[test]
    fn a_json_body_with_an_event_stream_meter_off_reads_usage() {
        let body = br#"{"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#;
        for content_type in [Some("application/json"), None, Some("text/plain")] {
            let mut meter = ResponseMeter::new(Endpoint::ChatCompletions, content_type, true);
            let (forwarded, read) = run(&mut meter, &[&body[..10], &body[10..]]);
            assert_eq!(read, usage(2, 3, 5), "{content_type:?}");
            assert_eq!(forwarded, body, "{content_type:?}");
        }
    }
}
