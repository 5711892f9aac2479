//! An MQTT 3.1/3.1.1/5.0 command line client over TCP, TLS and WebSocket: a thin main over
//! the `mqtt-tokio` client (which drives the sans-IO [`mqtt_state::Client`]), with flags
//! after `mosquitto_pub` and `mosquitto_sub`.
//!
//! ```text
//! mqtt-client sub -h 127.0.0.1 -p 1883 -t 'sensors/#' -q 1 -v
//! mqtt-client pub -h 127.0.0.1 -p 1883 -t sensors/t -m 21.5 -q 1
//! mqtt-client pub -t log -l -q 2 < lines.txt
//! mqtt-client pub -V 5 -t t -m x -D publish user-property k v -D publish message-expiry-interval 60
//! ```
//!
//! `-h` is the host, as in mosquitto; help is `--help`.
//!
//! This file only turns flags into a [`ClientConfig`], [`mqtt_tokio::Options`] and messages,
//! and prints; the run loop, the transports and reconnecting are mqtt-tokio's, every
//! protocol decision the machine's. After a lost connection it reconnects with backoff and
//! keeps the machine's session, so messages in flight complete on the next connection when
//! the server resumes the session (`-c`). `sub` subscribes on its first connection and again
//! after a reconnect only if the server has no session; it acknowledges a QoS 1/2 message
//! once it has printed it (mqtt-tokio's manual acks). `pub` exits once every QoS 1/2
//! message is acknowledged and DISCONNECT is written.
//!
//! Exit status: 0 on success, 1 on errors (a refused connection prints the CONNACK reason,
//! e.g. `connection refused: Bad user name or password (0x86)`), 2 on bad arguments.
//!
//! `-d` prints protocol progress to stdout, as mosquitto's `-d` does (`Subscribed (mid: 1)`).
//! `--cafile CA.pem` turns TLS on (over TCP, or under the WebSocket with `--ws`), trusting
//! only that CA, as mosquitto's clients do; `--insecure` skips the host name check (the
//! chain is still verified).

use std::collections::VecDeque;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::{ArgAction, Args, Parser, Subcommand};
use mqtt_state::codec::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
use mqtt_state::{ClientConfig, Error, Event, Message, TopicBuf};
use mqtt_tokio::rustls;
use mqtt_tokio::{AsyncClient, Options, Progress};
use tokio::sync::mpsc;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "mqtt-client",
    about = "An MQTT client over the sans-IO mqtt-state machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Publish messages (like mosquitto_pub).
    #[command(disable_help_flag = true)]
    Pub(PubArgs),
    /// Subscribe and print messages (like mosquitto_sub).
    #[command(disable_help_flag = true)]
    Sub(SubArgs),
}

/// Options both subcommands share.
#[derive(Debug, Args)]
struct Common {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost")]
    host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    port: u16,
    /// Protocol version: 31, 311, 5 (or mqttv31, mqttv311, mqttv5).
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    version: ProtocolVersion,
    /// Client identifier (empty: the broker assigns one; needs a clean session).
    #[arg(short = 'i', long = "id", default_value = "")]
    id: String,
    /// Keep the session: clean session / clean start off.
    #[arg(short = 'c', long = "disable-clean-session")]
    persistent: bool,
    /// Keep alive in seconds.
    #[arg(short = 'k', long, default_value_t = 60)]
    keepalive: u16,
    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    pw: Option<String>,
    /// QoS of published messages or of subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// 5.0 Session Expiry Interval in seconds (default with `-c` in 5.0: never expires).
    #[arg(short = 'x', long = "session-expiry")]
    session_expiry: Option<u32>,
    /// Will topic.
    #[arg(long)]
    will_topic: Option<String>,
    /// Will payload.
    #[arg(long, requires = "will_topic")]
    will_payload: Option<String>,
    /// Will QoS.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    will_qos: u8,
    /// Retain the will.
    #[arg(long)]
    will_retain: bool,
    /// 5.0 properties as mosquitto's `-D COMMAND NAME VALUE` (user-property takes a key and
    /// a value): `publish user-property K V`, `publish message-expiry-interval N`,
    /// `publish content-type S`, `publish response-topic T`, `will user-property K V`,
    /// `will message-expiry-interval N`, `will will-delay-interval N`,
    /// `connect session-expiry-interval N`.
    #[arg(short = 'D', long = "property", num_args = 3..=4, action = ArgAction::Append,
          value_names = ["COMMAND", "NAME", "VALUE"], allow_hyphen_values = true)]
    property: Vec<String>,
    /// WebSocket transport (`ws://HOST:PORT/mqtt`, subprotocol `mqtt`).
    #[arg(long)]
    ws: bool,
    /// TLS: trust this certificate authority (PEM); turns TLS on.
    #[arg(long)]
    cafile: Option<std::path::PathBuf>,
    /// TLS: do not check that the certificate is for the host name (the chain still is).
    #[arg(long, requires = "cafile")]
    insecure: bool,
    /// Print protocol progress to stdout.
    #[arg(short = 'd', long)]
    debug: bool,
}

#[derive(Debug, Args)]
struct PubArgs {
    #[command(flatten)]
    common: Common,
    /// Topic.
    #[arg(short = 't', long)]
    topic: String,
    /// Message payload.
    #[arg(short = 'm', long, group = "source")]
    message: Option<String>,
    /// Payload from a file.
    #[arg(short = 'f', long, group = "source")]
    file: Option<std::path::PathBuf>,
    /// One message per line read from stdin, until end of input.
    #[arg(short = 'l', long = "stdin-line", group = "source")]
    lines: bool,
    /// An empty (null) message.
    #[arg(short = 'n', long = "null-message", group = "source")]
    null: bool,
    /// Retain.
    #[arg(short = 'r', long)]
    retain: bool,
    /// 5.0 user property KEY VALUE (repeatable); same as `-D publish user-property`.
    #[arg(long = "user-property", num_args = 2, action = ArgAction::Append, value_names = ["KEY", "VALUE"])]
    user_property: Vec<String>,
    /// 5.0 message expiry interval in seconds; same as
    /// `-D publish message-expiry-interval`.
    #[arg(short = 'e', long = "message-expiry")]
    message_expiry: Option<u32>,
}

#[derive(Debug, Args)]
struct SubArgs {
    #[command(flatten)]
    common: Common,
    /// Topic filter (repeatable).
    #[arg(short = 't', long, required = true)]
    topic: Vec<String>,
    /// Print "topic payload".
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long)]
    count: Option<u64>,
    /// Output format: %t topic, %p payload, %q QoS, %r retain, %E message expiry
    /// interval, %P user properties (`key:value`, space separated), %% a percent sign.
    #[arg(short = 'F', long)]
    format: Option<String>,
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "31" | "mqttv31" => Ok(ProtocolVersion::V3_1),
        "311" | "mqttv311" => Ok(ProtocolVersion::V3_1_1),
        "5" | "mqttv5" => Ok(ProtocolVersion::V5),
        _ => Err(format!(
            "unknown protocol version {s:?}: use 31, 311 or 5 (mqttv31, mqttv311, mqttv5)"
        )),
    }
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// A reason code in words: `BadUserNameOrPassword` becomes "Bad user name or password".
fn reason_words(code: ReasonCode) -> String {
    let name = format!("{code:?}").replace("QoS", "Qos");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out.replace("Qos", "QoS").replace("qos", "QoS")
}

fn refused(code: ReasonCode) -> String {
    format!(
        "connection refused: {} (0x{:02x})",
        reason_words(code),
        code as u8
    )
}

/// 5.0 properties for one kind of packet, from `-D` and the shorthand flags.
#[derive(Debug, Default)]
struct Props {
    user: Vec<(String, String)>,
    expiry: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
}

impl Props {
    fn apply(&self, m: &mut Message) -> Result<(), String> {
        let pairs: Vec<(&str, &str)> = self
            .user
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut p = m.properties().clone();
        p.set_user_properties(&pairs)
            .map_err(|e| format!("user properties: {e}"))?;
        p.message_expiry_interval = self.expiry;
        p.content_type = self.content_type.clone().map(Into::into);
        p.response_topic = self.response_topic.clone().map(Into::into);
        // Boxed only when there is any.
        m.set_properties(p);
        Ok(())
    }
}

/// `-D` properties sorted by packet.
#[derive(Debug, Default)]
struct Properties {
    publish: Props,
    will: Props,
    will_delay: u32,
    session_expiry: Option<u32>,
}

fn parse_properties(raw: &[String], v5: bool) -> Result<Properties, String> {
    let mut out = Properties::default();
    let mut rest = raw;
    while !rest.is_empty() {
        let (cmd, name) = (rest[0].as_str(), rest.get(1).map_or("", String::as_str));
        let n = if name == "user-property" { 4 } else { 3 };
        if rest.len() < n || rest[..n].iter().skip(1).any(|s| s == "-D") {
            return Err(format!("-D {cmd} {name}: expected {} values", n - 1));
        }
        let value = rest[2].as_str();
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("-D {cmd} {name}: {s:?} is not a number"))
        };
        if !v5 {
            return Err("-D properties need MQTT 5.0 (-V 5)".into());
        }
        let props = match cmd {
            "publish" => &mut out.publish,
            "will" => &mut out.will,
            "connect" => {
                match name {
                    "session-expiry-interval" => out.session_expiry = Some(num(value)?),
                    _ => return Err(format!("-D connect {name}: not supported")),
                }
                rest = &rest[n..];
                continue;
            }
            _ => return Err(format!("-D {cmd}: not supported (publish, will, connect)")),
        };
        match name {
            "user-property" => props.user.push((value.into(), rest[3].clone())),
            "message-expiry-interval" => props.expiry = Some(num(value)?),
            "content-type" => props.content_type = Some(value.into()),
            "response-topic" => props.response_topic = Some(value.into()),
            "will-delay-interval" if cmd == "will" => out.will_delay = num(value)?,
            _ => return Err(format!("-D {cmd} {name}: not supported")),
        }
        rest = &rest[n..];
    }
    Ok(out)
}

/// A topic name from the command line, checked once for every message sent to it; the
/// error reads as the one publishing it would have given.
fn topic_name(topic: &str) -> Result<TopicBuf, String> {
    TopicBuf::try_from(topic.to_owned())
        .map_err(|e| Error::from(mqtt_state::codec::Error::InvalidTopicName(e)).to_string())
}

fn config(c: &Common, props: &Properties) -> Result<ClientConfig, String> {
    if c.id.is_empty() && c.persistent {
        return Err("-c needs a client id (-i)".into());
    }
    let v5 = c.version.is_v5();
    let mut cfg = ClientConfig::new(c.version, c.id.clone());
    cfg.keep_alive = c.keepalive;
    cfg.clean_start = !c.persistent;
    cfg.username = c.username.clone().map(Into::into);
    cfg.password = c.pw.clone().map(Bytes::from);
    let expiry = c.session_expiry.or(props.session_expiry);
    if expiry.is_some() && !v5 {
        return Err("--session-expiry needs MQTT 5.0 (-V 5)".into());
    }
    // As mosquitto: a persistent 5.0 session never expires unless told otherwise.
    cfg.session_expiry_interval = expiry.unwrap_or(if c.persistent { u32::MAX } else { 0 });
    if let Some(topic) = &c.will_topic {
        let payload = c.will_payload.clone().unwrap_or_default();
        let mut m = Message::new(topic_name(topic)?, payload, qos(c.will_qos));
        m.retain = c.will_retain;
        props.will.apply(&mut m)?;
        cfg.will = Some((m, props.will_delay));
    }
    Ok(cfg)
}

/// The TLS settings for `--cafile` (and `--insecure`).
fn tls_config(
    cafile: &std::path::Path,
    insecure: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", cafile.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cafile).map_err(|e| err(&e))? {
        roots.add(cert.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    }
    if roots.is_empty() {
        return Err(err(&"no certificate found"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?;
    let config = if insecure {
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err(&e))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `--insecure`: verifies the chain but accepts a certificate for any name.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What the command does once connected.
enum Job {
    /// Publish these messages, or (`-l`) one per stdin line made from the template.
    Pub {
        messages: Vec<Message>,
        lines: Option<(Message, mpsc::Receiver<Bytes>)>,
    },
    /// Subscribe and print.
    Sub {
        filters: Vec<String>,
        qos: QoS,
        verbose: bool,
        format: Option<String>,
        count: Option<u64>,
    },
}

/// Why the client stopped, as the progress hook heard it: the request futures only say
/// "closed".
type Cause = Arc<Mutex<Option<String>>>;

/// An error of the client in the words the command line used before it ran over
/// mqtt-tokio.
fn describe(e: &mqtt_tokio::Error) -> String {
    use mqtt_tokio::Error as E;
    match e {
        E::Refused(code) => refused(*code),
        E::Io(e) => e.to_string(),
        E::Mqtt(Error::Disconnected(code)) => {
            format!("disconnected by the broker: {}", reason_words(*code))
        }
        E::Mqtt(Error::ConnectionClosed) => "closed by the broker".into(),
        e => e.to_string(),
    }
}

/// Prints a `-d` line.
fn debug_line(line: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// The progress hook: `-d` lines on stdout, what went wrong on stderr, as mosquitto's
/// clients print them; and the cause when the client stops.
fn progress_hook(
    debug: bool,
    publisher: bool,
    client_id: mqtt_state::Utf8Bytes,
    cause: Cause,
) -> impl Fn(&Progress<'_>) + Send + Sync + 'static {
    move |p| match p {
        Progress::Connecting if debug => {
            debug_line(format_args!("Client {client_id:?} sending CONNECT"));
        }
        Progress::Event(ev) => match ev {
            Event::Connected(info) if debug => debug_line(format_args!(
                "Client received CONNACK (session present: {})",
                u8::from(info.session_present)
            )),
            Event::Subscribed { packet_id, reasons } => {
                if debug {
                    let granted: Vec<String> =
                        reasons.iter().map(|r| (*r as u8).to_string()).collect();
                    debug_line(format_args!(
                        "Subscribed (mid: {}): {}",
                        packet_id.get(),
                        granted.join(", ")
                    ));
                }
                if let Some(r) = reasons.iter().find(|r| r.is_error()) {
                    eprintln!(
                        "subscription refused: {} (0x{:02x})",
                        reason_words(*r),
                        *r as u8
                    );
                }
            }
            Event::Acknowledged {
                packet_id, reason, ..
            } => {
                if debug {
                    debug_line(format_args!(
                        "Client received acknowledgement (mid: {}, reason: {})",
                        packet_id.get(),
                        reason_words(*reason)
                    ));
                }
                if reason.is_error() {
                    eprintln!(
                        "publish refused: {} (0x{:02x})",
                        reason_words(*reason),
                        *reason as u8
                    );
                }
            }
            // mqtt-tokio publishes them again.
            Event::SessionLost { messages } if publisher => eprintln!(
                "session not resumed; publishing {} message(s) again",
                messages.len()
            ),
            Event::Dropped { message, error, .. } => {
                eprintln!("message to {} dropped: {error}", message.topic);
            }
            _ => {}
        },
        Progress::Reconnecting { error, retry_in } => {
            eprintln!(
                "connection lost: {}; reconnecting in {retry_in:?}",
                describe(error)
            );
        }
        Progress::Stopped { error: Some(e) } => {
            *cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(describe(e));
        }
        _ => {}
    }
}

/// What a request that found the client stopped reports: why it stopped.
fn stopped(cause: &Cause) -> String {
    cause
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(|| "the client stopped".into())
}

/// The mqtt-tokio options for the flags: the machine's configuration, the transport, the
/// hook. `sub` acknowledges a message once it is printed (manual acks).
fn options(c: &Common, config: ClientConfig, job: &Job, cause: &Cause) -> Result<Options, String> {
    let publisher = matches!(job, Job::Pub { .. });
    let hook = progress_hook(
        c.debug,
        publisher,
        config.client_id.clone(),
        Arc::clone(cause),
    );
    let mut o = Options::new("", c.host.clone(), c.port).on_progress(hook);
    o.config = config;
    o = o.manual_acks(!publisher);
    if let Some(ca) = &c.cafile {
        o = o.tls(tls_config(ca, c.insecure)?);
    }
    if c.ws {
        o = o.websocket("/mqtt");
    }
    Ok(o)
}

/// Connects, does the job, disconnects. After a lost connection mqtt-tokio reconnects
/// with backoff; a publisher waits for every acknowledgement (across reconnects) before it
/// disconnects.
async fn run(options: Options, job: Job, cause: Cause) -> Result<(), String> {
    let (client, mut incoming) = AsyncClient::connect(options)
        .await
        .map_err(|e| describe(&e))?;
    let closed = |e: mqtt_tokio::Error| match e {
        mqtt_tokio::Error::Closed => stopped(&cause),
        e => describe(&e),
    };
    match job {
        Job::Pub { messages, lines } => {
            let mut acks = VecDeque::new();
            for m in messages {
                acks.push_back(client.enqueue(m).await.map_err(closed)?);
            }
            let mut lines = lines;
            loop {
                let (reading, waiting) = (lines.is_some(), !acks.is_empty());
                let line = async {
                    match &mut lines {
                        Some((_, rx)) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let ack = async {
                    match acks.front_mut() {
                        Some(a) => a.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    l = line, if reading => match (l, &lines) {
                        (Some(payload), Some((template, _))) => {
                            let mut m = template.clone();
                            m.payload = payload;
                            acks.push_back(client.enqueue(m).await.map_err(closed)?);
                        }
                        _ => lines = None,
                    },
                    r = ack, if waiting => {
                        acks.pop_front();
                        match r {
                            // A 5.0 refusal: the hook said so; the rest goes on.
                            Ok(_) | Err(mqtt_tokio::Error::Rejected { .. }) => {}
                            Err(mqtt_tokio::Error::Closed) => return Err(stopped(&cause)),
                            Err(e) => return Err(format!("publish: {}", describe(&e))),
                        }
                    }
                    else => break,
                }
            }
        }
        Job::Sub {
            filters,
            qos,
            verbose,
            format,
            count,
        } => {
            let opts = SubscriptionOptions::qos(qos);
            let fs: Vec<(&str, SubscriptionOptions)> =
                filters.iter().map(|f| (f.as_str(), opts)).collect();
            // A refusal is printed by the hook; the subscriber stays, as mosquitto_sub.
            client.subscribe_many(&fs).await.map_err(|e| match e {
                mqtt_tokio::Error::Closed => stopped(&cause),
                e => format!("subscribe: {}", describe(&e)),
            })?;
            let mut received = 0u64;
            while count.is_none_or(|c| received < c) {
                let Some(d) = incoming.recv_delivery().await else {
                    return Err(stopped(&cause));
                };
                print_message(&d.message, verbose, format.as_deref());
                if let Some(token) = d.ack {
                    client.ack(token).await.map_err(closed)?;
                }
                received += 1;
            }
        }
    }
    client.disconnect().await.map_err(closed)
}

fn print_message(m: &Message, verbose: bool, format: Option<&str>) {
    let mut line: Vec<u8> = Vec::new();
    match format {
        Some(f) => {
            let mut chars = f.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    let mut b = [0; 4];
                    line.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                    continue;
                }
                match chars.next() {
                    Some('t') => line.extend_from_slice(m.topic.as_str().as_bytes()),
                    Some('p') => line.extend_from_slice(&m.payload),
                    Some('q') => line.extend_from_slice((m.qos as u8).to_string().as_bytes()),
                    Some('r') => line.push(if m.retain { b'1' } else { b'0' }),
                    Some('E') => {
                        if let Some(e) = m.properties().message_expiry_interval {
                            line.extend_from_slice(e.to_string().as_bytes());
                        }
                    }
                    Some('P') => {
                        let props: Vec<String> = m
                            .properties()
                            .user_properties()
                            .iter()
                            .map(|(k, v)| format!("{k}:{v}"))
                            .collect();
                        line.extend_from_slice(props.join(" ").as_bytes());
                    }
                    Some('%') => line.push(b'%'),
                    Some(o) => {
                        line.push(b'%');
                        let mut b = [0; 4];
                        line.extend_from_slice(o.encode_utf8(&mut b).as_bytes());
                    }
                    None => line.push(b'%'),
                }
            }
        }
        None => {
            if verbose {
                line.extend_from_slice(m.topic.as_str().as_bytes());
                line.push(b' ');
            }
            line.extend_from_slice(&m.payload);
        }
    }
    line.push(b'\n');
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(&line);
    let _ = o.flush();
}

/// Reads stdin lines on a thread (tokio's stdin is a thread too).
fn stdin_lines() -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut stdin = std::io::stdin().lock();
        loop {
            line.clear();
            match std::io::BufRead::read_until(&mut stdin, b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.ends_with(b"\n") {
                        line.pop();
                        if line.ends_with(b"\r") {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Bytes::copy_from_slice(&line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

fn setup(cmd: Cmd) -> Result<(Common, ClientConfig, Job), String> {
    let (common, job, props) = match cmd {
        Cmd::Pub(a) => {
            let v5 = a.common.version.is_v5();
            let mut props = parse_properties(&a.common.property, v5)?;
            if (!a.user_property.is_empty() || a.message_expiry.is_some()) && !v5 {
                return Err("--user-property and --message-expiry need MQTT 5.0 (-V 5)".into());
            }
            for kv in a.user_property.chunks(2) {
                props.publish.user.push((kv[0].clone(), kv[1].clone()));
            }
            if a.message_expiry.is_some() {
                props.publish.expiry = a.message_expiry;
            }
            let mut template = Message::new(topic_name(&a.topic)?, Bytes::new(), qos(a.common.qos));
            template.retain = a.retain;
            props.publish.apply(&mut template)?;
            let job = if a.lines {
                Job::Pub {
                    messages: Vec::new(),
                    lines: Some((template, stdin_lines())),
                }
            } else {
                let payload = match (&a.message, &a.file) {
                    (Some(m), _) => Bytes::from(m.clone()),
                    (None, Some(f)) => {
                        Bytes::from(std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?)
                    }
                    (None, None) if a.null => Bytes::new(),
                    (None, None) => return Err("pub needs one of -m, -f, -l, -n".into()),
                };
                let mut m = template;
                m.payload = payload;
                Job::Pub {
                    messages: vec![m],
                    lines: None,
                }
            };
            (a.common, job, props)
        }
        Cmd::Sub(a) => {
            let props = parse_properties(&a.common.property, a.common.version.is_v5())?;
            let job = Job::Sub {
                filters: a.topic,
                qos: qos(a.common.qos),
                verbose: a.verbose,
                format: a.format,
                count: a.count,
            };
            (a.common, job, props)
        }
    };
    let cfg = config(&common, &props)?;
    Ok((common, cfg, job))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, config, job) = match setup(cli.cmd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cause = Cause::default();
    let result = rt.block_on(async {
        let options = options(&common, config, &job, &cause)?;
        tokio::select! {
            r = run(options, job, Arc::clone(&cause)) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_code_in_words() {
        assert_eq!(
            refused(ReasonCode::BadUserNameOrPassword),
            "connection refused: Bad user name or password (0x86)"
        );
        assert_eq!(
            reason_words(ReasonCode::QoSNotSupported),
            "QoS not supported"
        );
    }

    #[test]
    fn properties_like_mosquitto() {
        let raw: Vec<String> = [
            "publish",
            "user-property",
            "k",
            "v",
            "publish",
            "message-expiry-interval",
            "30",
        ]
        .map(String::from)
        .to_vec();
        let p = parse_properties(&raw, true).unwrap();
        assert_eq!(p.publish.user, [("k".into(), "v".into())]);
        assert_eq!(p.publish.expiry, Some(30));
        assert!(parse_properties(&raw, false).is_err());
    }

    #[test]
    fn cli_parses_mosquitto_style_flags() {
        Cli::try_parse_from([
            "mqtt-client",
            "sub",
            "-h",
            "127.0.0.1",
            "-p",
            "1",
            "-t",
            "a",
            "-t",
            "b/#",
            "-q",
            "2",
            "-V",
            "mqttv5",
            "-c",
            "-i",
            "x",
            "-v",
            "-C",
            "3",
        ])
        .unwrap();
    }
}
