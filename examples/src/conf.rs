//! The example broker's configuration file (`mqtt-broker -c FILE`): the part of mosquitto's
//! `mosquitto.conf` syntax that maps onto this broker, parsed into a [`Config`].
//!
//! [`parse`] is a pure function of the file's text (the path only names the file in
//! errors); the binary reads the file and merges the result under its command-line flags.
//! `docs/config.md` lists what is supported and how it differs from mosquitto.
//!
//! The syntax is mosquitto's: one `option value...` per line, `#` at the start of a line
//! for a comment, blank lines ignored. A value that is a string (a path, a user name, a
//! password) is the rest of the line, so it may hold spaces, as in mosquitto. Anything
//! this broker does not do (an unknown option, a known mosquitto option it does not
//! support, a bad value, an option given twice in one scope) is an error naming the file,
//! the line and the option: never silently ignored, since a setting that is ignored is
//! usually a security or durability setting someone relied on.
//!
//! Relative paths are kept as written and so resolve against the broker's working
//! directory, as mosquitto's do.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use mqtt_codec::QoS;
use mqtt_topic::{TopicFilter, TopicName};

/// A configuration error: `FILE:LINE: message`, the form the broker prints before it exits
/// with a non-zero status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfError {
    /// The file as it was named on the command line.
    pub(crate) file: String,
    /// 1-based.
    pub(crate) line: usize,
    pub(crate) message: String,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for ConfError {}

/// What a configuration file says. `None` (or an empty list) is "the file does not say":
/// the command line's flag, or its default, applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Config {
    /// `port`/`bind_address` (the default listener, first when present) and each
    /// `listener`, at most one of each [`ListenerKind`].
    pub(crate) listeners: Vec<Listener>,
    /// `allow_anonymous`.
    pub(crate) allow_anonymous: Option<bool>,
    /// `password_file`.
    pub(crate) password_file: Option<PathBuf>,
    /// `acl_file`.
    pub(crate) acl_file: Option<PathBuf>,
    /// `max_keepalive` (0: no maximum).
    pub(crate) max_keepalive: Option<u16>,
    /// `max_queued_messages` (positive: this broker keeps a bound).
    pub(crate) max_queued_messages: Option<usize>,
    /// `max_connections` (`-1` is `usize::MAX`). Per listener in mosquitto; one limit for
    /// the whole broker here.
    pub(crate) max_connections: Option<usize>,
    /// `max_packet_size` (positive).
    pub(crate) max_packet_size: Option<u32>,
    /// `max_inflight_messages` (1 to 65,535).
    pub(crate) max_inflight_messages: Option<u16>,
    /// `persistence`.
    pub(crate) persistence: Option<bool>,
    /// `persistence_location`.
    pub(crate) persistence_location: Option<PathBuf>,
    /// `connection` sections.
    pub(crate) bridges: Vec<Bridge>,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    /// Where it is declared (the `listener` line, or the first default-listener option).
    pub(crate) line: usize,
    /// 0 binds a free port (printed at start); in mosquitto, port 0 is for Unix sockets.
    pub(crate) port: u16,
    /// An IP address or a host name; none: every IPv4 interface (`0.0.0.0`).
    pub(crate) address: Option<String>,
    /// `protocol`.
    pub(crate) protocol: Protocol,
    /// `certfile`: with `keyfile`, the listener is TLS (or secure WebSocket).
    pub(crate) certfile: Option<PathBuf>,
    /// `keyfile`.
    pub(crate) keyfile: Option<PathBuf>,
}

/// A listener's `protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Mqtt,
    WebSockets,
}

/// The kinds of listener the broker has a flag for: one of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ListenerKind {
    /// `--bind`.
    Tcp,
    /// `--ws-bind`.
    Ws,
    /// `--tls-bind`.
    Tls,
    /// `--wss-bind`.
    Wss,
}

impl ListenerKind {
    fn describe(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "plain MQTT listener (--bind)",
            ListenerKind::Ws => "WebSocket listener (--ws-bind)",
            ListenerKind::Tls => "MQTT over TLS listener (--tls-bind)",
            ListenerKind::Wss => "WebSocket over TLS listener (--wss-bind)",
        }
    }
}

impl Listener {
    fn new(line: usize, port: u16, address: Option<String>) -> Self {
        Self {
            line,
            port,
            address,
            protocol: Protocol::Mqtt,
            certfile: None,
            keyfile: None,
        }
    }

    /// Which of the broker's listeners this is.
    pub(crate) fn kind(&self) -> ListenerKind {
        match (self.protocol, self.certfile.is_some()) {
            (Protocol::Mqtt, false) => ListenerKind::Tcp,
            (Protocol::WebSockets, false) => ListenerKind::Ws,
            (Protocol::Mqtt, true) => ListenerKind::Tls,
            (Protocol::WebSockets, true) => ListenerKind::Wss,
        }
    }

    /// The address to bind: the IP address as written, or the first address a host name
    /// resolves to (a name lookup, hence not part of [`parse`]).
    pub(crate) fn socket_addr(&self) -> Result<SocketAddr, String> {
        let Some(host) = &self.address else {
            return Ok(SocketAddr::from(([0, 0, 0, 0], self.port)));
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        (host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve '{host}': {e}"))?
            .next()
            .ok_or_else(|| format!("'{host}' resolves to no address"))
    }
}

impl Config {
    /// The listener of `kind`, if the file declares one.
    pub(crate) fn listener(&self, kind: ListenerKind) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.kind() == kind)
    }
}

/// A bridge: a `connection NAME` section, parsed completely; the binary's `bridge_config`
/// hands it to the broker core's bridges, and refuses what it cannot honour (a bridge
/// running differently from what the file says would lose messages someone expects to
/// move).
///
/// Defaults are mosquitto's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bridge {
    /// The `connection` line's name.
    pub(crate) name: String,
    /// The `connection` line.
    pub(crate) line: usize,
    /// `address`/`addresses`: tried in order (mosquitto's default `round_robin false`:
    /// the first is the main one, the others are fallbacks).
    pub(crate) addresses: Vec<BridgeAddress>,
    /// `topic` lines, in order.
    pub(crate) topics: Vec<BridgeTopic>,
    /// `remote_username`.
    pub(crate) remote_username: Option<String>,
    /// `remote_password` (needs a user name: [MQTT-3.1.2-22]).
    pub(crate) remote_password: Option<String>,
    /// `remote_clientid`; none: mosquitto's default, `HOSTNAME.NAME`.
    pub(crate) remote_clientid: Option<String>,
    /// `bridge_protocol_version`, default `mqttv311`.
    pub(crate) protocol_version: BridgeProtocol,
    /// `cleansession`, default false (the remote keeps the bridge's session).
    pub(crate) clean_session: bool,
    /// `try_private`, default true: under 3.1/3.1.1, announce a bridge with the top bit
    /// of the protocol level, so that a remote mosquitto does not echo messages back.
    pub(crate) try_private: bool,
    /// `keepalive_interval` in seconds, default 60.
    pub(crate) keepalive_interval: u16,
    /// `notifications`, default true: publish the bridge's state (`1`/`0`, retained) on
    /// `$SYS/broker/connection/NAME/state`.
    pub(crate) notifications: bool,
    /// `bridge_cafile`: with it the connection is TLS, and the remote's certificate must
    /// chain to this CA.
    pub(crate) cafile: Option<PathBuf>,
    /// `bridge_certfile`: a client certificate (with `bridge_keyfile`).
    pub(crate) certfile: Option<PathBuf>,
    /// `bridge_keyfile`.
    pub(crate) keyfile: Option<PathBuf>,
    /// `bridge_insecure`, default false: when true, the remote's host name is not checked
    /// against its certificate (the chain still is).
    pub(crate) insecure: bool,
}

/// One `address` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BridgeAddress {
    /// A host name or IP address (an IPv6 address may be written in brackets).
    pub(crate) host: String,
    /// Default 1883.
    pub(crate) port: u16,
}

/// `bridge_protocol_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BridgeProtocol {
    /// `mqttv31`.
    V31,
    /// `mqttv311`.
    V311,
    /// `mqttv50`.
    V50,
}

/// A `topic` line's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Local messages go to the remote (mosquitto's default).
    Out,
    /// The remote's messages come here.
    In,
    /// Both.
    Both,
}

/// `topic PATTERN [[[out|in|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]`, mosquitto's meaning:
/// the local topic is `LOCAL_PREFIX + PATTERN`, the remote one `REMOTE_PREFIX + PATTERN`.
/// A pattern of `""` (empty) maps one topic: then both prefixes must be given and are the
/// topics themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BridgeTopic {
    /// The `topic` line.
    pub(crate) line: usize,
    /// None for `""`.
    pub(crate) pattern: Option<String>,
    /// Default `out`.
    pub(crate) direction: Direction,
    /// Default 0.
    pub(crate) qos: QoS,
    /// None for absent or `""`.
    pub(crate) local_prefix: Option<String>,
    /// None for absent or `""`.
    pub(crate) remote_prefix: Option<String>,
}

impl BridgeTopic {
    /// The filter on this broker: local prefix, then pattern.
    pub(crate) fn local_filter(&self) -> String {
        join(self.local_prefix.as_deref(), self.pattern.as_deref())
    }

    /// The filter on the remote broker: remote prefix, then pattern.
    pub(crate) fn remote_filter(&self) -> String {
        join(self.remote_prefix.as_deref(), self.pattern.as_deref())
    }
}

fn join(prefix: Option<&str>, pattern: Option<&str>) -> String {
    format!("{}{}", prefix.unwrap_or(""), pattern.unwrap_or(""))
}

/// Where a later duplicate is looked for: options are unique per scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Global,
    DefaultListener,
    Listener(usize),
    Bridge(usize),
}

/// Parses a configuration file's `text`; `path` only names it in errors.
pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, ConfError> {
    let file = path.display().to_string();
    let mut p = Parser {
        file: &file,
        config: Config::default(),
        default_listener: None,
        listeners: Vec::new(),
        current: None,
        bridge: None,
        seen: HashMap::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (option, rest) = match line.split_once(char::is_whitespace) {
            Some((o, r)) => (o, r.trim_start()),
            None => (line, ""),
        };
        p.option(i + 1, option, rest)?;
    }
    p.finish()
}

/// Which listener listener-scoped options go to.
#[derive(Debug, Clone, Copy)]
enum Current {
    Default,
    Listener(usize),
}

struct Parser<'f> {
    file: &'f str,
    config: Config,
    default_listener: Option<Listener>,
    listeners: Vec<Listener>,
    current: Option<Current>,
    bridge: Option<usize>,
    /// (scope, option) to the line it was first given on.
    seen: HashMap<(Scope, &'static str), usize>,
}

/// The options this parser knows, with the one name each is checked for duplicates under.
const GLOBAL: &[&str] = &[
    "allow_anonymous",
    "password_file",
    "acl_file",
    "max_keepalive",
    "max_queued_messages",
    "max_connections",
    "max_packet_size",
    "max_inflight_messages",
    "persistence",
    "persistence_location",
];
const LISTENER: &[&str] = &["protocol", "certfile", "keyfile"];
const BRIDGE: &[&str] = &[
    "address",
    "remote_username",
    "remote_password",
    "remote_clientid",
    "bridge_protocol_version",
    "cleansession",
    "try_private",
    "keepalive_interval",
    "notifications",
    "bridge_cafile",
    "bridge_certfile",
    "bridge_keyfile",
    "bridge_insecure",
];

impl Parser<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> ConfError {
        ConfError {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
    }

    /// Records `name` in `scope`; a second time is an error.
    fn once(&mut self, line: usize, scope: Scope, name: &'static str) -> Result<(), ConfError> {
        if let Some(first) = self.seen.insert((scope, name), line) {
            self.seen.insert((scope, name), first);
            return Err(self.err(line, format!("duplicate '{name}' (first on line {first})")));
        }
        Ok(())
    }

    fn option(&mut self, n: usize, option: &str, rest: &str) -> Result<(), ConfError> {
        let known = |list: &[&'static str]| list.iter().copied().find(|o| *o == option);
        // `addresses` is mosquitto's other spelling of `address`.
        let canonical = if option == "addresses" {
            Some("address")
        } else {
            known(GLOBAL).or(known(LISTENER)).or(known(BRIDGE))
        };
        match option {
            "listener" => return self.listener(n, rest),
            "port" => {
                let port = self.port(n, option, one_value(rest).unwrap_or(rest))?;
                self.once(n, Scope::DefaultListener, "port")?;
                self.default_listener(n).port = port;
                return Ok(());
            }
            "bind_address" => {
                let host = self.string(n, option, rest)?;
                self.once(n, Scope::DefaultListener, "bind_address")?;
                self.default_listener(n).address = Some(host);
                return Ok(());
            }
            "connection" => return self.connection(n, rest),
            "topic" => {
                let Some(b) = self.bridge else {
                    return Err(self.outside_bridge(n, option));
                };
                let topic = self.topic(n, rest)?;
                self.config.bridges[b].topics.push(topic);
                return Ok(());
            }
            _ => {}
        }
        let Some(name) = canonical else {
            return Err(self.err(n, format!("unsupported option '{option}'")));
        };
        if GLOBAL.contains(&name) {
            self.once(n, Scope::Global, name)?;
            return self.global(n, name, rest);
        }
        if LISTENER.contains(&name) {
            let current = match self.current {
                Some(c) => c,
                None => {
                    // As mosquitto: before any `listener`, it is the default listener's.
                    self.default_listener(n);
                    Current::Default
                }
            };
            let scope = match current {
                Current::Default => Scope::DefaultListener,
                Current::Listener(i) => Scope::Listener(i),
            };
            self.once(n, scope, name)?;
            return self.listener_option(n, current, name, rest);
        }
        let Some(b) = self.bridge else {
            return Err(self.outside_bridge(n, option));
        };
        self.once(n, Scope::Bridge(b), name)?;
        self.bridge_option(n, b, name, option, rest)
    }

    fn outside_bridge(&self, n: usize, option: &str) -> ConfError {
        self.err(
            n,
            format!("'{option}' belongs in a bridge section (after 'connection NAME')"),
        )
    }

    fn default_listener(&mut self, n: usize) -> &mut Listener {
        self.default_listener
            .get_or_insert_with(|| Listener::new(n, 1883, None))
    }

    fn listener(&mut self, n: usize, rest: &str) -> Result<(), ConfError> {
        let mut words = rest.split_whitespace();
        let port = self.port(n, "listener", words.next().unwrap_or(""))?;
        let address = words.next().map(str::to_string);
        if words.next().is_some() {
            return Err(self.err(n, "'listener' takes a port and an optional address"));
        }
        if let Some(a) = &address {
            if a.starts_with('/') {
                return Err(self.err(n, "Unix socket listeners are not supported"));
            }
        }
        self.listeners.push(Listener::new(n, port, address));
        self.current = Some(Current::Listener(self.listeners.len() - 1));
        Ok(())
    }

    fn connection(&mut self, n: usize, rest: &str) -> Result<(), ConfError> {
        let name = one(rest);
        if name.is_empty() || rest.split_whitespace().count() != 1 {
            return Err(self.err(n, "'connection' takes one name"));
        }
        if let Some(b) = self.config.bridges.iter().find(|b| b.name == name) {
            let first = b.line;
            return Err(self.err(
                n,
                format!("a second bridge named '{name}' (first on line {first})"),
            ));
        }
        self.close_bridge()?;
        self.config.bridges.push(Bridge {
            name: name.to_string(),
            line: n,
            addresses: Vec::new(),
            topics: Vec::new(),
            remote_username: None,
            remote_password: None,
            remote_clientid: None,
            protocol_version: BridgeProtocol::V311,
            clean_session: false,
            try_private: true,
            keepalive_interval: 60,
            notifications: true,
            cafile: None,
            certfile: None,
            keyfile: None,
            insecure: false,
        });
        self.bridge = Some(self.config.bridges.len() - 1);
        Ok(())
    }

    fn global(&mut self, n: usize, name: &'static str, rest: &str) -> Result<(), ConfError> {
        match name {
            "allow_anonymous" => self.config.allow_anonymous = Some(self.boolean(n, name, rest)?),
            "password_file" => self.config.password_file = Some(self.string(n, name, rest)?.into()),
            "acl_file" => self.config.acl_file = Some(self.string(n, name, rest)?.into()),
            "max_keepalive" => {
                self.config.max_keepalive = Some(self.number(n, name, rest, 0, 65_535)? as u16)
            }
            "max_queued_messages" => {
                let v = self.unlimited(n, name, rest, "a number of messages")?;
                self.config.max_queued_messages = Some(v as usize);
            }
            "max_connections" => {
                self.config.max_connections = Some(match one(rest) {
                    "-1" => usize::MAX,
                    _ => self.number(n, name, rest, 0, u64::MAX)? as usize,
                });
            }
            "max_packet_size" => {
                // The largest MQTT packet: a 268,435,455-byte remaining length and 5 bytes
                // of fixed header.
                let v = self.unlimited(n, name, rest, "a size in bytes")?;
                if v > 268_435_460 {
                    return Err(self.err(n, "'max_packet_size' above the largest MQTT packet"));
                }
                self.config.max_packet_size = Some(v as u32);
            }
            "max_inflight_messages" => {
                let v = self.unlimited(n, name, rest, "a number up to 65535")?;
                if v > 65_535 {
                    return Err(self.err(n, "'max_inflight_messages' is at most 65535"));
                }
                self.config.max_inflight_messages = Some(v as u16);
            }
            "persistence" => self.config.persistence = Some(self.boolean(n, name, rest)?),
            "persistence_location" => {
                self.config.persistence_location = Some(self.string(n, name, rest)?.into());
            }
            _ => unreachable!("every GLOBAL option has an arm"),
        }
        Ok(())
    }

    fn listener_option(
        &mut self,
        n: usize,
        current: Current,
        name: &'static str,
        rest: &str,
    ) -> Result<(), ConfError> {
        let protocol = match name {
            "protocol" => Some(match one_value(rest) {
                Some("mqtt") => Protocol::Mqtt,
                Some("websockets") => Protocol::WebSockets,
                _ => {
                    return Err(self.err(
                        n,
                        format!("bad value for 'protocol': '{rest}' (mqtt or websockets)"),
                    ))
                }
            }),
            _ => None,
        };
        let path = match name {
            "certfile" | "keyfile" => Some(PathBuf::from(self.string(n, name, rest)?)),
            _ => None,
        };
        let l = match current {
            Current::Default => self.default_listener.as_mut().expect("created before"),
            Current::Listener(i) => &mut self.listeners[i],
        };
        match name {
            "protocol" => l.protocol = protocol.expect("set above"),
            "certfile" => l.certfile = path,
            "keyfile" => l.keyfile = path,
            _ => unreachable!("every LISTENER option has an arm"),
        }
        Ok(())
    }

    fn bridge_option(
        &mut self,
        n: usize,
        b: usize,
        name: &'static str,
        written: &str,
        rest: &str,
    ) -> Result<(), ConfError> {
        match name {
            "address" => {
                let mut addresses = Vec::new();
                for a in rest.split_whitespace() {
                    addresses.push(self.address(n, a)?);
                }
                if addresses.is_empty() {
                    return Err(self.err(n, format!("empty '{written}'")));
                }
                self.config.bridges[b].addresses = addresses;
            }
            "remote_username" => {
                self.config.bridges[b].remote_username = Some(self.string(n, name, rest)?);
            }
            "remote_password" => {
                self.config.bridges[b].remote_password = Some(self.string(n, name, rest)?);
            }
            "remote_clientid" => {
                self.config.bridges[b].remote_clientid = Some(self.string(n, name, rest)?);
            }
            "bridge_protocol_version" => {
                self.config.bridges[b].protocol_version = match one_value(rest) {
                    Some("mqttv31") => BridgeProtocol::V31,
                    Some("mqttv311") => BridgeProtocol::V311,
                    Some("mqttv50") => BridgeProtocol::V50,
                    _ => {
                        return Err(self.err(
                            n,
                            format!(
                                "bad value for 'bridge_protocol_version': '{rest}' \
                                 (mqttv31, mqttv311 or mqttv50)"
                            ),
                        ))
                    }
                }
            }
            "cleansession" => self.config.bridges[b].clean_session = self.boolean(n, name, rest)?,
            "try_private" => self.config.bridges[b].try_private = self.boolean(n, name, rest)?,
            "keepalive_interval" => {
                self.config.bridges[b].keepalive_interval =
                    self.number(n, name, rest, 0, 65_535)? as u16;
            }
            "notifications" => {
                self.config.bridges[b].notifications = self.boolean(n, name, rest)?
            }
            "bridge_cafile" => {
                self.config.bridges[b].cafile = Some(self.string(n, name, rest)?.into());
            }
            "bridge_certfile" => {
                self.config.bridges[b].certfile = Some(self.string(n, name, rest)?.into());
            }
            "bridge_keyfile" => {
                self.config.bridges[b].keyfile = Some(self.string(n, name, rest)?.into());
            }
            "bridge_insecure" => self.config.bridges[b].insecure = self.boolean(n, name, rest)?,
            _ => unreachable!("every BRIDGE option has an arm"),
        }
        Ok(())
    }

    /// `host`, `host:port`, `[v6]` or `[v6]:port`; an unbracketed IPv6 address is a host.
    fn address(&self, n: usize, a: &str) -> Result<BridgeAddress, ConfError> {
        let bad = || self.err(n, format!("bad bridge address '{a}' (host or host:port)"));
        let (host, port) = if let Some(v6) = a.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match a.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h, Some(p)),
                _ => (a, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            None => 1883,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad)?,
        };
        Ok(BridgeAddress {
            host: host.to_string(),
            port,
        })
    }

    fn topic(&self, n: usize, rest: &str) -> Result<BridgeTopic, ConfError> {
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.is_empty() || words.len() > 5 {
            return Err(self.err(
                n,
                "'topic' is: topic PATTERN [[[out|in|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]",
            ));
        }
        let empty = |w: &str| (w != "\"\"").then(|| w.to_string());
        let pattern = empty(words[0]);
        let direction = match words.get(1).map(|w| w.to_ascii_lowercase()).as_deref() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(_) => {
                return Err(self.err(
                    n,
                    format!("bad topic direction '{}' (out, in or both)", words[1]),
                ))
            }
        };
        let qos = match words.get(2).copied() {
            None | Some("0") => QoS::AtMostOnce,
            Some("1") => QoS::AtLeastOnce,
            Some("2") => QoS::ExactlyOnce,
            Some(q) => return Err(self.err(n, format!("bad topic QoS '{q}' (0, 1 or 2)"))),
        };
        let local_prefix = words.get(3).copied().and_then(empty);
        let remote_prefix = words.get(4).copied().and_then(empty);
        for (which, prefix) in [("local", &local_prefix), ("remote", &remote_prefix)] {
            if let Some(p) = prefix {
                if TopicName::new(p).is_err() {
                    return Err(self.err(
                        n,
                        format!("bad {which} prefix '{p}' (a topic name: no wildcards)"),
                    ));
                }
            }
        }
        let topic = BridgeTopic {
            line: n,
            pattern,
            direction,
            qos,
            local_prefix,
            remote_prefix,
        };
        if topic.pattern.is_none() {
            if topic.local_prefix.is_none() || topic.remote_prefix.is_none() {
                return Err(self.err(
                    n,
                    "a topic pattern of \"\" needs a local and a remote prefix (they are then \
                     the topics)",
                ));
            }
        } else {
            for (which, filter) in [
                ("local", topic.local_filter()),
                ("remote", topic.remote_filter()),
            ] {
                if TopicFilter::new(&filter).is_err() {
                    return Err(self.err(n, format!("bad {which} topic filter '{filter}'")));
                }
            }
        }
        Ok(topic)
    }

    fn port(&self, n: usize, option: &str, word: &str) -> Result<u16, ConfError> {
        word.parse::<u16>()
            .map_err(|_| self.err(n, format!("bad port for '{option}': '{word}' (0 to 65535)")))
    }

    fn string(&self, n: usize, option: &str, rest: &str) -> Result<String, ConfError> {
        if rest.is_empty() {
            return Err(self.err(n, format!("empty '{option}'")));
        }
        Ok(rest.to_string())
    }

    fn boolean(&self, n: usize, option: &str, rest: &str) -> Result<bool, ConfError> {
        match one_value(rest) {
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            _ => Err(self.err(
                n,
                format!("bad value for '{option}': '{rest}' (true or false)"),
            )),
        }
    }

    fn number(
        &self,
        n: usize,
        option: &str,
        rest: &str,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfError> {
        one_value(rest)
            .and_then(|w| w.parse::<u64>().ok())
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                self.err(
                    n,
                    format!("bad value for '{option}': '{rest}' ({min} to {max})"),
                )
            })
    }

    /// A positive number where mosquitto also takes 0 for "no limit": this broker keeps
    /// a bound (its buffers are sized by these), so 0 is refused rather than guessed at.
    fn unlimited(&self, n: usize, option: &str, rest: &str, what: &str) -> Result<u64, ConfError> {
        if one_value(rest) == Some("0") {
            return Err(self.err(
                n,
                format!("'{option} 0' (no limit) is not supported: give {what}"),
            ));
        }
        self.number(n, option, rest, 1, u64::MAX)
    }

    fn close_bridge(&self) -> Result<(), ConfError> {
        let Some(b) = self.bridge.map(|b| &self.config.bridges[b]) else {
            return Ok(());
        };
        let name = &b.name;
        if b.addresses.is_empty() {
            return Err(self.err(b.line, format!("bridge '{name}' has no 'address'")));
        }
        if b.remote_password.is_some() && b.remote_username.is_none() {
            // [MQTT-3.1.2-22]: no password without a user name.
            return Err(self.err(
                b.line,
                format!("bridge '{name}' has 'remote_password' without 'remote_username'"),
            ));
        }
        if b.certfile.is_some() != b.keyfile.is_some() {
            return Err(self.err(
                b.line,
                format!("bridge '{name}' needs both 'bridge_certfile' and 'bridge_keyfile'"),
            ));
        }
        if b.cafile.is_none() && (b.certfile.is_some() || b.insecure) {
            return Err(self.err(
                b.line,
                format!(
                    "bridge '{name}' has TLS options but no 'bridge_cafile' (TLS is on with a CA)"
                ),
            ));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Config, ConfError> {
        self.close_bridge()?;
        let mut listeners: Vec<Listener> = self.default_listener.take().into_iter().collect();
        listeners.append(&mut self.listeners);
        let mut kinds: HashMap<ListenerKind, usize> = HashMap::new();
        let mut tls: Option<&Listener> = None;
        for l in &listeners {
            if l.certfile.is_some() != l.keyfile.is_some() {
                return Err(self.err(l.line, "a TLS listener needs both 'certfile' and 'keyfile'"));
            }
            let kind = l.kind();
            if let Some(first) = kinds.insert(kind, l.line) {
                return Err(self.err(
                    l.line,
                    format!(
                        "a second {} (the first is on line {first}): mqtt-broker has one of each kind",
                        kind.describe()
                    ),
                ));
            }
            if l.certfile.is_some() {
                match tls {
                    Some(t) if (&t.certfile, &t.keyfile) != (&l.certfile, &l.keyfile) => {
                        return Err(self.err(
                            l.line,
                            format!(
                                "certfile/keyfile differ from the listener on line {} \
                                 (mqtt-broker has one --cert/--key for both TLS listeners)",
                                t.line
                            ),
                        ))
                    }
                    _ => tls = Some(l),
                }
            }
        }
        self.config.listeners = listeners;
        Ok(self.config)
    }
}

/// The first word of `rest` ("" if none).
fn one(rest: &str) -> &str {
    rest.split_whitespace().next().unwrap_or("")
}

/// The value when `rest` is exactly one word.
fn one_value(rest: &str) -> Option<&str> {
    let mut words = rest.split_whitespace();
    let first = words.next()?;
    words.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Config {
        parse(text, Path::new("broker.conf")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error's `FILE:LINE: message`.
    fn fail(text: &str) -> String {
        match parse(text, Path::new("broker.conf")) {
            Ok(c) => panic!("parsed: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_says_nothing() {
        assert_eq!(ok(""), Config::default());
        assert_eq!(
            ok("# a comment\n\n   \n\t# indented comment\r\n"),
            Config::default()
        );
    }

    #[test]
    fn global_options() {
        let c = ok("allow_anonymous false\n\
             password_file /etc/mqtt/passwd\n\
             acl_file acl with spaces.txt\n\
             max_keepalive 120\n\
             max_queued_messages 500\n\
             max_connections 2000\n\
             max_packet_size 65536\n\
             max_inflight_messages 10\n\
             persistence true\n\
             persistence_location data/\n");
        assert_eq!(c.allow_anonymous, Some(false));
        assert_eq!(c.password_file, Some(PathBuf::from("/etc/mqtt/passwd")));
        // A string value is the rest of the line, as in mosquitto.
        assert_eq!(c.acl_file, Some(PathBuf::from("acl with spaces.txt")));
        assert_eq!(c.max_keepalive, Some(120));
        assert_eq!(c.max_queued_messages, Some(500));
        assert_eq!(c.max_connections, Some(2000));
        assert_eq!(c.max_packet_size, Some(65536));
        assert_eq!(c.max_inflight_messages, Some(10));
        assert_eq!(c.persistence, Some(true));
        // Relative paths stay relative: they resolve against the working directory.
        assert_eq!(c.persistence_location, Some(PathBuf::from("data/")));
        assert!(c.listeners.is_empty() && c.bridges.is_empty());

        assert_eq!(ok("allow_anonymous true").allow_anonymous, Some(true));
        assert_eq!(ok("persistence false").persistence, Some(false));
        assert_eq!(ok("max_connections -1").max_connections, Some(usize::MAX));
        assert_eq!(ok("max_keepalive 0").max_keepalive, Some(0));
        assert_eq!(
            ok("max_inflight_messages 65535").max_inflight_messages,
            Some(65535)
        );
    }

    #[test]
    fn bad_values_name_the_line() {
        assert_eq!(
            fail("\nallow_anonymous yes"),
            "broker.conf:2: bad value for 'allow_anonymous': 'yes' (true or false)"
        );
        assert_eq!(
            fail("persistence true false"),
            "broker.conf:1: bad value for 'persistence': 'true false' (true or false)"
        );
        assert_eq!(
            fail("max_keepalive 65536"),
            "broker.conf:1: bad value for 'max_keepalive': '65536' (0 to 65535)"
        );
        assert!(fail("max_keepalive -1").starts_with("broker.conf:1: bad value"));
        assert!(fail("max_connections lots").starts_with("broker.conf:1: bad value"));
        assert_eq!(
            fail("password_file"),
            "broker.conf:1: empty 'password_file'"
        );
        assert_eq!(fail("acl_file   "), "broker.conf:1: empty 'acl_file'");
        // mosquitto's "0 is no limit" is refused: the broker sizes buffers by these.
        for option in [
            "max_queued_messages",
            "max_packet_size",
            "max_inflight_messages",
        ] {
            let e = fail(&format!("# x\n{option} 0"));
            assert!(
                e.starts_with(&format!("broker.conf:2: '{option} 0' (no limit)")),
                "{e}"
            );
        }
        assert!(fail("max_inflight_messages 65536").contains("at most 65535"));
        assert!(fail("max_packet_size 268435461").contains("largest MQTT packet"));
        assert_eq!(
            ok("max_packet_size 268435460").max_packet_size,
            Some(268_435_460)
        );
    }

    #[test]
    fn unsupported_options_name_file_line_and_option() {
        assert_eq!(
            fail("allow_anonymous true\n# c\n\nlog_dest stdout\n"),
            "broker.conf:4: unsupported option 'log_dest'"
        );
        assert_eq!(
            fail("include_dir /etc/x"),
            "broker.conf:1: unsupported option 'include_dir'"
        );
        assert_eq!(
            fail("allow_anonymus true"),
            "broker.conf:1: unsupported option 'allow_anonymus'"
        );
        // Listener and bridge options this broker does not have are no better.
        assert_eq!(
            fail("listener 8883\nrequire_certificate true"),
            "broker.conf:2: unsupported option 'require_certificate'"
        );
        assert_eq!(
            fail("connection a\naddress h\nbridge_capath /etc/ssl"),
            "broker.conf:3: unsupported option 'bridge_capath'"
        );
        // Options are case-sensitive, as in mosquitto.
        assert_eq!(
            fail("Port 1883"),
            "broker.conf:1: unsupported option 'Port'"
        );
    }

    #[test]
    fn duplicates_are_errors() {
        assert_eq!(
            fail("password_file a\npassword_file b"),
            "broker.conf:2: duplicate 'password_file' (first on line 1)"
        );
        assert_eq!(
            fail("max_keepalive 10\n\nmax_keepalive 10"),
            "broker.conf:3: duplicate 'max_keepalive' (first on line 1)"
        );
        assert_eq!(
            fail("listener 1883\nprotocol mqtt\nprotocol websockets"),
            "broker.conf:3: duplicate 'protocol' (first on line 2)"
        );
        // One per listener: the same option on two listeners is fine.
        let c = ok("listener 1883\nprotocol mqtt\nlistener 8080\nprotocol websockets");
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(
            fail("connection a\naddress h\naddresses h2"),
            "broker.conf:3: duplicate 'address' (first on line 2)"
        );
    }

    #[test]
    fn listeners() {
        let c = ok("listener 1883\n\
             listener 8080 127.0.0.1\n\
             protocol websockets\n\
             listener 8883 ::1\n\
             certfile server.pem\n\
             keyfile server.key\n\
             listener 8443 example.com\n\
             protocol websockets\n\
             certfile server.pem\n\
             keyfile server.key\n");
        let kinds: Vec<_> = c
            .listeners
            .iter()
            .map(|l| (l.line, l.kind(), l.port))
            .collect();
        assert_eq!(
            kinds,
            [
                (1, ListenerKind::Tcp, 1883),
                (2, ListenerKind::Ws, 8080),
                (4, ListenerKind::Tls, 8883),
                (7, ListenerKind::Wss, 8443),
            ]
        );
        let tcp = c.listener(ListenerKind::Tcp).unwrap();
        assert_eq!(tcp.socket_addr(), Ok("0.0.0.0:1883".parse().unwrap()));
        let ws = c.listener(ListenerKind::Ws).unwrap();
        assert_eq!(ws.socket_addr(), Ok("127.0.0.1:8080".parse().unwrap()));
        let tls = c.listener(ListenerKind::Tls).unwrap();
        assert_eq!(tls.socket_addr(), Ok("[::1]:8883".parse().unwrap()));
        assert_eq!(tls.certfile, Some(PathBuf::from("server.pem")));
        assert_eq!(tls.keyfile, Some(PathBuf::from("server.key")));
        assert_eq!(
            c.listener(ListenerKind::Wss).unwrap().address.as_deref(),
            Some("example.com")
        );
        // Port 0: a free port (this broker prints the one it got).
        let c = ok("listener 0 127.0.0.1");
        assert_eq!(
            c.listeners[0].socket_addr(),
            Ok("127.0.0.1:0".parse().unwrap())
        );
    }

    #[test]
    fn listener_errors() {
        assert_eq!(
            fail("listener 1883\n\nlistener 1884"),
            "broker.conf:3: a second plain MQTT listener (--bind) (the first is on line 1): \
             mqtt-broker has one of each kind"
        );
        assert!(
            fail("listener 8080\nprotocol websockets\nlistener 8081\nprotocol websockets")
                .starts_with("broker.conf:3: a second WebSocket listener (--ws-bind)")
        );
        // The default listener counts: `port` is the old form of a plain listener.
        assert!(fail("port 1883\nlistener 1884").starts_with("broker.conf:2: a second plain"));
        assert_eq!(
            fail("listener 8883\ncertfile a.pem"),
            "broker.conf:1: a TLS listener needs both 'certfile' and 'keyfile'"
        );
        assert!(fail(
            "listener 8883\ncertfile a.pem\nkeyfile a.key\n\
             listener 8443\nprotocol websockets\ncertfile b.pem\nkeyfile a.key"
        )
        .starts_with("broker.conf:4: certfile/keyfile differ from the listener on line 1"));
        assert_eq!(
            fail("listener 99999"),
            "broker.conf:1: bad port for 'listener': '99999' (0 to 65535)"
        );
        assert_eq!(
            fail("listener"),
            "broker.conf:1: bad port for 'listener': '' (0 to 65535)"
        );
        assert_eq!(
            fail("listener 1883 a b"),
            "broker.conf:1: 'listener' takes a port and an optional address"
        );
        assert_eq!(
            fail("listener 0 /run/mqtt.sock"),
            "broker.conf:1: Unix socket listeners are not supported"
        );
        assert_eq!(
            fail("listener 1\nprotocol http_api"),
            "broker.conf:2: bad value for 'protocol': 'http_api' (mqtt or websockets)"
        );
    }

    #[test]
    fn default_listener() {
        let c = ok("port 1884\nbind_address 127.0.0.1");
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].line, 1);
        assert_eq!(
            c.listeners[0].socket_addr(),
            Ok("127.0.0.1:1884".parse().unwrap())
        );
        // `bind_address` alone: port 1883.
        let c = ok("bind_address 10.0.0.1");
        assert_eq!(
            c.listeners[0].socket_addr(),
            Ok("10.0.0.1:1883".parse().unwrap())
        );
        // Listener options before any `listener` are the default listener's (mosquitto).
        let c = ok("protocol websockets\nport 9001\nlistener 1883");
        assert_eq!(c.listeners[0].kind(), ListenerKind::Ws);
        assert_eq!(c.listeners[0].port, 9001);
        assert_eq!(c.listeners[1].kind(), ListenerKind::Tcp);
        assert_eq!(
            fail("port 1\nport 2"),
            "broker.conf:2: duplicate 'port' (first on line 1)"
        );
        assert!(fail("port x").starts_with("broker.conf:1: bad port for 'port'"));
    }

    #[test]
    fn global_options_inside_sections_stay_global() {
        let c = ok("listener 1883\nallow_anonymous true\nconnection b\naddress h\nacl_file acl");
        assert_eq!(c.allow_anonymous, Some(true));
        assert_eq!(c.acl_file, Some(PathBuf::from("acl")));
        assert_eq!(c.bridges.len(), 1);
    }

    fn bridge(text: &str) -> Bridge {
        let mut c = ok(text);
        assert_eq!(c.bridges.len(), 1);
        c.bridges.remove(0)
    }

    #[test]
    fn bridge_defaults_are_mosquittos() {
        let b = bridge("\nconnection cloud\naddress broker.example.com\n");
        assert_eq!(
            b,
            Bridge {
                name: "cloud".into(),
                line: 2,
                addresses: vec![BridgeAddress {
                    host: "broker.example.com".into(),
                    port: 1883
                }],
                topics: vec![],
                remote_username: None,
                remote_password: None,
                remote_clientid: None,
                protocol_version: BridgeProtocol::V311,
                clean_session: false,
                try_private: true,
                keepalive_interval: 60,
                notifications: true,
                cafile: None,
                certfile: None,
                keyfile: None,
                insecure: false,
            }
        );
    }

    #[test]
    fn bridge_options() {
        let b = bridge(
            "connection site\n\
             addresses 10.0.0.1:1884 backup.example [::1]:8883 [fe80::1]\n\
             remote_username bridge user\n\
             remote_password s3cret pass\n\
             remote_clientid site-1\n\
             bridge_protocol_version mqttv50\n\
             cleansession true\n\
             try_private false\n\
             keepalive_interval 30\n\
             notifications false\n\
             bridge_cafile ca.pem\n\
             bridge_certfile client.pem\n\
             bridge_keyfile client.key\n\
             bridge_insecure true\n",
        );
        let addrs: Vec<_> = b
            .addresses
            .iter()
            .map(|a| (a.host.as_str(), a.port))
            .collect();
        assert_eq!(
            addrs,
            [
                ("10.0.0.1", 1884),
                ("backup.example", 1883),
                ("::1", 8883),
                ("fe80::1", 1883)
            ]
        );
        assert_eq!(b.remote_username.as_deref(), Some("bridge user"));
        assert_eq!(b.remote_password.as_deref(), Some("s3cret pass"));
        assert_eq!(b.remote_clientid.as_deref(), Some("site-1"));
        assert_eq!(b.protocol_version, BridgeProtocol::V50);
        assert!(b.clean_session && !b.try_private && !b.notifications && b.insecure);
        assert_eq!(b.keepalive_interval, 30);
        assert_eq!(b.cafile, Some(PathBuf::from("ca.pem")));
        assert_eq!(b.certfile, Some(PathBuf::from("client.pem")));
        assert_eq!(b.keyfile, Some(PathBuf::from("client.key")));
        assert_eq!(
            bridge("connection a\naddress h\nbridge_protocol_version mqttv31").protocol_version,
            BridgeProtocol::V31
        );
    }

    #[test]
    fn two_bridges_each_own_their_options() {
        let c = ok("connection a\naddress h1\ntopic x/#\nconnection b\naddress h2:1\ntopic y in");
        assert_eq!(c.bridges.len(), 2);
        assert_eq!(
            (c.bridges[0].name.as_str(), c.bridges[0].topics.len()),
            ("a", 1)
        );
        assert_eq!(c.bridges[1].addresses[0].port, 1);
        assert_eq!(c.bridges[1].topics[0].direction, Direction::In);
        assert_eq!(
            fail("connection a\naddress h\nconnection a\naddress h"),
            "broker.conf:3: a second bridge named 'a' (first on line 1)"
        );
    }

    #[test]
    fn bridge_errors() {
        assert_eq!(
            fail("address h"),
            "broker.conf:1: 'address' belongs in a bridge section (after 'connection NAME')"
        );
        assert_eq!(
            fail("topic a/#"),
            "broker.conf:1: 'topic' belongs in a bridge section (after 'connection NAME')"
        );
        assert_eq!(
            fail("connection"),
            "broker.conf:1: 'connection' takes one name"
        );
        assert_eq!(
            fail("connection a b"),
            "broker.conf:1: 'connection' takes one name"
        );
        // Checked when the section ends: at the next `connection`, or the end of the file.
        assert_eq!(
            fail("connection a\ntopic #\nconnection b\naddress h"),
            "broker.conf:1: bridge 'a' has no 'address'"
        );
        assert_eq!(
            fail("connection a"),
            "broker.conf:1: bridge 'a' has no 'address'"
        );
        assert!(fail("connection a\naddress h\nremote_password p")
            .contains("'remote_password' without 'remote_username'"));
        assert!(
            fail("connection a\naddress h\nbridge_cafile ca\nbridge_certfile c")
                .contains("needs both 'bridge_certfile' and 'bridge_keyfile'")
        );
        assert!(
            fail("connection a\naddress h\nbridge_insecure true").contains("no 'bridge_cafile'")
        );
        for bad in ["h:", "h:0", "h:x", ":1", "[::1", "[::1]x", "[::1]:99999"] {
            assert_eq!(
                fail(&format!("connection a\naddress {bad}")),
                format!("broker.conf:2: bad bridge address '{bad}' (host or host:port)")
            );
        }
        assert_eq!(
            fail("connection a\naddress"),
            "broker.conf:2: empty 'address'"
        );
        assert!(fail("connection a\naddress h\nbridge_protocol_version 5")
            .starts_with("broker.conf:3: bad value for 'bridge_protocol_version'"));
        assert!(fail("connection a\naddress h\ncleansession 1")
            .starts_with("broker.conf:3: bad value for 'cleansession'"));
        assert!(fail("connection a\naddress h\nkeepalive_interval 70000")
            .starts_with("broker.conf:3: bad value for 'keepalive_interval'"));
    }

    fn topic(line: &str) -> BridgeTopic {
        let mut b = bridge(&format!("connection a\naddress h\n{line}"));
        assert_eq!(b.topics.len(), 1);
        b.topics.remove(0)
    }

    fn topic_err(line: &str) -> String {
        fail(&format!("connection a\naddress h\n{line}"))
    }

    #[test]
    fn topic_line_forms() {
        // `topic PATTERN`: out, QoS 0, no prefixes.
        let t = topic("topic sensors/#");
        assert_eq!(
            t,
            BridgeTopic {
                line: 3,
                pattern: Some("sensors/#".into()),
                direction: Direction::Out,
                qos: QoS::AtMostOnce,
                local_prefix: None,
                remote_prefix: None,
            }
        );
        assert_eq!(
            (t.local_filter().as_str(), t.remote_filter().as_str()),
            ("sensors/#", "sensors/#")
        );
        // `topic PATTERN DIRECTION` (case-insensitive, as mosquitto's strcasecmp).
        assert_eq!(topic("topic a in").direction, Direction::In);
        assert_eq!(topic("topic a BOTH").direction, Direction::Both);
        // `topic PATTERN DIRECTION QOS`
        let t = topic("topic a/+ both 2");
        assert_eq!((t.direction, t.qos), (Direction::Both, QoS::ExactlyOnce));
        assert_eq!(topic("topic a out 1").qos, QoS::AtLeastOnce);
        // `... LOCAL_PREFIX REMOTE_PREFIX`: the prefixes go in front of the pattern.
        let t = topic("topic sensors/# in 1 site1/ cloud/site1/");
        assert_eq!(t.local_filter(), "site1/sensors/#");
        assert_eq!(t.remote_filter(), "cloud/site1/sensors/#");
        // `""` is an empty prefix.
        let t = topic("topic # out 0 \"\" remote/");
        assert_eq!(
            (t.local_prefix, t.remote_prefix.as_deref()),
            (None, Some("remote/"))
        );
        let t = topic("topic # out 0 local/ \"\"");
        assert_eq!(
            (t.local_filter(), t.remote_filter()),
            ("local/#".into(), "#".into())
        );
        // A local prefix alone is allowed (mosquitto reads the remote one as absent).
        let t = topic("topic a both 0 l/");
        assert_eq!(
            (t.local_filter(), t.remote_filter()),
            ("l/a".into(), "a".into())
        );
        // A pattern of `""`: the prefixes are the topics, one mapped to the other.
        let t = topic("topic \"\" in 1 local/temp remote/sensor/7/temp");
        assert_eq!(t.pattern, None);
        assert_eq!(t.local_filter(), "local/temp");
        assert_eq!(t.remote_filter(), "remote/sensor/7/temp");
        // Several topic lines accumulate.
        let b = bridge("connection a\naddress h\ntopic a\ntopic b in\ntopic c both 1");
        let patterns: Vec<_> = b
            .topics
            .iter()
            .map(|t| (t.line, t.pattern.clone().unwrap()))
            .collect();
        assert_eq!(
            patterns,
            [(3, "a".into()), (4, "b".into()), (5, "c".into())]
        );
    }

    #[test]
    fn topic_line_errors() {
        assert!(topic_err("topic").starts_with("broker.conf:3: 'topic' is: topic PATTERN"));
        assert!(topic_err("topic a out 0 l/ r/ extra").starts_with("broker.conf:3: 'topic' is:"));
        assert_eq!(
            topic_err("topic a sideways"),
            "broker.conf:3: bad topic direction 'sideways' (out, in or both)"
        );
        assert_eq!(
            topic_err("topic a in 3"),
            "broker.conf:3: bad topic QoS '3' (0, 1 or 2)"
        );
        assert_eq!(
            topic_err("topic a in x"),
            "broker.conf:3: bad topic QoS 'x' (0, 1 or 2)"
        );
        assert_eq!(
            topic_err("topic a in 0 l/+/ r/"),
            "broker.conf:3: bad local prefix 'l/+/' (a topic name: no wildcards)"
        );
        assert_eq!(
            topic_err("topic a in 0 l/ r/#"),
            "broker.conf:3: bad remote prefix 'r/#' (a topic name: no wildcards)"
        );
        assert_eq!(
            topic_err("topic a/#/b"),
            "broker.conf:3: bad local topic filter 'a/#/b'"
        );
        // A prefix without the separator makes a bad filter in front of a wildcard.
        assert_eq!(
            topic_err("topic # in 0 local r/"),
            "broker.conf:3: bad local topic filter 'local#'"
        );
        for line in [
            "topic \"\"",
            "topic \"\" in 0",
            "topic \"\" in 0 l",
            "topic \"\" in 0 \"\" r",
            "topic \"\" in 0 l \"\"",
        ] {
            assert!(
                topic_err(line).contains("needs a local and a remote prefix"),
                "{line}"
            );
        }
    }
}
