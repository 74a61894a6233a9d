//! Reading and writing framed control messages on a stream, with size limits.

use std::io;

use porthole_proto::frame::{self, FrameError};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("stream ended before a complete message")]
    Eof,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads one length-prefixed message. The length is checked before the body is read,
/// so a hostile peer cannot make us allocate more than [`frame::MAX_FRAME`].
pub async fn read_frame<T, R>(r: &mut R) -> Result<T, ControlError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let body = read_frame_body(r).await?;
    Ok(frame::decode_body(&body)?)
}

/// Reads one length-prefixed message's body, undecoded (for messages whose layout
/// depends on a leading version).
pub async fn read_frame_body<R>(r: &mut R) -> Result<Vec<u8>, ControlError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; frame::HEADER_LEN];
    read_exact(r, &mut header).await?;
    let len = frame::body_len(header)?;
    let mut body = vec![0u8; len];
    read_exact(r, &mut body).await?;
    Ok(body)
}

/// Like [`read_frame`] but `Ok(None)` on a clean EOF before the first byte.
pub async fn read_frame_or_eof<T, R>(r: &mut R) -> Result<Option<T>, ControlError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut first = [0u8; 1];
    if r.read(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut second = [0u8; 1];
    read_exact(r, &mut second).await?;
    let len = frame::body_len([first[0], second[0]])?;
    let mut body = vec![0u8; len];
    read_exact(r, &mut body).await?;
    Ok(Some(frame::decode_body(&body)?))
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), ControlError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ControlError::Eof),
        Err(e) => Err(ControlError::Io(e)),
    }
}

pub async fn write_frame<T, W>(w: &mut W, msg: &T) -> Result<(), ControlError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = frame::encode(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use porthole_proto::message::StreamHeader;

    #[tokio::test]
    async fn round_trip_and_eof() {
        let (mut a, mut b) = tokio::io::duplex(64);
        write_frame(&mut a, &StreamHeader { forward_id: 9 })
            .await
            .unwrap();
        drop(a);
        let h: StreamHeader = read_frame(&mut b).await.unwrap();
        assert_eq!(h.forward_id, 9);
        assert!(
            read_frame_or_eof::<StreamHeader, _>(&mut b)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn oversized_header_is_refused_without_reading_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0xff, 0xff]).await.unwrap();
        let e = read_frame::<StreamHeader, _>(&mut b).await.unwrap_err();
        assert!(matches!(
            e,
            ControlError::Frame(FrameError::TooLarge(65535))
        ));
    }

    #[tokio::test]
    async fn truncated_message_is_eof() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 10, 1, 2]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<StreamHeader, _>(&mut b).await,
            Err(ControlError::Eof)
        ));
    }
}
