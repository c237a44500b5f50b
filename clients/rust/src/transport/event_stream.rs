//! Reading a Server-Sent Events stream (the `text/event-stream` format) incrementally.
//!
//! Lines end with LF or CRLF (what every server, ours included, writes). A line starting with
//! `:` is a comment (the server's keep-alive); an empty line ends an event.

/// One event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `event:` field, `message` when absent.
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Turns chunks of bytes into events.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes after the last complete line.
    partial: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feed a chunk; complete events are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(i);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.line(line, out);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole, out);
            }
        }
        self.partial.extend_from_slice(rest);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                data.pop(); // the last `\n`
                out.push(SseEvent {
                    event: match std::mem::take(&mut self.event) {
                        e if e.is_empty() => "message".into(),
                        e => e,
                    },
                    data,
                });
            }
            self.event.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            _ => {} // `id` (the client tracks positions itself), `retry`, unknown fields
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out
    }

    #[test]
    fn events_split_anywhere_are_put_together() {
        let text = b"event: attached\nid: a=e:1\ndata: {\"x\":1}\n\n: keep-alive\n\nevent:message\r\ndata: one\r\ndata:two\r\n\r\n";
        let whole = parse(&[text]);
        assert_eq!(
            whole,
            vec![
                SseEvent {
                    event: "attached".into(),
                    data: "{\"x\":1}".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "one\ntwo".into()
                },
            ]
        );
        for cut in 1..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(parse(&[a, b]), whole, "cut at {cut}");
        }
        // Multi-byte characters split across chunks survive.
        let utf = "data: é€\n\n".as_bytes();
        assert_eq!(parse(&[&utf[..7], &utf[7..]])[0].data, "é€");
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        assert!(parse(&[b"event: x\n\n: comment\n\n"]).is_empty());
        assert_eq!(parse(&[b"data\n\n"])[0].data, "");
    }
}
