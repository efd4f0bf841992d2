//! Frame Streams (the framing dnstap travels in), bidirectional: the writer sends READY
//! with its content type, the collector answers ACCEPT, the writer sends START, then data
//! frames (a 32-bit length and the payload); STOP ends the stream and the collector answers
//! FINISH. Control frames are a zero length (the escape), their own length, their type and
//! fields (CONTENT_TYPE: a length and the type string). All integers are big-endian.
//! Small enough to write here; no maintained Rust crate implements it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

pub const ACCEPT: u32 = 0x01;
pub const START: u32 = 0x02;
pub const STOP: u32 = 0x03;
pub const READY: u32 = 0x04;
pub const FINISH: u32 = 0x05;
const FIELD_CONTENT_TYPE: u32 = 0x01;
/// Longest control frame read from a collector; anything longer is garbage.
const MAX_CONTROL: usize = 512;
/// How long each handshake step may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FstrmError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("the collector sent something other than a control frame of type {expected}")]
    Unexpected { expected: u32 },
    #[error("the collector does not accept content type {0}")]
    ContentType(String),
}

/// A control frame with an optional content type field.
pub fn control(kind: u32, content_type: Option<&[u8]>) -> Vec<u8> {
    let mut body = kind.to_be_bytes().to_vec();
    if let Some(ct) = content_type {
        body.extend_from_slice(&FIELD_CONTENT_TYPE.to_be_bytes());
        body.extend_from_slice(&(ct.len() as u32).to_be_bytes());
        body.extend_from_slice(ct);
    }
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads one control frame: its type and its content types.
pub async fn read_control<R: AsyncRead + Unpin>(
    r: &mut R,
    expected: u32,
) -> Result<Vec<Vec<u8>>, FstrmError> {
    let unexpected = FstrmError::Unexpected { expected };
    if r.read_u32().await? != 0 {
        return Err(unexpected);
    }
    let len = r.read_u32().await? as usize;
    if !(4..=MAX_CONTROL).contains(&len) {
        return Err(unexpected);
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let kind = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    if kind != expected {
        return Err(unexpected);
    }
    let mut types = Vec::new();
    let mut at = 4;
    while at + 8 <= body.len() {
        let field = u32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        let flen =
            u32::from_be_bytes([body[at + 4], body[at + 5], body[at + 6], body[at + 7]]) as usize;
        let Some(value) = body.get(at + 8..at + 8 + flen) else {
            return Err(unexpected);
        };
        if field == FIELD_CONTENT_TYPE {
            types.push(value.to_vec());
        }
        at += 8 + flen;
    }
    Ok(types)
}

/// The writer's side of the handshake: READY, ACCEPT (which must list `content_type`, or
/// none), START.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    content_type: &[u8],
) -> Result<(), FstrmError> {
    timeout(
        HANDSHAKE_TIMEOUT,
        s.write_all(&control(READY, Some(content_type))),
    )
    .await
    .map_err(|_| FstrmError::Timeout)??;
    let types = timeout(HANDSHAKE_TIMEOUT, read_control(s, ACCEPT))
        .await
        .map_err(|_| FstrmError::Timeout)??;
    if !types.is_empty() && !types.iter().any(|t| t == content_type) {
        return Err(FstrmError::ContentType(
            String::from_utf8_lossy(content_type).into_owned(),
        ));
    }
    timeout(
        HANDSHAKE_TIMEOUT,
        s.write_all(&control(START, Some(content_type))),
    )
    .await
    .map_err(|_| FstrmError::Timeout)??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_read_back() {
        let f = control(ACCEPT, Some(b"protobuf:dnstap.Dnstap"));
        assert_eq!(&f[..4], &[0, 0, 0, 0], "escape");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let types = rt
            .block_on(read_control(&mut f.as_slice(), ACCEPT))
            .expect("parse");
        assert_eq!(types, vec![b"protobuf:dnstap.Dnstap".to_vec()]);
        assert!(rt.block_on(read_control(&mut f.as_slice(), START)).is_err());
        // Garbage: a data frame where a control frame belongs, or a huge length.
        let mut garbage = vec![0, 0, 0, 5, 1, 2, 3, 4, 5];
        assert!(rt
            .block_on(read_control(&mut garbage.as_slice(), ACCEPT))
            .is_err());
        garbage = vec![0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(rt
            .block_on(read_control(&mut garbage.as_slice(), ACCEPT))
            .is_err());
        // A field running past the frame.
        let mut bad = control(ACCEPT, Some(b"x"));
        bad[19] = 200;
        assert!(rt
            .block_on(read_control(&mut bad.as_slice(), ACCEPT))
            .is_err());
    }
}
