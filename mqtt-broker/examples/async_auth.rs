//! A custom broker whose password check is slow and runs off the core's thread: the CONNECT
//! is deferred, answered when the check is done; every other client keeps flowing meanwhile.
//! `cargo run -p mqtt-broker --example async_auth`, then log in as alice / secret on :1883.
use std::{collections::HashMap, io::Read, io::Write, net::*, sync::mpsc, thread, time};

use bytes::BytesMut;
use mqtt_broker::codec::ReasonCode;
use mqtt_broker::state::{ConnectRequest, Instant};
use mqtt_broker::{Broker, BrokerConfig, BrokerEvent as Ev, ConnInfo, Context, Hooks};
use mqtt_broker::{ConnectionId as Id, RequestId, RequestKind, Verdict};

struct Login; // Publish and subscribe: the permissive defaults. Log in: later.
impl Hooks for Login {
    fn authenticate(&mut self, _: &Context<'_>, _: &ConnectRequest) -> Verdict {
        Verdict::Defer
    }
}
enum Msg {
    Open(TcpStream),
    Input(Id, Vec<u8>),
    Closed(Id),
    Checked(RequestId, bool),
}

fn main() -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel();
    let (listener, accept_tx) = (TcpListener::bind("127.0.0.1:1883")?, tx.clone());
    thread::spawn(move || {
        listener
            .incoming()
            .flatten()
            .for_each(|s| drop(accept_tx.send(Msg::Open(s))))
    });
    let start = time::Instant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);
    let mut broker = Broker::with_hooks(BrokerConfig::default(), Login, now());
    let (mut conns, mut out) = (
        HashMap::<Id, (TcpStream, BytesMut)>::new(),
        vec![0; 1 << 20],
    );
    loop {
        let wait = broker
            .poll_timeout()
            .map_or(1000, |t| t.as_millis().saturating_sub(now().as_millis()));
        let (msg, t) = (rx.recv_timeout(time::Duration::from_millis(wait)), now());
        match msg {
            Ok(Msg::Open(s)) => {
                let (id, mut r, tx) = (
                    broker.open_with(
                        t,
                        ConnInfo {
                            peer: s.peer_addr().ok(),
                            ..Default::default()
                        },
                    ),
                    s.try_clone()?,
                    tx.clone(),
                );
                thread::spawn(move || {
                    let mut b = [0; 4096];
                    while let Ok(n @ 1..) = r.read(&mut b) {
                        let _ = tx.send(Msg::Input(id, b[..n].to_vec()));
                    }
                    let _ = tx.send(Msg::Closed(id));
                });
                conns.insert(id, (s, BytesMut::new()));
            }
            Ok(Msg::Input(id, bytes)) => {
                if let Some((_, buf)) = conns.get_mut(&id) {
                    buf.extend_from_slice(&bytes);
                    broker.handle_input(t, id, buf)
                }
            }
            Ok(Msg::Closed(id)) => {
                if conns.remove(&id).is_some() {
                    broker.handle_close(t, id)
                }
            }
            Ok(Msg::Checked(req, true)) => drop(broker.accept(t, req)), // Err: it closed meanwhile
            Ok(Msg::Checked(req, false)) => {
                drop(broker.reject(t, req, ReasonCode::BadUserNameOrPassword, Some("try again")))
            }
            Err(_) => broker.handle_timeout(t),
        }
        while let Some(request) = broker.poll_request() {
            let (RequestKind::Authenticate { username, password }, tx) = (request.kind, tx.clone())
            else {
                continue;
            };
            thread::spawn(move || {
                thread::sleep(time::Duration::from_millis(200)); // a slow hash, a directory lookup...
                let ok = username.as_deref() == Some("alice")
                    && password.as_deref() == Some(&b"secret"[..]);
                let _ = tx.send(Msg::Checked(request.id, ok));
            });
        }
        while let Some(event) = broker.poll_event() {
            match event {
                Ev::Transmit(id) | Ev::Close { id, .. } => {
                    let Some((s, _)) = conns.get_mut(&id) else {
                        continue;
                    };
                    while let Ok(Some(n)) = broker.poll_transmit(t, id, &mut out) {
                        let _ = s.write_all(&out[..n]);
                    }
                    if let Ev::Close { .. } = event {
                        let _ = s.shutdown(Shutdown::Both);
                        conns.remove(&id);
                        broker.handle_close(t, id);
                    }
                }
                // Pause is not acted on here: the readers keep filling the buffer, which the core leaves alone until Resume.
                Ev::Resume(id) => {
                    if let Some((_, buf)) = conns.get_mut(&id) {
                        broker.handle_input(t, id, buf)
                    }
                }
                _ => {}
            }
        }
    }
}
