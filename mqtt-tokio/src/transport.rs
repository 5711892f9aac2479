//! The byte pipe under the machine: TCP, TLS over TCP, WebSocket over either. Lifted from
//! the example client's runner; it knows nothing of MQTT but the WebSocket subprotocol.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::{Error, Options};

/// A byte stream: TCP, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open connection to the broker.
pub(crate) enum Transport {
    Stream(Box<dyn Io>),
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
}

fn timed_out(what: String) -> Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what).into()
}

/// `e` with what was being done, so that "connection refused" says to where and a
/// certificate error says it was TLS; the kind is kept.
fn context(e: std::io::Error, what: std::fmt::Arguments<'_>) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Transport {
    pub(crate) async fn open(o: &Options) -> Result<Self, Error> {
        let addr = format!("{}:{}", o.host, o.port);
        let tcp = tokio::time::timeout(o.open_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| timed_out(format!("connecting to {addr}")))?
            .map_err(|e| context(e, format_args!("connecting to {addr}")))?;
        // Every packet is written in one call with all that is pending, so Nagle's delay
        // only costs latency.
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = match &o.tls {
            Some(config) => {
                let name = o.server_name.clone().unwrap_or_else(|| o.host.clone());
                let name = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| Error::Options(format!("{}: {e}", o.host)))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                let tls = tokio::time::timeout(o.open_timeout, connector.connect(name, tcp))
                    .await
                    .map_err(|_| timed_out(format!("{addr}: TLS handshake")))?
                    .map_err(|e| context(e, format_args!("{addr}: TLS")))?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let Some(path) = &o.websocket else {
            return Ok(Self::Stream(stream));
        };
        let scheme = if o.tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{addr}{path}");
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Options(format!("{url}: {e}")))?;
        // [MQTT-6.0.0-3] the subprotocol is "mqtt".
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        let handshake = tokio_tungstenite::client_async(req, stream);
        let (ws, _) = tokio::time::timeout(o.open_timeout, handshake)
            .await
            .map_err(|_| timed_out(format!("{url}: WebSocket handshake")))?
            .map_err(|e| std::io::Error::other(format!("{url}: {e}")))?;
        Ok(Self::Ws(Box::new(ws)))
    }

    /// Appends what arrives to `buf`; `Ok(false)` at end of stream.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> std::io::Result<bool> {
        match self {
            Self::Stream(s) => {
                buf.reserve(8192);
                Ok(s.read_buf(buf).await? > 0)
            }
            Self::Ws(ws) => loop {
                match ws.next().await {
                    // [MQTT-6.0.0-2] a frame may hold several packets or part of one: the
                    // machine frames the byte stream.
                    Some(Ok(WsMessage::Binary(b))) => {
                        buf.extend_from_slice(&b);
                        return Ok(true);
                    }
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                    // [MQTT-6.0.0-1] a text frame closes the connection.
                    Some(Ok(WsMessage::Close(_) | WsMessage::Text(_))) | None => return Ok(false),
                    Some(Err(e)) => return Err(std::io::Error::other(e)),
                }
            },
        }
    }

    /// Writes `data` in one call (one WebSocket frame).
    pub(crate) async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stream(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Self::Ws(ws) => ws
                .send(WsMessage::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(std::io::Error::other),
        }
    }

    pub(crate) async fn close(&mut self) {
        let _ = match self {
            Self::Stream(s) => s.shutdown().await,
            Self::Ws(ws) => SinkExt::close(&mut **ws)
                .await
                .map_err(std::io::Error::other),
        };
    }
}
