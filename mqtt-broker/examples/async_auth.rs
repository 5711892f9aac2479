//! Logins checked on other threads, others flowing: `cargo run -p mqtt-broker --example async_auth`
use mqtt_broker::state::{ConnectRequest, Instant};
use mqtt_broker::{codec::ReasonCode, BrokerEvent::Close, RequestKind::Authenticate, *};
use std::{collections::HashMap, io::prelude::*, net::TcpListener, sync::mpsc, thread, time};
struct Login; // Logins wait for the check; publish and subscribe: the permissive defaults.
impl Hooks for Login {
    fn authenticate(&mut self, _: &Context<'_>, _: &ConnectRequest) -> Verdict {
        Verdict::Defer
    }
}
fn main() -> std::io::Result<()> {
    let (listener, (to_core, answers)) = (TcpListener::bind("127.0.0.1:1883")?, mpsc::channel());
    listener.set_nonblocking(true)?;
    let start = time::Instant::now();
    let mut broker = Broker::with_hooks(BrokerConfig::default(), Login, Instant::ZERO);
    let (mut conns, mut buf, mut out) = (HashMap::new(), [0; 4096], vec![0; 1 << 20]);
    loop {
        let t = Instant::from_millis(start.elapsed().as_millis() as u64);
        if let Ok((stream, _)) = listener.accept() {
            stream.set_read_timeout(Some(time::Duration::from_millis(1)))?;
            conns.insert(broker.open(t), (stream, bytes::BytesMut::new()));
        }
        conns.retain(|&id, (stream, input)| {
            match broker.wants_input(id).then(|| stream.read(&mut buf)) {
                Some(Ok(0)) => broker.handle_close(t, id),
                Some(Ok(n)) => input.extend_from_slice(&buf[..n]),
                _ => {}
            }
            broker.handle_input(t, id, input);
            broker.context(id).is_some() // still open
        });
        while let Some(Request { id, kind, .. }) = broker.poll_request() {
            let (Authenticate { username, password }, to_core) = (kind, to_core.clone()) else {
                continue;
            };
            thread::spawn(move || {
                thread::sleep(time::Duration::from_millis(200)); // a password hash, a lookup...
                let verdict = match (username.as_deref(), password.as_deref()) {
                    (Some("alice"), Some(b"pw")) => Verdict::Allow,
                    _ => Verdict::Deny(ReasonCode::BadUserNameOrPassword),
                };
                to_core.send((id, verdict))
            });
        }
        for (id, verdict) in answers.try_iter() {
            let _ = broker.answer(t, id, verdict); // Err: it timed out, or the client left
        }
        broker.handle_timeout(t);
        while let Some(event) = broker.poll_event() {
            let id = event.connection();
            while let Ok(Some(n)) = broker.poll_transmit(t, id, &mut out) {
                conns.get_mut(&id).map(|(s, _)| s.write_all(&out[..n]));
            }
            if let Close { .. } = event {
                broker.handle_close(t, id); // its socket is dropped on the next turn
            }
        }
    }
}
