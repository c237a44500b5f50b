//! A minimal HTTP/1.1 client over a raw `TcpStream` for the SSE and long-poll subscribers.
//!
//! Thousands of these live in one process that shares its machine with the server, so it does
//! only what those two endpoints need: one request at a time on a keep-alive connection, a
//! `Content-Length` or chunked response, and a body handed over as it arrives.

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Percent-encode a query value (everything but unreserved characters and `:`).
pub fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 8);
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Index of `needle` in `hay` at or after `from`.
pub fn find_bytes(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut i = from;
    // Look for the first byte with a plain loop, then compare the rest (needles are 2-4 bytes).
    while i + needle.len() <= hay.len() {
        let k = hay[i..hay.len() - rest.len()]
            .iter()
            .position(|&b| b == first)?;
        let at = i + k;
        if &hay[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes.
    Close,
}

/// Status line and the headers that matter here.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Default)]
struct Chunked {
    /// Data bytes left in the current chunk.
    remaining: usize,
    /// The CRLF after a chunk's data is still to come.
    need_crlf: bool,
    /// Past the last (empty) chunk: reading trailer lines up to the blank one.
    trailer: bool,
}

impl Chunked {
    /// Decode what `raw` holds into `out`; answers the bytes consumed and whether the body ended.
    fn decode(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool)> {
        let mut p = 0;
        loop {
            if self.remaining > 0 {
                let n = self.remaining.min(raw.len() - p);
                out.extend_from_slice(&raw[p..p + n]);
                p += n;
                self.remaining -= n;
                if self.remaining > 0 {
                    return Ok((p, false));
                }
                self.need_crlf = true;
            }
            if self.need_crlf {
                if raw.len() - p < 2 {
                    return Ok((p, false));
                }
                if &raw[p..p + 2] != b"\r\n" {
                    bail!("chunked body: no CRLF after a chunk");
                }
                p += 2;
                self.need_crlf = false;
            }
            let Some(eol) = find_bytes(raw, b"\r\n", p) else {
                return Ok((p, false));
            };
            let line = &raw[p..eol];
            p = eol + 2;
            if self.trailer {
                if line.is_empty() {
                    self.trailer = false;
                    return Ok((p, true));
                }
                continue;
            }
            let hex = line.split(|&b| b == b';').next().unwrap_or(line);
            let hex = std::str::from_utf8(hex)?.trim();
            let size = usize::from_str_radix(hex, 16)
                .map_err(|_| anyhow!("chunked body: bad chunk size {hex:?}"))?;
            if size == 0 {
                self.trailer = true;
            } else {
                self.remaining = size;
            }
        }
    }
}

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed start at `buf[pos]`.
    buf: Vec<u8>,
    pos: usize,
    /// Body decoding state of the current response.
    framing: Framing,
    left: usize,
    chunked: Chunked,
    done: bool,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(8 * 1024),
            pos: 0,
            framing: Framing::Close,
            left: 0,
            chunked: Chunked::default(),
            done: true,
        }
    }

    /// Send a GET request (the whole request in one write).
    pub async fn get(&mut self, host: &str, path: &str, headers: &str) -> Result<()> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n");
        self.stream.write_all(req.as_bytes()).await?;
        Ok(())
    }

    /// Read more bytes; false at end of stream.
    async fn fill(&mut self) -> Result<bool> {
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos > 16 * 1024) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(8 * 1024);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Read a response's status line and headers.
    pub async fn head(&mut self) -> Result<Head> {
        let end = loop {
            if let Some(i) = find_bytes(&self.buf, b"\r\n\r\n", self.pos) {
                break i;
            }
            if self.buf.len() - self.pos > 64 * 1024 {
                bail!("response head over 64 KiB");
            }
            if !self.fill().await? {
                bail!("connection closed before a response");
            }
        };
        let text = std::str::from_utf8(&self.buf[self.pos..end])?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let mut framing = Framing::Close;
        let mut close = status_line.starts_with("HTTP/1.0");
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                if framing != Framing::Chunked {
                    framing = Framing::Length(value.parse()?);
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                if value.to_ascii_lowercase().contains("chunked") {
                    framing = Framing::Chunked;
                }
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        self.pos = end + 4;
        self.framing = framing;
        self.chunked = Chunked::default();
        self.left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        self.done = matches!(framing, Framing::Length(0));
        Ok(Head { status, close })
    }

    /// Append the body bytes that arrive next to `out`, waiting for some. Answers false when
    /// the body has ended (nothing appended).
    pub async fn body_part(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        loop {
            if self.done {
                return Ok(false);
            }
            let avail = self.buf.len() - self.pos;
            if avail > 0 {
                let before = out.len();
                match self.framing {
                    Framing::Length(_) => {
                        let n = avail.min(self.left);
                        out.extend_from_slice(&self.buf[self.pos..self.pos + n]);
                        self.pos += n;
                        self.left -= n;
                        self.done = self.left == 0;
                    }
                    Framing::Chunked => {
                        let (used, ended) = self.chunked.decode(&self.buf[self.pos..], out)?;
                        self.pos += used;
                        self.done = ended;
                    }
                    Framing::Close => {
                        out.extend_from_slice(&self.buf[self.pos..]);
                        self.pos = self.buf.len();
                    }
                }
                if out.len() > before || self.done {
                    return Ok(out.len() > before);
                }
            }
            if !self.fill().await? {
                if self.framing == Framing::Close {
                    self.done = true;
                    return Ok(false);
                }
                bail!("connection closed mid-body");
            }
        }
    }

    /// Read the whole body into `out` (cleared first).
    pub async fn body(&mut self, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        while self.body_part(out).await? {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decodes_across_splits() {
        let raw = b"5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\n\r\nNEXT";
        for split in 0..raw.len() {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            let (a, done_a) = d.decode(&raw[..split], &mut out).unwrap();
            assert!(!done_a || split >= raw.len() - 4);
            let mut rest = raw[a..].to_vec();
            let mut used = a;
            if !done_a {
                let (b, done_b) = d.decode(&rest, &mut out).unwrap();
                assert!(done_b, "split {split}");
                used += b;
                rest.clear();
            }
            assert_eq!(out, b"hello, world", "split {split}");
            assert_eq!(&raw[used..], b"NEXT", "split {split}");
        }
    }

    #[test]
    fn finds_bytes() {
        assert_eq!(find_bytes(b"a\nb\n\nc", b"\n\n", 0), Some(3));
        assert_eq!(find_bytes(b"a\nb\n\nc", b"\n\n", 4), None);
        assert_eq!(find_bytes(b"\n\n", b"\n\n", 0), Some(0));
        assert_eq!(find_bytes(b"x\n", b"\n\n", 0), None);
        assert_eq!(find_bytes(b"", b"\n\n", 0), None);
        assert_eq!(find_bytes(b"ab", b"\n\n", 5), None);
    }

    #[test]
    fn encodes_positions() {
        assert_eq!(encode("bench:a=9f:4,b=1:2"), "bench:a%3D9f:4%2Cb%3D1:2");
    }
}
