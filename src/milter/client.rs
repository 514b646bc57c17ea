//! The thin I/O shell around [`Conversation`]: connects to one milter
//! (TCP or a UNIX socket), writes what the conversation says, reads and
//! decodes the replies, all within the milter's `timeout`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};

use super::codec::{self, DecodeError};
use super::conversation::{Conversation, Next, ProtocolError, Transaction, Verdict};
use crate::config::MilterAddress;

/// Why a milter gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("closed the connection before its verdict")]
    Closed,
    #[error("no verdict within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
}

impl From<DecodeError> for MilterError {
    fn from(error: DecodeError) -> MilterError {
        MilterError::Protocol(error.into())
    }
}

/// Asks the milter at `address` about `transaction`; the whole exchange,
/// connect included, takes at most `timeout`.
pub async fn ask(
    address: &MilterAddress,
    timeout: Duration,
    transaction: Transaction<'_>,
) -> Result<Verdict, MilterError> {
    let exchange = async {
        match address {
            MilterAddress::Inet(address) => {
                let stream = TcpStream::connect(address.as_str())
                    .await
                    .map_err(MilterError::Connect)?;
                let _ = stream.set_nodelay(true);
                converse(stream, transaction).await
            }
            MilterAddress::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(MilterError::Connect)?;
                converse(stream, transaction).await
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(MilterError::Timeout(timeout)))
}

async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    transaction: Transaction<'_>,
) -> Result<Verdict, MilterError> {
    let mut conversation = Conversation::new(transaction);
    let mut input: Vec<u8> = Vec::with_capacity(1024);
    loop {
        match conversation.step() {
            Next::Write(octets) => stream.write_all(&octets).await?,
            Next::Read => loop {
                if let Some((response, used)) = codec::decode(&input)? {
                    input.drain(..used);
                    conversation.receive(response)?;
                    break;
                }
                let mut chunk = [0u8; 8192];
                let read = stream.read(&mut chunk).await?;
                if read == 0 {
                    return Err(MilterError::Closed);
                }
                input.extend_from_slice(&chunk[..read]);
            },
            Next::Done(verdict) => {
                // The QUIT was written; the milter closes on its own.
                let _ = stream.flush().await;
                let _ = stream.shutdown().await;
                return Ok(verdict);
            }
        }
    }
}
