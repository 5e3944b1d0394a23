//! `natkit listen` / `connect`: stdin to the peer and the peer's data to
//! stdout over one QUIC bidirectional stream, both directions at once.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context};
use quinn::{ReadError, RecvStream, SendStream, StoppedError, WriteError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::failure;

/// Bytes per read.
const CHUNK: usize = 64 << 10;

/// A write to the peer that failed, in words.
pub fn write_error(e: WriteError) -> anyhow::Error {
    match e {
        WriteError::Stopped(code) => anyhow!("the peer stopped reading (code {code})"),
        WriteError::ConnectionLost(c) => failure::quic_error(&c),
        other => anyhow!("sending to the peer failed: {other}"),
    }
}

/// A read from the peer that failed, in words.
pub fn read_error(e: ReadError) -> anyhow::Error {
    match e {
        ReadError::Reset(code) => anyhow!("the peer abandoned its data (reset, code {code})"),
        ReadError::ConnectionLost(c) => failure::quic_error(&c),
        other => anyhow!("receiving from the peer failed: {other}"),
    }
}

/// Finish our side and wait until the peer has all of it: QUIC
/// acknowledged the last byte (RFC 9000 §3.1 "Data Recvd"). A normal close
/// by the peer also means that: it closes only after reading everything.
pub async fn finish(send: &mut SendStream) -> anyhow::Result<()> {
    send.finish()
        .map_err(|e| anyhow!("sending to the peer failed: {e}"))?;
    match send.stopped().await {
        Ok(None) => Ok(()),
        Ok(Some(code)) => bail!("the peer stopped reading (code {code})"),
        Err(StoppedError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(c)))
            if c.error_code.into_inner() == u64::from(natkit_ice::session::CLOSE_NORMAL) =>
        {
            Ok(())
        }
        Err(StoppedError::ConnectionLost(c)) => Err(failure::quic_error(&c)),
        Err(e) => bail!("sending to the peer failed: {e}"),
    }
}

/// Copy `input` to the peer and the peer's data to `output` until both
/// ended.
pub async fn run<I, O>(
    mut send: SendStream,
    mut recv: RecvStream,
    mut input: I,
    mut output: O,
    sent: &AtomicU64,
    received: &AtomicU64,
) -> anyhow::Result<()>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = input.read(&mut buf).await.context("cannot read stdin")?;
            if n == 0 {
                break;
            }
            send.write_all(&buf[..n]).await.map_err(write_error)?;
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        finish(&mut send).await
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        while let Some(n) = recv.read(&mut buf).await.map_err(read_error)? {
            output
                .write_all(&buf[..n])
                .await
                .context("cannot write stdout")?;
            // A short read means we caught up with the peer: flush then, so
            // an interactive peer (a chat, a prompt) sees each line when it
            // arrives, without a flush per chunk of a bulk transfer.
            if n < buf.len() {
                output.flush().await.context("cannot write stdout")?;
            }
            received.fetch_add(n as u64, Ordering::Relaxed);
        }
        output.flush().await.context("cannot write stdout")
    };
    tokio::try_join!(up, down)?;
    Ok(())
}
