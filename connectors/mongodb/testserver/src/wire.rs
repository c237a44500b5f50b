//! Message framing of the MongoDB wire protocol: the 16-byte header, OP_MSG (opcode 2013) with
//! its body and document-sequence sections, and the legacy OP_QUERY (2004) / OP_REPLY (1) pair
//! that old drivers and tools still use for the `isMaster` handshake.

use bson::{Bson, Document};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// OP_REPLY: the answer to an OP_QUERY.
pub const OP_REPLY: i32 = 1;
/// OP_QUERY: legacy queries; only `admin.$cmd` commands (the handshake) are served.
pub const OP_QUERY: i32 = 2004;
/// OP_COMPRESSED: refused (the server never offers compression in `hello`).
pub const OP_COMPRESSED: i32 = 2012;
/// OP_MSG: every modern command.
pub const OP_MSG: i32 = 2013;

/// OP_MSG flag: a CRC-32C checksum follows the sections.
const CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag: the sender expects no reply.
pub const MORE_TO_COME: u32 = 1 << 1;

/// Largest message accepted (MongoDB's `maxMessageSizeBytes`).
pub const MAX_MESSAGE_BYTES: usize = 48_000_000;

/// One request read off a connection.
#[derive(Debug)]
pub enum Request {
    /// An OP_MSG: the command document with document sequences folded in as arrays.
    Msg {
        request_id: i32,
        flags: u32,
        command: Document,
    },
    /// An OP_QUERY against `<db>.$cmd`.
    Query {
        request_id: i32,
        collection: String,
        command: Document,
    },
}

/// Why a message could not be read.
#[derive(Debug)]
pub enum WireError {
    Io(std::io::Error),
    Malformed(String),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Io(e)
    }
}

fn malformed(what: impl Into<String>) -> WireError {
    WireError::Malformed(what.into())
}

/// Read one message. `Ok(None)` when the peer closed the connection between messages.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Request>, WireError> {
    let mut header = [0u8; 16];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_le_bytes(header[0..4].try_into().unwrap());
    let request_id = i32::from_le_bytes(header[4..8].try_into().unwrap());
    let op_code = i32::from_le_bytes(header[12..16].try_into().unwrap());
    let len = usize::try_from(len).map_err(|_| malformed("negative message length"))?;
    if !(16..=MAX_MESSAGE_BYTES).contains(&len) {
        return Err(malformed(format!("message length {len} out of range")));
    }
    let mut body = vec![0u8; len - 16];
    r.read_exact(&mut body).await?;
    match op_code {
        OP_MSG => parse_msg(request_id, &body).map(Some),
        OP_QUERY => parse_query(request_id, &body).map(Some),
        OP_COMPRESSED => Err(malformed("compression was not negotiated")),
        other => Err(malformed(format!("unsupported opcode {other}"))),
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if buf.len() < n {
        return Err(malformed("message ends early"));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn take_i32(buf: &mut &[u8]) -> Result<i32, WireError> {
    Ok(i32::from_le_bytes(take(buf, 4)?.try_into().unwrap()))
}

fn take_cstring(buf: &mut &[u8]) -> Result<String, WireError> {
    let end = buf
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| malformed("unterminated cstring"))?;
    let s = std::str::from_utf8(&buf[..end])
        .map_err(|_| malformed("cstring is not UTF-8"))?
        .to_owned();
    *buf = &buf[end + 1..];
    Ok(s)
}

fn take_document(buf: &mut &[u8]) -> Result<Document, WireError> {
    if buf.len() < 4 {
        return Err(malformed("document ends early"));
    }
    let len = i32::from_le_bytes(buf[0..4].try_into().unwrap());
    let len = usize::try_from(len).map_err(|_| malformed("negative document length"))?;
    let bytes = take(buf, len)?;
    Document::from_reader(bytes).map_err(|e| malformed(format!("invalid BSON: {e}")))
}

fn parse_msg(request_id: i32, body: &[u8]) -> Result<Request, WireError> {
    let mut buf = body;
    let flags = u32::from_le_bytes(take(&mut buf, 4)?.try_into().unwrap());
    if flags & CHECKSUM_PRESENT != 0 {
        buf = &buf[..buf.len().saturating_sub(4)];
    }
    let mut command: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while !buf.is_empty() {
        let kind = take(&mut buf, 1)?[0];
        match kind {
            0 => {
                if command.is_some() {
                    return Err(malformed("two body sections"));
                }
                command = Some(take_document(&mut buf)?);
            }
            1 => {
                let size = take_i32(&mut buf)?;
                let size = usize::try_from(size)
                    .ok()
                    .filter(|s| *s >= 4)
                    .ok_or_else(|| malformed("bad sequence size"))?;
                let mut section = take(&mut buf, size - 4)?;
                let id = take_cstring(&mut section)?;
                let mut docs = Vec::new();
                while !section.is_empty() {
                    docs.push(Bson::Document(take_document(&mut section)?));
                }
                sequences.push((id, docs));
            }
            other => return Err(malformed(format!("unknown section kind {other}"))),
        }
    }
    let mut command = command.ok_or_else(|| malformed("no body section"))?;
    for (id, docs) in sequences {
        command.insert(id, Bson::Array(docs));
    }
    Ok(Request::Msg {
        request_id,
        flags,
        command,
    })
}

fn parse_query(request_id: i32, body: &[u8]) -> Result<Request, WireError> {
    let mut buf = body;
    let _flags = take_i32(&mut buf)?;
    let collection = take_cstring(&mut buf)?;
    let _skip = take_i32(&mut buf)?;
    let _return = take_i32(&mut buf)?;
    let mut command = take_document(&mut buf)?;
    // Wrapped form: {$query: {...}, $readPreference: ...}.
    if let Ok(inner) = command.get_document("$query") {
        command = inner.clone();
    }
    Ok(Request::Query {
        request_id,
        collection,
        command,
    })
}

fn header(out: &mut Vec<u8>, response_to: i32, op_code: i32) {
    out.extend_from_slice(&0i32.to_le_bytes()); // length, patched below
    out.extend_from_slice(&0i32.to_le_bytes()); // our request id: unused by drivers
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
}

fn patch_len(out: &mut [u8]) {
    let len = out.len() as i32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
}

/// Encode an OP_MSG reply with one body section.
pub fn encode_msg(response_to: i32, reply: &Document) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    header(&mut out, response_to, OP_MSG);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    reply
        .to_writer(&mut out)
        .expect("a document always encodes into a Vec");
    patch_len(&mut out);
    out
}

/// Encode an OP_REPLY carrying one document.
pub fn encode_reply(response_to: i32, reply: &Document) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    header(&mut out, response_to, OP_REPLY);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    reply
        .to_writer(&mut out)
        .expect("a document always encodes into a Vec");
    patch_len(&mut out);
    out
}

/// Write an encoded message.
pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Encode an OP_QUERY (for tests of the legacy handshake).
pub fn encode_query(request_id: i32, collection: &str, query: &Document) -> Vec<u8> {
    let mut out = Vec::new();
    header(&mut out, 0, OP_QUERY);
    out[4..8].copy_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(collection.as_bytes());
    out.push(0);
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&(-1i32).to_le_bytes());
    query.to_writer(&mut out).expect("encodes");
    patch_len(&mut out);
    out
}

/// Decode an OP_REPLY's first document (for tests of the legacy handshake).
pub fn decode_reply(message: &[u8]) -> Option<Document> {
    if message.len() < 36 || i32::from_le_bytes(message[12..16].try_into().ok()?) != OP_REPLY {
        return None;
    }
    let mut buf = &message[36..];
    take_document(&mut buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[tokio::test]
    async fn op_msg_sections_fold_into_the_command() {
        // A body section plus a `documents` sequence, as drivers send inserts.
        let mut msg = Vec::new();
        header(&mut msg, 0, OP_MSG);
        msg.extend_from_slice(&0u32.to_le_bytes());
        msg.push(0);
        doc! {"insert": "c", "$db": "d"}
            .to_writer(&mut msg)
            .unwrap();
        let mut seq = Vec::new();
        seq.extend_from_slice(b"documents\0");
        doc! {"a": 1}.to_writer(&mut seq).unwrap();
        doc! {"a": 2}.to_writer(&mut seq).unwrap();
        msg.push(1);
        msg.extend_from_slice(&((seq.len() + 4) as i32).to_le_bytes());
        msg.extend_from_slice(&seq);
        patch_len(&mut msg);
        let req = read_request(&mut msg.as_slice()).await.unwrap().unwrap();
        let Request::Msg { command, .. } = req else {
            panic!("not a msg")
        };
        assert_eq!(command.get_str("insert").unwrap(), "c");
        assert_eq!(command.get_array("documents").unwrap().len(), 2);
    }

    #[tokio::test]
    async fn query_round_trip() {
        let q = encode_query(7, "admin.$cmd", &doc! {"$query": {"isMaster": 1}});
        let req = read_request(&mut q.as_slice()).await.unwrap().unwrap();
        let Request::Query {
            request_id,
            collection,
            command,
        } = req
        else {
            panic!("not a query")
        };
        assert_eq!((request_id, collection.as_str()), (7, "admin.$cmd"));
        assert!(command.contains_key("isMaster"));
        let reply = encode_reply(7, &doc! {"ok": 1.0});
        assert_eq!(decode_reply(&reply).unwrap(), doc! {"ok": 1.0});
    }
}
