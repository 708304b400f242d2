//! Incremental server-sent-events parsing over a growable buffer.
//!
//! Invariants: bytes may arrive split anywhere (inside a line, inside a UTF-8 sequence, between `\r`
//! and `\n`); every complete event is delivered exactly once, in order, with no limit on line or event
//! size (a 20K-token echo is one long line). Only `data:` fields matter to OpenAI-style streams; other
//! fields and comments are skipped. The parser allocates only when an event spans reads.
//!
//! Written here rather than with an SSE crate: the load client must timestamp every read before any
//! parsing and must hand out borrowed event data without a per-event allocation (a thousand streams at
//! 100 tokens/s each); stream adapters built around owned `String` events do neither.

/// Feeds bytes in, hands complete events' `data` out.
#[derive(Debug, Default)]
pub struct SseParser {
    /// An incomplete line carried over from the previous read.
    partial: Vec<u8>,
    /// `data` of the event being assembled (several `data:` lines join with `\n`).
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes`, calling `on_event` with the data of every event completed by them.
    pub fn feed(&mut self, mut bytes: &[u8], on_event: &mut impl FnMut(&[u8])) {
        while let Some(nl) = memchr::memchr(b'\n', bytes) {
            let (head, rest) = bytes.split_at(nl);
            bytes = &rest[1..];
            if self.partial.is_empty() {
                self.line(head, on_event);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line(&line, on_event);
                // Keep the allocation for the next long line.
                line.clear();
                self.partial = line;
            }
        }
        self.partial.extend_from_slice(bytes);
    }

    /// Delivers a last event the server did not terminate with a blank line (end of body).
    pub fn finish(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, on_event);
        }
        self.dispatch(on_event);
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(&[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        // `event:`, `id:`, `retry:` and `:comment` lines carry nothing we use.
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if self.has_data {
            on_event(&self.data);
            self.data.clear();
            self.has_data = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let mut push = |d: &[u8]| out.push(String::from_utf8(d.to_vec()).unwrap());
        for c in chunks {
            parser.feed(c, &mut push);
        }
        parser.finish(&mut push);
        out
    }

    const STREAM: &[u8] = "data: {\"a\":\"é\"}\n\n: keep-alive\n\ndata:{\"b\":2}\r\n\r\nevent: x\ndata: one\ndata: two\n\ndata: [DONE]\n\n".as_bytes();

    #[test]
    fn whole_stream() {
        assert_eq!(
            events(&[STREAM]),
            ["{\"a\":\"é\"}", "{\"b\":2}", "one\ntwo", "[DONE]"]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let want = events(&[STREAM]);
        for i in 0..STREAM.len() {
            for j in i..STREAM.len() {
                let got = events(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]);
                assert_eq!(got, want, "split at {i}, {j}");
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(events(&bytes), want);
    }

    #[test]
    fn long_lines_and_unterminated_last_event() {
        let long = format!("data: {}\n\ndata: tail", "x".repeat(200_000));
        let got = events(&long.as_bytes().chunks(4096).collect::<Vec<_>>());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), 200_000);
        assert_eq!(got[1], "tail");
    }
}
