use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqtt_state::codec::ProtocolVersion;
use mqtt_state::{ClientConfig, Message};
use tokio_rustls::rustls;

use crate::{Error, Progress};

/// A function the client task calls at every step of the protocol ([`Progress`]): for
/// logs, a `-d` trace, metrics. It runs on the client task, in order, before the step's
/// effects (the reply, the delivered message) are visible to the application; keep it
/// short and do not block in it.
#[derive(Clone)]
pub struct Hook(pub(crate) Arc<dyn Fn(&Progress<'_>) + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook(..)")
    }
}

/// Where and how to connect, and how the client behaves between connections.
///
/// The protocol settings (client id, keep alive, clean start, session expiry, credentials,
/// will, limits) are the machine's own [`ClientConfig`], in [`Options::config`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The MQTT settings the machine uses.
    pub config: ClientConfig,
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS, over TCP or under the WebSocket; `None` for plain text.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the broker's certificate must be for; the host by default.
    pub server_name: Option<String>,
    /// WebSocket path (`/mqtt`): MQTT over WebSocket with subprotocol `mqtt`
    /// ([MQTT-6.0.0-3]), `ws://` or, with [`Options::tls`], `wss://`.
    pub websocket: Option<String>,
    /// Reconnect after losing an established connection, waiting from `.0` doubling up to
    /// `.1` between attempts; `None` ends the client on the first loss.
    pub reconnect: Option<(Duration, Duration)>,
    /// Subscribe again to what was subscribed when a reconnect finds no session on the
    /// broker (Session Present = 0, [MQTT-3.2.2-5]).
    pub resubscribe: bool,
    /// Requests (publish, subscribe, ...) waiting for the client task: when full, the
    /// request futures wait. This and the machine's `max_queued` are the backpressure.
    pub request_capacity: usize,
    /// Received messages waiting for [`crate::Incoming`]: when full, the client stops
    /// reading the socket (TCP backpressure to the broker) until the application reads.
    pub incoming_capacity: usize,
    /// How long opening the transport (TCP, TLS, WebSocket handshakes) may take.
    pub open_timeout: Duration,
    /// Called at every step of the protocol ([`Options::on_progress`]).
    pub hook: Option<Hook>,
}

impl Options {
    /// MQTT 5.0 over plain TCP to `host:port` as `client_id`, with the machine's defaults
    /// (clean start, keep alive 60 s) but for a queue of 64 messages behind the in-flight
    /// window (`config.max_queued`), reconnecting from 250 ms up to 10 s.
    pub fn new(client_id: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        let mut config = ClientConfig::new(ProtocolVersion::V5, client_id.into());
        // 64 messages behind the in-flight window, not the machine's 1,024: the request
        // queue in front holds as many again, and a deeper queue only adds latency when
        // publishers outrun the broker (at 27k msg/s, 1,024 queued are 40 ms; measured
        // by `benches/vs_rumqttc.rs`, open loop).
        config.max_queued = 64;
        Self {
            config,
            host: host.into(),
            port,
            tls: None,
            server_name: None,
            websocket: None,
            reconnect: Some((Duration::from_millis(250), Duration::from_secs(10))),
            resubscribe: true,
            request_capacity: 64,
            incoming_capacity: 1024,
            open_timeout: Duration::from_secs(10),
            hook: None,
        }
    }

    /// Calls `f` at every step of the protocol: the transport opened and CONNECT queued,
    /// every event of the machine (CONNACK, SUBACK, PUBACK, messages, ...), a lost
    /// connection and the wait before the next, and the end of the client with its error.
    /// See [`Hook`] for where it runs.
    pub fn on_progress(mut self, f: impl Fn(&Progress<'_>) + Send + Sync + 'static) -> Self {
        self.hook = Some(Hook(Arc::new(f)));
        self
    }

    /// Acknowledges received QoS 1/2 messages only when the application says so, with
    /// [`crate::AsyncClient::ack`] and the token of [`crate::Incoming::recv_delivery`],
    /// typically after processing them: a message that was not processed (the process
    /// died) is not acknowledged, so a resumed session gets it again ([MQTT-4.3.2-4]).
    ///
    /// Acknowledgements still leave in arrival order ([MQTT-4.6.0-2], [MQTT-4.6.0-3]): one
    /// message never acknowledged holds back those after it, and once the client's
    /// Receive Maximum of messages is unacknowledged the broker sends no more QoS 1/2
    /// ([MQTT-3.3.4-9]). Tokens of a connection that was lost are ignored: the broker
    /// sends those messages again on the next ([MQTT-4.4.0-1]).
    pub fn manual_acks(mut self, on: bool) -> Self {
        self.config.manual_acks = on;
        self
    }

    /// Sets the user name and password of CONNECT ([MQTT-3.1.3-11], [MQTT-3.1.3-12]).
    pub fn credentials(
        mut self,
        username: impl Into<String>,
        password: Option<impl Into<Bytes>>,
    ) -> Self {
        self.config.username = Some(username.into().into());
        self.config.password = password.map(Into::into);
        self
    }

    /// Sets the will: the broker publishes `message` if the connection ends without a
    /// DISCONNECT ([MQTT-3.1.2-8]), `delay_secs` later in 5.0 (Will Delay Interval).
    pub fn will(mut self, message: Message, delay_secs: u32) -> Self {
        self.config.will = Some((message, delay_secs));
        self
    }

    /// Uses TLS with `config` (see [`tls_config`]).
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Uses MQTT over WebSocket at `path` (`"/mqtt"`).
    pub fn websocket(mut self, path: impl Into<String>) -> Self {
        self.websocket = Some(path.into());
        self
    }

    /// Keeps the session on the broker across connections: clean start off and, in 5.0,
    /// a Session Expiry Interval of `expiry_secs` ([MQTT-3.1.2-4], [MQTT-3.1.2-23]), so that
    /// messages in flight complete after a reconnect.
    pub fn persistent_session(mut self, expiry_secs: u32) -> Self {
        self.config.clean_start = false;
        self.config.session_expiry_interval = expiry_secs;
        self
    }

    /// Sets the protocol version.
    pub fn version(mut self, version: ProtocolVersion) -> Self {
        self.config.version = version;
        self
    }
}

/// A rustls client configuration for MQTT over TLS.
///
/// `ca_pem`: the certificate authorities to trust, PEM; `None` trusts the Mozilla root set
/// of the `webpki-roots` crate (feature `webpki-roots`, on by default; without it `None` is
/// an error). `client_auth`: a client certificate chain and its private key, both PEM.
pub fn tls_config(
    ca_pem: Option<&[u8]>,
    client_auth: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            }
            if roots.is_empty() {
                return Err(err(&"no certificate in the CA PEM"));
            }
        }
        #[cfg(feature = "webpki-roots")]
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        #[cfg(not(feature = "webpki-roots"))]
        None => return Err(err(&"no CA given and the webpki-roots feature is off")),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_root_certificates(roots);
    let config = match client_auth {
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(&e))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| err(&e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| err(&e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
