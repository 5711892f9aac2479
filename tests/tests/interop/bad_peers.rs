//! Misbehaving peers over raw TCP. Each gets the answer the protocol prescribes (a CONNACK
//! or DISCONNECT with the right reason code, or just a close), and a well-behaved client on
//! the same broker keeps working after every one of them.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::broker::Broker;

const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A packet: (first byte, body).
type Packet = (u8, Vec<u8>);

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT with clean start, keep alive 60 s, protocol level `level` (4 = 3.1.1, 5 = 5.0).
fn connect(level: u8, client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60];
    if level == 5 {
        body.push(0); // no properties
    }
    string(&mut body, client_id);
    packet(0x10, &body)
}

fn subscribe(level: u8, filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    if level == 5 {
        body.push(0);
    }
    string(&mut body, filter);
    body.push(0); // QoS 0
    packet(0x82, &body)
}

fn publish(level: u8, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(broker: &Broker) -> Self {
        let stream = TcpStream::connect_timeout(&broker.tcp, READ_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // A write may fail when the broker already closed: that is for `recv` to report.
        let _ = self.stream.write_all(bytes);
    }

    /// The next packet, or `None` once the broker closed the connection. Panics after
    /// [`READ_TIMEOUT`] without either.
    fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some((p, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                // A socket with a read timeout is not restarted after a signal handler
                // ran (signal(7)), SA_RESTART or not: another test's child process
                // exiting is enough.
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("no packet and no close within {READ_TIMEOUT:?}: {e}"),
            }
        }
    }

    /// Every packet until the close (which must come within [`READ_TIMEOUT`]).
    fn until_closed(&mut self) -> Vec<Packet> {
        let mut v = Vec::new();
        while let Some(p) = self.recv() {
            v.push(p);
        }
        v
    }
}

/// A complete packet at the start of `buf` and its length.
fn parse(buf: &[u8]) -> Option<(Packet, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let start = 2 + i;
            let body = buf.get(start..start + len)?;
            return Some(((buf[0], body.to_vec()), start + len));
        }
    }
    panic!("malformed remaining length from the broker: {buf:02x?}");
}

/// A 3.1.1 client subscribed to its own topic, checked after every bad peer.
struct Good {
    raw: Raw,
    n: u32,
}

impl Good {
    fn new(broker: &Broker) -> Self {
        let mut raw = Raw::connect(broker);
        raw.send(&connect(4, "good"));
        assert_eq!(raw.recv(), Some((0x20, vec![0, 0])), "CONNACK accepted");
        raw.send(&subscribe(4, "good/t"));
        assert_eq!(raw.recv(), Some((0x90, vec![0, 1, 0])), "SUBACK QoS 0");
        Self { raw, n: 0 }
    }

    /// Publishes to itself through the broker and gets it back.
    fn round_trip(&mut self, after: &str) {
        self.n += 1;
        let payload = format!("{after} {}", self.n);
        self.raw.send(&publish(4, "good/t", payload.as_bytes()));
        let mut body = Vec::new();
        string(&mut body, "good/t");
        body.extend_from_slice(payload.as_bytes());
        assert_eq!(
            self.raw.recv(),
            Some((0x30, body)),
            "the good client after: {after}"
        );
    }
}

const CONNACK_ACCEPTED_V5: u8 = 0x00;
const PROTOCOL_ERROR: u8 = 0x82;
const PACKET_TOO_LARGE: u8 = 0x95;

/// A 5.0 CONNACK's reason code.
fn connack_v5_reason(p: &Packet) -> u8 {
    assert_eq!(p.0, 0x20, "expected CONNACK, got {p:02x?}");
    p.1[1]
}

/// A 5.0 DISCONNECT's reason code.
fn disconnect_reason(p: &Packet) -> u8 {
    assert_eq!(p.0, 0xe0, "expected DISCONNECT, got {p:02x?}");
    p.1.first().copied().unwrap_or(0)
}

#[test]
fn bad_peers_do_not_hurt_a_good_client() {
    let mut broker = Broker::start(&["--max-packet-size", "1024", "--connect-timeout", "1"]);
    let mut good = Good::new(&broker);
    good.round_trip("start");

    // Garbage: a reserved packet type; then an HTTP request on the MQTT port.
    for garbage in [&[0xff_u8; 64][..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"] {
        let mut bad = Raw::connect(&broker);
        bad.send(garbage);
        assert_eq!(bad.until_closed(), [], "garbage {garbage:02x?}");
        good.round_trip("garbage");
    }

    // [MQTT-3.1.0-1] the first packet must be CONNECT: a PINGREQ, a PUBLISH.
    for first in [packet(0xc0, &[]), publish(4, "good/t", b"sneaky")] {
        let mut bad = Raw::connect(&broker);
        bad.send(&first);
        assert_eq!(bad.until_closed(), [], "first packet {first:02x?}");
        good.round_trip("first packet not CONNECT");
    }

    // [MQTT-3.1.0-2] a second CONNECT is a protocol violation: 3.1.1 closes, 5.0 says why.
    let mut bad = Raw::connect(&broker);
    bad.send(&connect(4, "twice-4"));
    assert_eq!(bad.recv(), Some((0x20, vec![0, 0])));
    bad.send(&connect(4, "twice-4"));
    assert_eq!(bad.until_closed(), [], "second CONNECT, 3.1.1");
    good.round_trip("second CONNECT 3.1.1");
    let mut bad = Raw::connect(&broker);
    bad.send(&connect(5, "twice-5"));
    let connack = bad.recv().expect("CONNACK");
    assert_eq!(connack_v5_reason(&connack), CONNACK_ACCEPTED_V5);
    bad.send(&connect(5, "twice-5"));
    let rest = bad.until_closed();
    assert_eq!(rest.len(), 1, "{rest:02x?}");
    assert_eq!(disconnect_reason(&rest[0]), PROTOCOL_ERROR);
    good.round_trip("second CONNECT 5.0");

    // An unsupported protocol level: CONNACK 0x01 (3.1.1's code), then close.
    let mut bad = Raw::connect(&broker);
    bad.send(&connect(6, "level-6"));
    assert_eq!(bad.until_closed(), [(0x20, vec![0, 1])]);
    good.round_trip("protocol level 6");

    // [MQTT-3.2.2-15] oversize: a 5.0 PUBLISH over --max-packet-size gets DISCONNECT
    // Packet too large; 3.1.1 has no such packet and is just closed.
    let big = vec![b'x'; 2000];
    let mut bad = Raw::connect(&broker);
    bad.send(&connect(5, "big-5"));
    let connack = bad.recv().expect("CONNACK");
    assert_eq!(connack_v5_reason(&connack), CONNACK_ACCEPTED_V5);
    bad.send(&publish(5, "good/t", &big));
    let rest = bad.until_closed();
    assert_eq!(rest.len(), 1, "{rest:02x?}");
    assert_eq!(disconnect_reason(&rest[0]), PACKET_TOO_LARGE);
    good.round_trip("oversize 5.0");
    let mut bad = Raw::connect(&broker);
    bad.send(&connect(4, "big-4"));
    assert_eq!(bad.recv(), Some((0x20, vec![0, 0])));
    bad.send(&publish(4, "good/t", &big));
    assert_eq!(bad.until_closed(), [], "oversize 3.1.1");
    good.round_trip("oversize 3.1.1");
    // Rejected from the fixed header alone: it announces 2 MB and never sends them.
    let mut bad = Raw::connect(&broker);
    bad.send(&connect(5, "header-5"));
    let connack = bad.recv().expect("CONNACK");
    assert_eq!(connack_v5_reason(&connack), CONNACK_ACCEPTED_V5);
    bad.send(&[0x30, 0x80, 0x80, 0x80, 0x01, 0, 1, b't']);
    let rest = bad.until_closed();
    assert_eq!(rest.len(), 1, "{rest:02x?}");
    assert_eq!(disconnect_reason(&rest[0]), PACKET_TOO_LARGE);
    good.round_trip("oversize announced in the header");

    // A CONNECT that never finishes, and a connection that never sends anything: the
    // connect timeout (1 s here) closes them.
    let started = Instant::now();
    let mut slow = Raw::connect(&broker);
    slow.send(&connect(4, "slow")[..5]);
    let mut silent = Raw::connect(&broker);
    good.round_trip("while a CONNECT is pending");
    assert_eq!(slow.until_closed(), [], "unfinished CONNECT");
    assert_eq!(silent.until_closed(), [], "no CONNECT");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "connect timeout took {took:?}"
    );
    good.round_trip("connect timeout");

    // Many bad peers at once, while the good client works.
    let mut bad: Vec<Raw> = (0..50).map(|_| Raw::connect(&broker)).collect();
    for (i, b) in bad.iter_mut().enumerate() {
        match i % 3 {
            0 => b.send(&[0xff; 8]),
            1 => b.send(&packet(0xc0, &[])),
            _ => b.send(&connect(4, "half")[..4]),
        }
    }
    good.round_trip("50 bad peers at once");
    for b in &mut bad {
        b.until_closed();
    }
    good.round_trip("after 50 bad peers");
    assert!(broker.is_running(), "the broker survived");
}

/// Sends a WebSocket upgrade request for `path` offering the `mqtt` subprotocol.
fn websocket_request(broker: &Broker, path: &str) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&broker.ws, READ_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    s.write_all(request.as_bytes()).unwrap();
    s
}

/// A masked binary frame of a short payload, as a client must send.
fn ws_binary(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x5A, 0x17, 0xC3, 0x08];
    let mut f = vec![0x82, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

/// Opens a WebSocket to `/mqtt`; the stream after the response head, and the head in lower
/// case.
fn websocket_upgrade(broker: &Broker) -> (TcpStream, String) {
    let mut s = websocket_request(broker, "/mqtt");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        // `read_exact` retries a read a signal interrupted.
        s.read_exact(&mut byte).expect("handshake response");
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

/// The WebSocket listener serves `/mqtt` only, answers with the `mqtt` subprotocol, and
/// closes a peer that sends a text frame (MQTT needs binary).
#[test]
fn websocket_handshake_rejects_other_paths() {
    let broker = Broker::start(&[]);
    let mut s = websocket_request(&broker, "/other");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

    let (mut s, head) = websocket_upgrade(&broker);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-protocol: mqtt"), "{head}");
    // [MQTT-6.0.0-1] a text frame ("hi", masked as a client must) closes the connection.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
    s.write_all(&frame).unwrap();
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("not closed after a text frame: {e}"),
    }
    // At most a Close frame came back, no MQTT.
    assert!(rest.is_empty() || rest[0] == 0x88, "{rest:02x?}");
}

/// [MQTT-6.0.0-2] WebSocket frames and MQTT packets need not line up: one binary frame
/// carries a CONNECT and the first bytes of a SUBSCRIBE, the next the rest of it, a PINGREQ
/// and a PUBLISH split again, the last the PUBLISH's tail. The broker answers each packet,
/// and its own frames are reassembled the same way on this side.
#[test]
fn websocket_frames_need_not_align_with_packets() {
    let broker = Broker::start(&[]);
    let (mut s, head) = websocket_upgrade(&broker);
    assert!(head.starts_with("http/1.1 101"), "{head}");

    let mut stream = connect(4, "ws-split");
    let sub = subscribe(4, "split/t");
    let ping = [0xC0u8, 0x00];
    let pub_ = publish(4, "split/t", b"across three frames");
    stream.extend_from_slice(&sub);
    let first = stream.len() - (sub.len() - 3);
    stream.extend_from_slice(&ping);
    stream.extend_from_slice(&pub_);
    let second = stream.len() - 5;
    for part in [&stream[..first], &stream[first..second], &stream[second..]] {
        s.write_all(&ws_binary(part)).unwrap();
        // Each frame on its own, so the broker cannot see them as one read.
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }

    // The broker's frames are unmasked; gather their payloads into one byte stream.
    let mut got = Vec::new();
    let want_len = 4 + 5 + 2 + pub_.len();
    let deadline = Instant::now() + READ_TIMEOUT;
    while got.len() < want_len && Instant::now() < deadline {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).expect("a frame from the broker");
        assert_eq!(h[0], 0x82, "a final binary frame");
        let len = match h[1] {
            n @ 0..=125 => usize::from(n),
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                usize::from(u16::from_be_bytes(l))
            }
            n => panic!("unexpected length byte {n}"),
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        got.extend_from_slice(&payload);
    }
    // Split the byte stream back into packets (all short: one-byte remaining lengths).
    let mut packets = Vec::new();
    let mut rest = &got[..];
    while let [first, len, ..] = *rest {
        let end = 2 + usize::from(len);
        packets.push((first, rest[2..end].to_vec()));
        rest = &rest[end..];
    }
    assert_eq!(packets[0], (0x20, vec![0, 0]), "CONNACK first, accepted");
    // SUBACK and PINGRESP in either order (the broker answers a ping at once and the
    // SUBSCRIBE once it has decided), then the message the subscription lets through.
    let mut middle = packets[1..3].to_vec();
    middle.sort();
    assert_eq!(middle, vec![(0x90, vec![0, 1, 0]), (0xD0, vec![])]);
    assert_eq!(
        packets[3],
        (0x30, pub_[2..].to_vec()),
        "its own message back"
    );
    assert_eq!(packets.len(), 4);
}

/// A subscriber that stops reading is disconnected once its output queue fills
/// (`--write-queue`), instead of the broker buffering for it without bound; the
/// publisher and a good client go on.
#[test]
fn a_client_that_does_not_read_is_disconnected() {
    let broker = Broker::start(&["--write-queue", "16"]);
    let mut good = Good::new(&broker);
    let mut lazy = Raw::connect(&broker);
    lazy.send(&connect(4, "lazy"));
    assert_eq!(lazy.recv(), Some((0x20, vec![0, 0])));
    lazy.send(&subscribe(4, "flood"));
    assert_eq!(lazy.recv(), Some((0x90, vec![0, 1, 0])));
    let mut publisher = Raw::connect(&broker);
    publisher.send(&connect(4, "flooder"));
    assert_eq!(publisher.recv(), Some((0x20, vec![0, 0])));
    let payload = vec![b'x'; 1024];
    let one = publish(4, "flood", &payload);
    // 32 MB: more than the socket buffers on both sides of `lazy` hold.
    let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 256).collect();
    for _ in 0..128 {
        publisher.send(&chunk);
    }
    good.round_trip("flood");
    // `lazy` reads what was buffered before the broker gave up on it, then the close.
    let started = Instant::now();
    let got = lazy.until_closed();
    assert!(
        got.len() < 128 * 256,
        "{} of {} delivered: not disconnected",
        got.len(),
        128 * 256
    );
    assert!(started.elapsed() < READ_TIMEOUT);
    assert!(broker.logged("client not reading; disconnecting"));
    publisher.send(&packet(0xc0, &[]));
    assert_eq!(
        publisher.recv(),
        Some((0xd0, vec![])),
        "the publisher is fine"
    );
    good.round_trip("after the flood");
}

/// A WebSocket subscriber that stops reading is not buffered for by the listener's task:
/// its messages stay in the broker core, whose queue limit pauses the publisher, and the core
/// lets the subscriber go after `--stall-timeout` (reason: slow consumer). The write queue
/// is set far above what the flood needs, so only that push-back can disconnect it.
#[test]
fn a_websocket_client_that_does_not_read_is_pushed_back_on_then_disconnected() {
    let broker = Broker::start(&["--write-queue", "1000000", "--stall-timeout", "1"]);
    let mut good = Good::new(&broker);
    let (mut lazy, head) = websocket_upgrade(&broker);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut hello = connect(4, "ws-lazy");
    hello.extend_from_slice(&subscribe(4, "wsflood"));
    lazy.write_all(&ws_binary(&hello)).unwrap();
    // CONNACK and SUBACK (4 + 5 bytes) in the first frames.
    let mut got = Vec::new();
    while got.len() < 9 {
        let mut h = [0u8; 2];
        lazy.read_exact(&mut h).expect("a frame from the broker");
        let mut payload = vec![0u8; usize::from(h[1] & 0x7f)];
        lazy.read_exact(&mut payload).unwrap();
        got.extend_from_slice(&payload);
    }
    assert_eq!(&got[..9], &[0x20, 2, 0, 0, 0x90, 3, 0, 1, 0]);

    let mut publisher = Raw::connect(&broker);
    publisher.send(&connect(4, "ws-flooder"));
    assert_eq!(publisher.recv(), Some((0x20, vec![0, 0])));
    let payload = vec![b'x'; 1024];
    let one = publish(4, "wsflood", &payload);
    let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 256).collect();
    let sent = 128 * 256;
    let flooding = std::thread::spawn(move || {
        // The broker may stop reading the publisher for a while: that is the push-back.
        for _ in 0..128 {
            publisher.send(&chunk);
        }
        publisher
    });
    // `lazy` reads nothing for a while; the broker must let it go.
    std::thread::sleep(Duration::from_secs(3));
    let mut publisher = flooding.join().expect("the publisher was not refused");
    good.round_trip("wsflood");
    let mut rest = Vec::new();
    lazy.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let _ = lazy.read_to_end(&mut rest);
    assert!(
        rest.len() < sent * one.len() / 2,
        "{} bytes delivered of {}: not disconnected",
        rest.len(),
        sent * one.len()
    );
    assert!(broker.logged("client not reading; disconnecting"));
    publisher.send(&packet(0xc0, &[]));
    assert_eq!(
        publisher.recv(),
        Some((0xd0, vec![])),
        "the publisher is fine"
    );
    good.round_trip("after the flood");
}
