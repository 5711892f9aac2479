//! A client and a server machine wired back to back through reused buffers, for the
//! allocation test and the benchmark: nothing here allocates once the buffers are warm.
#![allow(dead_code, unreachable_pub)]

use bytes::{Bytes, BytesMut};
use mqtt_codec::{ProtocolVersion, QoS};
use mqtt_state::{
    Accept, Client, ClientConfig, Event, Instant, Message, ServerConfig, ServerSession, TopicBuf,
};

pub struct Wire {
    pub client: Client,
    pub server: ServerSession,
    pub now: Instant,
    c2s: BytesMut,
    s2c: BytesMut,
    out: Vec<u8>,
    /// Acknowledged events each side saw.
    pub client_acked: u64,
    pub server_acked: u64,
    /// Messages each side received.
    pub client_received: u64,
    pub server_received: u64,
}

impl Wire {
    /// A connected pair at `version`, keep alive off so that no timer fires.
    pub fn connected(version: ProtocolVersion) -> Self {
        let mut cc = ClientConfig::new(version, "bench-client");
        cc.keep_alive = 0;
        let now = Instant::ZERO;
        let mut w = Self {
            client: Client::new(cc),
            server: ServerSession::new(ServerConfig::default(), now),
            now,
            c2s: BytesMut::with_capacity(1 << 16),
            s2c: BytesMut::with_capacity(1 << 16),
            out: vec![0; 1 << 16],
            client_acked: 0,
            server_acked: 0,
            client_received: 0,
            server_received: 0,
        };
        w.client.connect(now).unwrap();
        w.pump();
        assert!(w.client.is_connected(), "the pair did not connect");
        w
    }

    /// Moves packets both ways until neither side has anything to send.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(n) = self.client.poll_transmit(self.now, &mut self.out).unwrap() {
                self.c2s.extend_from_slice(&self.out[..n]);
                moved = true;
            }
            if !self.c2s.is_empty() {
                self.server.handle_input(self.now, &mut self.c2s).unwrap();
            }
            while let Some(e) = self.server.poll_event() {
                match e {
                    Event::ConnectRequest(_) => {
                        self.server.accept(self.now, Accept::default()).unwrap();
                        // Read what followed the CONNECT.
                        self.server.handle_input(self.now, &mut self.c2s).unwrap();
                    }
                    Event::Message { .. } => self.server_received += 1,
                    Event::Acknowledged { .. } => self.server_acked += 1,
                    _ => {}
                }
                moved = true;
            }
            while let Some(n) = self.server.poll_transmit(self.now, &mut self.out).unwrap() {
                self.s2c.extend_from_slice(&self.out[..n]);
                moved = true;
            }
            if !self.s2c.is_empty() {
                self.client.handle_input(self.now, &mut self.s2c).unwrap();
            }
            while let Some(e) = self.client.poll_event() {
                match e {
                    Event::Message { .. } => self.client_received += 1,
                    Event::Acknowledged { .. } => self.client_acked += 1,
                    _ => {}
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// One publish/ack cycle client to server: PUBLISH, PUBACK (QoS 1) or PUBLISH, PUBREC,
    /// PUBREL, PUBCOMP (QoS 2).
    pub fn client_cycle(&mut self, topic: &'static str, payload: &Bytes, qos: QoS) {
        self.client
            .publish(
                self.now,
                Message::new(TopicBuf::from_static(topic).unwrap(), payload.clone(), qos),
            )
            .unwrap();
        self.pump();
    }

    /// One delivery/ack cycle server to client.
    pub fn server_cycle(&mut self, topic: &'static str, payload: &Bytes, qos: QoS) {
        self.server
            .deliver(
                self.now,
                Message::new(TopicBuf::from_static(topic).unwrap(), payload.clone(), qos),
                &[],
            )
            .unwrap();
        self.pump();
    }
}
