//! PostgreSQL's wire protocol, version 3, as the guard reads it.
//!
//! What a client sends is decoded strictly ([`Frontend::decode`]): every
//! length, string terminator and count must add up to exactly the
//! message, or the message is refused. The guard forwards the exact bytes
//! it decoded, never a re-encoding, so what the server runs is what the
//! guard judged. Of what the server sends, the guard reads only the few
//! messages it acts on.

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The first message's codes that are requests, not a protocol version.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Protocol 3.0; 3.2 (PostgreSQL 18) differs only in the length of cancel
/// keys, which the guard passes through.
pub const PROTOCOL_3: i32 = 3 << 16;

/// The server's own limit on a startup packet.
pub const MAX_STARTUP: usize = 10_000;
/// The server's own limit on any message (`PQ_LARGE_MESSAGE_LIMIT`).
pub const MAX_MESSAGE: usize = (1 << 30) - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(String),
    #[error("invalid message length {0}")]
    Length(i64),
    #[error("malformed {what} message: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
    #[error("message type {0:?} is not one the guard understands")]
    Unknown(char),
    #[error("protocol version {major}.{minor} is not supported (only 3)")]
    Version { major: i32, minor: i32 },
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            ProtocolError::Io(e.to_string())
        }
    }
}

/// The first message of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    /// The whole packet, to pass to the server.
    Cancel(Vec<u8>),
    Start {
        params: Vec<(String, String)>,
        /// The whole packet, to pass to the server.
        raw: Vec<u8>,
    },
}

impl Startup {
    /// Reads one startup packet: a length, a code, and the rest.
    pub async fn read(reader: &mut (impl AsyncRead + Unpin)) -> Result<Startup, ProtocolError> {
        let len = reader.read_i32().await?;
        if !(8..=MAX_STARTUP as i32).contains(&len) {
            return Err(ProtocolError::Length(len.into()));
        }
        let mut raw = vec![0; len as usize];
        raw[..4].copy_from_slice(&len.to_be_bytes());
        reader.read_exact(&mut raw[4..]).await?;
        Startup::decode(raw)
    }

    pub fn decode(raw: Vec<u8>) -> Result<Startup, ProtocolError> {
        let malformed = |why| ProtocolError::Malformed {
            what: "startup",
            why,
        };
        let mut body = Reader::new(raw.get(4..).ok_or(malformed("too short"))?, "startup");
        let code = body.i32()?;
        match code {
            SSL_REQUEST | GSSENC_REQUEST if !body.is_empty() => Err(malformed("trailing bytes")),
            SSL_REQUEST => Ok(Startup::Ssl),
            GSSENC_REQUEST => Ok(Startup::GssEnc),
            // A process id and a key of 4 (protocol 3.0) to 256 bytes (3.2).
            CANCEL_REQUEST if (8..=260).contains(&body.remaining()) => Ok(Startup::Cancel(raw)),
            CANCEL_REQUEST => Err(malformed("cancel key length")),
            _ if code >> 16 != 3 => Err(ProtocolError::Version {
                major: code >> 16,
                minor: code & 0xffff,
            }),
            _ => {
                let mut params = Vec::new();
                loop {
                    let name = body.cstr()?;
                    if name.is_empty() {
                        break;
                    }
                    params.push((name.to_string(), body.cstr()?.to_string()));
                }
                body.end()?;
                Ok(Startup::Start { params, raw })
            }
        }
    }
}

/// One message after startup: its type and body. `bytes` holds the whole
/// message as it arrived, to forward unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub bytes: Vec<u8>,
}

impl Message {
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    pub fn new(tag: u8, body: &[u8]) -> Message {
        let mut bytes = Vec::with_capacity(5 + body.len());
        bytes.push(tag);
        bytes.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        bytes.extend_from_slice(body);
        Message { bytes }
    }

    /// Reads one message; `None` when the peer closed between messages.
    pub async fn read(
        reader: &mut (impl AsyncRead + Unpin),
    ) -> Result<Option<Message>, ProtocolError> {
        let tag = match reader.read_u8().await {
            Ok(tag) => tag,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = reader.read_i32().await?;
        if !(4..=MAX_MESSAGE as i32).contains(&len) {
            return Err(ProtocolError::Length(len.into()));
        }
        let mut bytes = Vec::with_capacity(1 + len as usize);
        bytes.push(tag);
        bytes.extend_from_slice(&len.to_be_bytes());
        // Read as it arrives: a length alone does not make the guard
        // allocate a gigabyte.
        let body = (len - 4) as u64;
        let read = reader.take(body).read_to_end(&mut bytes).await?;
        if read as u64 != body {
            return Err(ProtocolError::Closed);
        }
        Ok(Some(Message { bytes }))
    }
}

/// A message from the client, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Frontend<'a> {
    Query(&'a str),
    Parse {
        name: &'a str,
        query: &'a str,
    },
    Bind {
        portal: &'a str,
        statement: &'a str,
    },
    Describe {
        portal: bool,
        name: &'a str,
    },
    Execute {
        portal: &'a str,
        max_rows: i32,
    },
    Close {
        portal: bool,
        name: &'a str,
    },
    Sync,
    Flush,
    Terminate,
    CopyData,
    CopyDone,
    CopyFail,
    /// The fast-path function call interface: refused.
    FunctionCall,
    /// A password or SASL message (authentication only).
    Password,
}

impl<'a> Frontend<'a> {
    pub fn decode(message: &'a Message) -> Result<Frontend<'a>, ProtocolError> {
        let tag = message.tag();
        let what = match tag {
            b'Q' => "Query",
            b'P' => "Parse",
            b'B' => "Bind",
            b'D' => "Describe",
            b'E' => "Execute",
            b'C' => "Close",
            b'S' => "Sync",
            b'H' => "Flush",
            b'X' => "Terminate",
            b'd' => "CopyData",
            b'c' => "CopyDone",
            b'f' => "CopyFail",
            b'F' => "FunctionCall",
            b'p' => "PasswordMessage",
            other => return Err(ProtocolError::Unknown(other as char)),
        };
        let mut body = Reader::new(message.body(), what);
        let decoded = match tag {
            b'Q' => Frontend::Query(body.cstr()?),
            b'P' => {
                let name = body.cstr()?;
                let query = body.cstr()?;
                let types = body.count()?;
                body.skip(4 * types)?;
                Frontend::Parse { name, query }
            }
            b'B' => {
                let portal = body.cstr()?;
                let statement = body.cstr()?;
                let formats = body.count()?;
                body.skip(2 * formats)?;
                for _ in 0..body.count()? {
                    let len = body.i32()?;
                    if len < -1 {
                        return Err(body.malformed("parameter length"));
                    }
                    body.skip(len.max(0) as usize)?;
                }
                let results = body.count()?;
                body.skip(2 * results)?;
                Frontend::Bind { portal, statement }
            }
            b'D' | b'C' => {
                let portal = match body.u8()? {
                    b'P' => true,
                    b'S' => false,
                    _ => return Err(body.malformed("kind is neither 'S' nor 'P'")),
                };
                let name = body.cstr()?;
                if tag == b'D' {
                    Frontend::Describe { portal, name }
                } else {
                    Frontend::Close { portal, name }
                }
            }
            b'E' => Frontend::Execute {
                portal: body.cstr()?,
                max_rows: body.i32()?,
            },
            b'S' => Frontend::Sync,
            b'H' => Frontend::Flush,
            b'X' => Frontend::Terminate,
            b'd' => {
                body.skip(body.remaining())?;
                Frontend::CopyData
            }
            b'c' => Frontend::CopyDone,
            b'f' => {
                body.cstr()?;
                Frontend::CopyFail
            }
            b'F' => {
                body.skip(body.remaining())?;
                Frontend::FunctionCall
            }
            _ => {
                body.skip(body.remaining())?;
                Frontend::Password
            }
        };
        body.end()?;
        Ok(decoded)
    }
}

/// Reads fields from a message body, refusing anything that does not fit.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    fn malformed(&self, why: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            what: self.what,
            why,
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.bytes.len() {
            return Err(self.malformed("shorter than its fields"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn skip(&mut self, n: usize) -> Result<(), ProtocolError> {
        self.take(n).map(drop)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    /// A 16-bit count, which may not be negative.
    fn count(&mut self) -> Result<usize, ProtocolError> {
        let n = i16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes"));
        usize::try_from(n).map_err(|_| self.malformed("negative count"))
    }

    /// A NUL-terminated string, which must be UTF-8: the guard judges text
    /// and refuses bytes it cannot read as the server will.
    fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(self.malformed("string without terminator"))?;
        let text = std::str::from_utf8(&self.bytes[..end])
            .map_err(|_| self.malformed("string not UTF-8"))?;
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }

    fn end(&self) -> Result<(), ProtocolError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }
}

// ---------------------------------------------------------- from the server --

/// An `ErrorResponse` or `NoticeResponse`'s fields, by their code.
pub fn fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let [code, tail @ ..] = rest {
        if *code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        out.push((*code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}

/// One field of an `ErrorResponse` or `NoticeResponse` (`M`, the message;
/// `C`, the SQLSTATE; ...); empty when absent.
pub fn field(body: &[u8], code: u8) -> String {
    fields(body)
        .into_iter()
        .find(|(c, _)| *c == code)
        .map(|(_, value)| value)
        .unwrap_or_default()
}

/// A `ParameterStatus` message's name and value.
pub fn parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut reader = Reader::new(body, "ParameterStatus");
    Some((
        reader.cstr().ok()?.to_string(),
        reader.cstr().ok()?.to_string(),
    ))
}

/// An `ErrorResponse` (or, with severity `FATAL`, the last message of a
/// connection).
pub fn error_response(severity: &str, code: &str, message: &str, detail: Option<&str>) -> Message {
    let mut body = Vec::new();
    let mut field = |code: u8, value: &str| {
        body.push(code);
        body.extend_from_slice(value.replace('\0', " ").as_bytes());
        body.push(0);
    };
    field(b'S', severity);
    field(b'V', severity);
    field(b'C', code);
    field(b'M', message);
    if let Some(detail) = detail {
        field(b'D', detail);
    }
    body.push(0);
    Message::new(b'E', &body)
}

/// A startup packet with `params`, for protocol `version` (the client's:
/// its first four bytes after the length).
pub fn startup(version: [u8; 4], params: &[(String, String)]) -> Vec<u8> {
    let mut packet = vec![0; 4];
    packet.extend_from_slice(&version);
    for (name, value) in params {
        for text in [name, value] {
            packet.extend_from_slice(text.as_bytes());
            packet.push(0);
        }
    }
    packet.push(0);
    let len = packet.len() as i32;
    packet[..4].copy_from_slice(&len.to_be_bytes());
    packet
}

/// A `Query` message.
pub fn query(sql: &str) -> Message {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    Message::new(b'Q', &body)
}

/// A `Parse` message with no parameter types.
pub fn parse(name: &str, sql: &str) -> Message {
    let mut body = Vec::new();
    for text in [name, sql] {
        body.extend_from_slice(text.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    Message::new(b'P', &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(tag: u8, body: &[u8]) -> Result<Frontend<'static>, ProtocolError> {
        let message = Box::leak(Box::new(Message::new(tag, body)));
        Frontend::decode(message)
    }

    #[test]
    fn messages_decode_exactly() {
        assert_eq!(decode(b'Q', b"SELECT 1\0"), Ok(Frontend::Query("SELECT 1")));
        assert_eq!(
            decode(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17"),
            Ok(Frontend::Parse {
                name: "s1",
                query: "SELECT $1"
            })
        );
        // Portal, statement, one format, two parameters (one NULL), no
        // result formats.
        let bind = b"\0s1\0\0\x01\0\0\0\x02\0\0\0\x011\xff\xff\xff\xff\0\0";
        assert_eq!(
            decode(b'B', bind),
            Ok(Frontend::Bind {
                portal: "",
                statement: "s1"
            })
        );
        assert_eq!(
            decode(b'E', b"\0\0\0\0\0"),
            Ok(Frontend::Execute {
                portal: "",
                max_rows: 0
            })
        );
        assert_eq!(
            decode(b'D', b"Ss1\0"),
            Ok(Frontend::Describe {
                portal: false,
                name: "s1"
            })
        );
        assert_eq!(decode(b'S', b""), Ok(Frontend::Sync));
    }

    #[test]
    fn anything_that_does_not_add_up_is_refused() {
        for (tag, body) in [
            (b'Q', &b"SELECT 1"[..]),                      // no terminator
            (b'Q', b"SELECT 1\0\0"),                       // trailing byte
            (b'Q', b"SELECT \xff\0"),                      // not UTF-8
            (b'P', b"s\0SELECT 1\0\0\x02\0\0\0\x17"),      // two types, one present
            (b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"), // length -2
            (b'B', b"\0\0\0\0\0\x01\0\0\0\x09ab\0\0"),     // parameter past the end
            (b'D', b"Xs\0"),
            (b'S', b"\0"),
            (b'E', b"\0\0\0"),
        ] {
            assert!(decode(tag, body).is_err(), "{} {body:?}", tag as char);
        }
        assert_eq!(decode(b'Z', b""), Err(ProtocolError::Unknown('Z')));
        assert_eq!(
            decode(b'F', b"\0\0\0\x01\0\0\0\0\0\0"),
            Ok(Frontend::FunctionCall)
        );
    }

    #[test]
    fn startup_packets() {
        let packet = |code: i32, rest: &[u8]| {
            let mut raw = ((8 + rest.len()) as i32).to_be_bytes().to_vec();
            raw.extend_from_slice(&code.to_be_bytes());
            raw.extend_from_slice(rest);
            raw
        };
        assert_eq!(Startup::decode(packet(SSL_REQUEST, b"")), Ok(Startup::Ssl));
        let start = packet(PROTOCOL_3, b"user\0ann\0database\0shop\0\0");
        let Ok(Startup::Start { params, .. }) = Startup::decode(start) else {
            panic!("a start")
        };
        assert_eq!(params[1], ("database".into(), "shop".into()));
        assert!(Startup::decode(packet(PROTOCOL_3, b"user\0ann\0")).is_err());
        assert!(matches!(
            Startup::decode(packet(2 << 16, b"\0")),
            Err(ProtocolError::Version { major: 2, .. })
        ));
        assert!(Startup::decode(packet(CANCEL_REQUEST, &[0; 8])).is_ok());
        assert!(Startup::decode(packet(CANCEL_REQUEST, &[0; 3])).is_err());
    }
}
