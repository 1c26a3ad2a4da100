//! An incremental Server-Sent Events reader: events split across chunks, any line ending, bounded
//! memory, and (optionally) events removed from the stream on their way through.

/// Largest event held in memory (its `data` lines plus the line being read; when events are
/// being filtered, also its raw bytes). A larger event is not parsed: it is skipped for metering
/// (counted in [`SseReader::oversized_events`]) and, when filtering, forwarded unchanged from the
/// point it outgrew the cap. Usage events are a few hundred bytes; only content events get big.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Reads an event stream chunk by chunk. Each complete event's data (its `data:` lines joined
/// by `\n`) goes to the caller's handler, which says whether the event stays in the stream.
#[derive(Debug)]
pub(super) struct SseReader {
    /// Whether the output is being rewritten: then `raw` holds the current event until it is
    /// complete and the handler has decided.
    filter: bool,
    raw: Vec<u8>,
    /// The current line, without its terminator (empty while an oversized event passes).
    line: Vec<u8>,
    /// Bytes in the current line so far, also while an oversized event passes: 0 at a line
    /// ending means a blank line, the end of an event.
    line_len: usize,
    /// The current event's data so far, each `data:` value followed by `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// The last byte was `\r`: a `\n` right after it belongs to the same line ending, even in
    /// the next chunk.
    after_cr: bool,
    /// The current event outgrew [`MAX_EVENT_BYTES`]; its bytes pass until the next blank line.
    oversized: bool,
    oversized_events: u64,
}

impl SseReader {
    /// `filter`: whether the handler's verdicts are applied, i.e. whether [`Self::feed`] returns
    /// the stream to forward. Without it the stream passes unchanged and the output is empty.
    pub(super) fn new(filter: bool) -> Self {
        Self {
            filter,
            raw: Vec::new(),
            line: Vec::new(),
            line_len: 0,
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            oversized: false,
            oversized_events: 0,
        }
    }

    /// Events too large to read so far.
    pub(super) fn oversized_events(&self) -> u64 {
        self.oversized_events
    }

    /// Reads one chunk; calls `keep(data)` for each event it completes. When filtering, returns
    /// the bytes to forward now: the complete events kept, in order, byte for byte. The start of
    /// an incomplete event is held back until the event is complete (or too large to hold).
    pub(super) fn feed(&mut self, chunk: &[u8], keep: &mut impl FnMut(&[u8]) -> bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.after_cr && rest[0] == b'\n' {
                self.after_cr = false;
                self.pass(&rest[..1], &mut out);
                rest = &rest[1..];
                continue;
            }
            self.after_cr = false;
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.take_line_bytes(rest, &mut out);
                    rest = &[];
                }
                Some(end) => {
                    self.take_line_bytes(&rest[..end], &mut out);
                    self.after_cr = rest[end] == b'\r';
                    self.pass(&rest[end..=end], &mut out);
                    rest = &rest[end + 1..];
                    self.end_line(&mut out, keep);
                }
            }
        }
        out
    }

    /// The stream ended: an event left without its closing blank line is read anyway (servers
    /// that omit it still count), and whatever is held back is returned for forwarding.
    pub(super) fn finish(&mut self, keep: &mut impl FnMut(&[u8]) -> bool) -> Vec<u8> {
        let mut out = Vec::new();
        if self.line_len > 0 {
            self.end_line(&mut out, keep);
        }
        if self.has_data || !self.raw.is_empty() {
            self.end_event(&mut out, keep);
        }
        out
    }

    /// Bytes of the current line (no terminator).
    fn take_line_bytes(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.pass(bytes, out);
        self.line_len += bytes.len();
        if !self.oversized {
            self.line.extend_from_slice(bytes);
            self.check_size(out);
        }
    }

    /// Raw bytes of the stream: held while the event is undecided, forwarded once it outgrew
    /// the cap (when filtering).
    fn pass(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.filter {
            return;
        }
        if self.oversized {
            out.extend_from_slice(bytes);
        } else {
            self.raw.extend_from_slice(bytes);
        }
    }

    fn check_size(&mut self, out: &mut Vec<u8>) {
        let held = self.line.len() + self.data.len() + self.raw.len();
        if held > MAX_EVENT_BYTES {
            self.oversized = true;
            self.oversized_events += 1;
            self.line = Vec::new();
            self.data = Vec::new();
            self.has_data = false;
            out.append(&mut self.raw);
            self.raw = Vec::new();
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>, keep: &mut impl FnMut(&[u8]) -> bool) {
        let blank = self.line_len == 0;
        self.line_len = 0;
        if self.oversized {
            // The skipped event ends at its blank line; there is nothing to hand over.
            if blank {
                self.oversized = false;
            }
            return;
        }
        if blank {
            self.end_event(out, keep);
            return;
        }
        let line = std::mem::take(&mut self.line);
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &b""[..]),
        };
        // Comments (empty field name), `event:`, `id:`, `retry:` and unknown fields carry no usage.
        if field == b"data" {
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
            self.has_data = true;
        }
        self.line = line;
        self.line.clear();
        self.check_size(out);
    }

    fn end_event(&mut self, out: &mut Vec<u8>, keep: &mut impl FnMut(&[u8]) -> bool) {
        let kept = if self.has_data {
            let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
            keep(data)
        } else {
            true
        };
        if self.filter && kept {
            out.append(&mut self.raw);
        }
        self.raw.clear();
        self.data.clear();
        self.has_data = false;
    }
}
