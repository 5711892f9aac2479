//! The corpus shared by `benches/codec.rs` and `benches/allocs.rs`, the floor, and the peers'
//! entry points.
//!
//! Every byte string here is produced by our encoder, deterministically: the mixed streams
//! use a seeded xorshift, not a random source. The same bytes go to every decoder.

#![allow(dead_code)]

use bytes::BytesMut;
use mqtt_codec::{
    decode, ConnAck, Connect, ConnectProperties, DecodeOptions, List, Packet, PacketId,
    ProtocolVersion, PubAck, Publish, PublishProperties, QoS, QosPid, ReasonCode, RetainHandling,
    Status, SubAck, Subscribe, SubscribeProperties, Subscription, SubscriptionId,
    SubscriptionOptions, Topic, UnsubAck, Unsubscribe, UserProperties, Will, WillProperties,
};

pub(crate) use rumqttc::mqttbytes::v4::Packet as R4;
pub(crate) use rumqttc::v5::mqttbytes::v5::Packet as R5;

/// The largest packet any decoder is told to accept (the 64 KiB PUBLISH fits).
pub(crate) const MAX: usize = 1 << 20;

pub(crate) const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
pub(crate) const V5: ProtocolVersion = ProtocolVersion::V5;

pub(crate) fn opts(v: ProtocolVersion) -> DecodeOptions {
    DecodeOptions::new(v).max_packet_size(MAX as u32)
}

/// One packet of the corpus, encoded at both levels.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) v4: Vec<u8>,
    pub(crate) v5: Vec<u8>,
}

pub(crate) struct Corpus {
    pub(crate) cases: Vec<Case>,
    pub(crate) stream_v4: Vec<u8>,
    pub(crate) stream_v5: Vec<u8>,
}

/// Packets in each mixed stream.
pub(crate) const STREAM_PACKETS: usize = 1000;

const TOPICS: [&str; 8] = [
    "sensors/building-7/floor-3/room-12/temperature",
    "devices/3f2a9c/telemetry",
    "home/livingroom/lights/state",
    "factory/line-4/press-2/vibration/x",
    "fleet/truck-0042/gps",
    "alerts/critical",
    "metrics/host-17/cpu/load1",
    "v1/tenants/acme/events/order-created",
];

const FILTERS: [&str; 10] = [
    "sensors/+/floor-3/#",
    "devices/+/telemetry",
    "home/livingroom/#",
    "factory/line-4/+/vibration/+",
    "fleet/+/gps",
    "alerts/#",
    "metrics/host-17/cpu/+",
    "v1/tenants/acme/events/#",
    "$SYS/broker/clients/connected",
    "sport/tennis/player1",
];

fn payload(len: usize) -> Vec<u8> {
    // JSON-looking ASCII, as telemetry usually is.
    b"{\"t\":21.5,\"h\":40,\"ok\":true}"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

fn enc(p: &Packet<'_>, v: ProtocolVersion) -> Vec<u8> {
    p.encode_to_vec(v).expect("corpus packet encodes")
}

const USER: [(&str, &str); 1] = [("trace-id", "0af7651916cd43dd")];

fn publish_props() -> PublishProperties<'static> {
    PublishProperties {
        message_expiry_interval: Some(60),
        content_type: Some("application/json"),
        user_properties: UserProperties::new(&USER),
        ..Default::default()
    }
}

fn leak<T>(v: Vec<T>) -> &'static [T] {
    Box::leak(v.into_boxed_slice())
}

/// A corpus packet as an application builds it (lists and properties from slices), for
/// our encoder; `corpus()` holds its encoding.
pub(crate) fn packet(name: &str, v: ProtocolVersion) -> Packet<'static> {
    match name {
        "connect" => connect(v),
        "publish_16" => publish(v, 16),
        "publish_1k" => publish(v, 1024),
        "publish_64k" => publish(v, 64 * 1024),
        "subscribe_10" => subscribe(v),
        "puback" => puback(v),
        "suback_10" => suback(v),
        _ => unreachable!("{name}"),
    }
}

pub(crate) const CASES: [&str; 7] = [
    "connect",
    "publish_16",
    "publish_1k",
    "publish_64k",
    "subscribe_10",
    "puback",
    "suback_10",
];

fn connect(v: ProtocolVersion) -> Packet<'static> {
    static CONNECT_USER: [(&str, &str); 1] = [("client", "bench")];
    let mut c = Connect::new(v, "bench-client-0001");
    c.keep_alive = 30;
    c.username = Some("bench-user");
    c.password = Some(b"s3cr3t-passw0rd");
    let mut will = Will::new("clients/bench-client-0001/status", b"offline");
    will.qos = QoS::AtLeastOnce;
    will.retain = true;
    if v.is_v5() {
        c.properties = ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: core::num::NonZeroU16::new(100),
            maximum_packet_size: core::num::NonZeroU32::new(MAX as u32),
            topic_alias_maximum: Some(16),
            user_properties: UserProperties::new(&CONNECT_USER),
            ..Default::default()
        };
        will.properties = WillProperties {
            will_delay_interval: Some(10),
            content_type: Some("text/plain"),
            ..Default::default()
        };
    }
    c.will = Some(will);
    Packet::Connect(c)
}

fn publish(v: ProtocolVersion, len: usize) -> Packet<'static> {
    let mut p = Publish::new(
        Topic::new(TOPICS[0]).unwrap(),
        leak(payload(len)),
        QosPid::AtLeastOnce(pid(1)),
    );
    if v.is_v5() {
        p.properties = publish_props();
    }
    Packet::Publish(p)
}

fn subscribe(v: ProtocolVersion) -> Packet<'static> {
    let subs: Vec<Subscription<'_>> = FILTERS
        .iter()
        .enumerate()
        .map(|(i, &filter)| {
            let mut options = SubscriptionOptions::qos(if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            });
            if v.is_v5() {
                options.no_local = i % 3 == 0;
                options.retain_as_published = i % 4 == 0;
                options.retain_handling = RetainHandling::SendIfNew;
            }
            Subscription { filter, options }
        })
        .collect();
    let mut s = Subscribe::new(pid(7), List::new(leak(subs)));
    if v.is_v5() {
        s.properties = SubscribeProperties {
            subscription_identifier: SubscriptionId::new(42),
            ..Default::default()
        };
    }
    Packet::Subscribe(s)
}

fn puback(v: ProtocolVersion) -> Packet<'static> {
    let mut a = PubAck::new(pid(1));
    if v.is_v5() {
        // The 5.0 form with a reason code and a property; the short form is in the stream.
        a.reason_code = ReasonCode::NoMatchingSubscribers;
        a.properties.reason_string = Some("no matching subscribers");
    }
    Packet::PubAck(a)
}

fn suback(_v: ProtocolVersion) -> Packet<'static> {
    static CODES: [ReasonCode; 10] = [
        ReasonCode::GrantedQoS1,
        ReasonCode::Success,
        ReasonCode::GrantedQoS1,
        ReasonCode::Success,
        ReasonCode::GrantedQoS2,
        ReasonCode::UnspecifiedError,
        ReasonCode::GrantedQoS1,
        ReasonCode::Success,
        ReasonCode::GrantedQoS1,
        ReasonCode::Success,
    ];
    Packet::SubAck(SubAck::new(pid(7), List::new(&CODES)))
}

/// xorshift64, seeded: the streams are the same on every run and machine.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

/// 1,000 packets: ~70 % PUBLISH with 16 B to 1 KiB payloads at QoS 0/1/2, ~22 % acks,
/// the rest PINGREQ/PINGRESP, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK and CONNACK.
/// In 5.0 two PUBLISH in three carry properties and one ack in eight a reason code.
fn stream(v: ProtocolVersion) -> Vec<u8> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let bodies: Vec<Vec<u8>> = (0..8).map(|i| payload(1024 + i)).collect();
    let mut out = Vec::new();
    let mut next_pid = 0u16;
    let mut new_pid = || {
        next_pid = next_pid % 65_535 + 1;
        pid(next_pid)
    };
    for _ in 0..STREAM_PACKETS {
        let r = rng.below(100);
        let bytes = match r {
            0..=69 => {
                let len = 16 + rng.below(1009);
                let body = &bodies[rng.below(8)][..len];
                let qos_pid = match rng.below(3) {
                    0 => QosPid::AtMostOnce,
                    1 => QosPid::AtLeastOnce(new_pid()),
                    _ => QosPid::ExactlyOnce(new_pid()),
                };
                let mut p = Publish::new(Topic::new(TOPICS[rng.below(8)]).unwrap(), body, qos_pid);
                p.retain = rng.below(10) == 0;
                if v.is_v5() {
                    match rng.below(3) {
                        0 => {}
                        1 => p.properties.message_expiry_interval = Some(300),
                        _ => p.properties = publish_props(),
                    }
                }
                enc(&Packet::Publish(p), v)
            }
            70..=91 => {
                let mut a = PubAck::new(new_pid());
                let kind = rng.below(4);
                if v.is_v5() && rng.below(8) == 0 {
                    a.reason_code = if kind < 2 {
                        ReasonCode::NoMatchingSubscribers
                    } else {
                        ReasonCode::PacketIdentifierNotFound
                    };
                }
                let p = match kind {
                    0 => Packet::PubAck(a),
                    1 => Packet::PubRec(a),
                    2 => Packet::PubRel(a),
                    _ => Packet::PubComp(a),
                };
                enc(&p, v)
            }
            92..=94 => enc(
                if r == 92 {
                    &Packet::PingReq
                } else {
                    &Packet::PingResp
                },
                v,
            ),
            95..=96 => {
                let n = 1 + rng.below(3);
                let start = rng.below(8);
                let subs: Vec<Subscription<'_>> = (0..n)
                    .map(|i| Subscription {
                        filter: FILTERS[start + i],
                        options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                    })
                    .collect();
                enc(
                    &Packet::Subscribe(Subscribe::new(new_pid(), List::new(&subs))),
                    v,
                )
            }
            97 => {
                let codes = [ReasonCode::GrantedQoS1, ReasonCode::Success];
                enc(
                    &Packet::SubAck(SubAck::new(new_pid(), List::new(&codes))),
                    v,
                )
            }
            98 => {
                if rng.below(2) == 0 {
                    let filters = [FILTERS[rng.below(10)]];
                    enc(
                        &Packet::Unsubscribe(Unsubscribe::new(new_pid(), List::new(&filters))),
                        v,
                    )
                } else {
                    let codes: &[ReasonCode] = if v.is_v5() {
                        &[ReasonCode::Success]
                    } else {
                        &[]
                    };
                    enc(
                        &Packet::UnsubAck(UnsubAck::new(new_pid(), List::new(codes))),
                        v,
                    )
                }
            }
            _ => enc(
                &Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)),
                v,
            ),
        };
        out.extend_from_slice(&bytes);
    }
    out
}

pub(crate) fn corpus() -> Corpus {
    let c = Corpus {
        cases: CASES
            .iter()
            .map(|&name| Case {
                name,
                v4: enc(&packet(name, V4), V4),
                v5: enc(&packet(name, V5), V5),
            })
            .collect(),
        stream_v4: stream(V4),
        stream_v5: stream(V5),
    };
    sanity_check(&c);
    c
}

/// Every decoder reads every case and the whole streams; a bench of a failing decoder would
/// time an early error.
fn sanity_check(c: &Corpus) {
    for case in &c.cases {
        for (v, bytes) in [(V4, &case.v4), (V5, &case.v5)] {
            match decode(bytes, &opts(v)) {
                Ok(Status::Complete { consumed, .. }) => {
                    assert_eq!(consumed, bytes.len(), "{}", case.name)
                }
                other => panic!("ours {} {v:?}: {other:?}", case.name),
            }
            assert_eq!(floor(bytes), Ok(1), "floor {}", case.name);
        }
        rumqttc_v4(&mut shared(&case.v4))
            .unwrap_or_else(|e| panic!("rumqttc {}: {e:?}", case.name));
        rumqttc_v5(&mut shared(&case.v5))
            .unwrap_or_else(|e| panic!("rumqttc v5 {}: {e:?}", case.name));
        assert!(
            matches!(mqttrs::decode_slice(&case.v4), Ok(Some(_))),
            "mqttrs {}",
            case.name
        );
    }
    for (v, s) in [(V4, &c.stream_v4), (V5, &c.stream_v5)] {
        assert_eq!(
            ours_stream(s, &opts(v)),
            STREAM_PACKETS,
            "ours stream {v:?}"
        );
        assert_eq!(floor(s), Ok(STREAM_PACKETS), "floor stream {v:?}");
    }
    assert_eq!(rumqttc_v4_stream(&mut shared(&c.stream_v4)), STREAM_PACKETS);
    assert_eq!(rumqttc_v5_stream(&mut shared(&c.stream_v5)), STREAM_PACKETS);
    assert_eq!(
        mqttrs_stream(&c.stream_v4, &frame_lengths(&c.stream_v4)),
        STREAM_PACKETS
    );
}

/// The floor: split frames (fixed header + Remaining Length) and check each PUBLISH topic is
/// UTF-8 without `+`, `#` or U+0000. Nothing else: the least any decoder must do. Written
/// plainly, as a decoder would be; returns the number of frames.
#[inline]
pub(crate) fn floor(mut buf: &[u8]) -> Result<usize, ()> {
    let mut frames = 0;
    while let Some(&first) = buf.first() {
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let b = *buf.get(i).ok_or(())?;
            len |= usize::from(b & 0x7F) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if i == 5 {
                return Err(());
            }
        }
        let frame = buf.get(i..i + len).ok_or(())?;
        if first >> 4 == 3 {
            let n = usize::from(u16::from_be_bytes([
                *frame.first().ok_or(())?,
                *frame.get(1).ok_or(())?,
            ]));
            let topic = core::str::from_utf8(frame.get(2..2 + n).ok_or(())?).map_err(drop)?;
            if has_forbidden(topic.as_bytes()) {
                return Err(());
            }
            core::hint::black_box(topic);
        }
        buf = &buf[i + len..];
        frames += 1;
    }
    Ok(frames)
}

/// Whether `b` holds `+`, `#` or NUL. Not a byte loop with an early exit (`any`), which is
/// several times slower on a 40-byte topic: an OR-reduction over 32-byte blocks, which LLVM
/// vectorises, so the floor is a true lower bound for the topic check.
#[inline]
fn has_forbidden(b: &[u8]) -> bool {
    let bad = |acc: u8, &x: &u8| acc | u8::from(x == b'+') | u8::from(x == b'#') | u8::from(x == 0);
    let mut blocks = b.chunks_exact(32);
    for block in &mut blocks {
        if block.iter().fold(0, bad) != 0 {
            return true;
        }
    }
    blocks.remainder().iter().fold(0, bad) != 0
}

/// Ours over a whole buffer, packet after packet; returns the count.
#[inline]
pub(crate) fn ours_stream(mut buf: &[u8], opts: &DecodeOptions) -> usize {
    let mut n = 0;
    loop {
        // Every decoder's result is looked at where it was returned (`black_box(&r)`), not
        // moved out first: the harness should not time a copy of the packet.
        let r = decode(buf, opts);
        core::hint::black_box(&r);
        let Ok(Status::Complete { consumed, .. }) = r else {
            break;
        };
        buf = &buf[consumed..];
        n += 1;
    }
    n
}

/// A `BytesMut` holding `bytes`, already in the shared (reference-counted) state a
/// connection's read buffer is in after its first `split_to`: rumqttc then frames without
/// allocating, as it does in steady state. Made outside the timed region.
pub(crate) fn shared(bytes: &[u8]) -> BytesMut {
    let mut b = BytesMut::from(bytes);
    drop(b.split_to(0));
    b
}

pub(crate) fn rumqttc_v4(b: &mut BytesMut) -> Result<R4, rumqttc::mqttbytes::Error> {
    R4::read(b, MAX)
}

pub(crate) fn rumqttc_v5(b: &mut BytesMut) -> Result<R5, rumqttc::v5::mqttbytes::Error> {
    R5::read(b, Some(MAX as u32))
}

pub(crate) fn rumqttc_v4_stream(b: &mut BytesMut) -> usize {
    let mut n = 0;
    loop {
        let r = R4::read(b, MAX);
        core::hint::black_box(&r);
        if r.is_err() {
            break;
        }
        n += 1;
    }
    n
}

pub(crate) fn rumqttc_v5_stream(b: &mut BytesMut) -> usize {
    let mut n = 0;
    loop {
        let r = R5::read(b, Some(MAX as u32));
        core::hint::black_box(&r);
        if r.is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// mqttrs does not say how many bytes a packet used; the frame lengths are worked out once,
/// outside the timed region, so mqttrs is not charged a second header parse.
pub(crate) fn frame_lengths(mut buf: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    while let Ok(Status::Complete { packet, .. }) = mqtt_codec::decode_fixed_header(buf, &opts(V4))
    {
        let n = packet.packet_len();
        out.push(n);
        buf = &buf[n..];
    }
    out
}

#[inline]
pub(crate) fn mqttrs_stream(mut buf: &[u8], lengths: &[usize]) -> usize {
    let mut n = 0;
    for &len in lengths {
        let r = mqttrs::decode_slice(buf);
        core::hint::black_box(&r);
        if !matches!(r, Ok(Some(_))) {
            break;
        }
        buf = &buf[len..];
        n += 1;
    }
    n
}

/// The encoding floor for PUBLISH: the fixed header, then plain copies of the topic, the
/// packet identifier, the (pre-encoded) property block and the payload.
#[inline]
pub(crate) fn copy_publish(
    topic: &[u8],
    pid: u16,
    props: &[u8],
    payload: &[u8],
    out: &mut [u8],
) -> usize {
    let remaining = 2 + topic.len() + 2 + props.len() + payload.len();
    out[0] = 0x32;
    let mut i = 1;
    let mut v = remaining;
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v != 0 {
            b |= 0x80;
        }
        out[i] = b;
        i += 1;
        if v == 0 {
            break;
        }
    }
    out[i..i + 2].copy_from_slice(&(topic.len() as u16).to_be_bytes());
    i += 2;
    out[i..i + topic.len()].copy_from_slice(topic);
    i += topic.len();
    out[i..i + 2].copy_from_slice(&pid.to_be_bytes());
    i += 2;
    out[i..i + props.len()].copy_from_slice(props);
    i += props.len();
    out[i..i + payload.len()].copy_from_slice(payload);
    i + payload.len()
}
