//! A broker whose login check is slow and runs on other threads: the CONNECT waits for it,
//! every other client keeps flowing. `cargo run -p mqtt-broker --example async_auth`.
use std::io::{Read, Write};
use std::{collections::HashMap, net::TcpListener, sync::mpsc, thread, time::Duration};

use mqtt_broker::state::{ConnectRequest, Instant};
use mqtt_broker::{codec::ReasonCode, BrokerEvent::*, RequestKind::Authenticate, *};

struct Login; // Logins wait for the check; publish and subscribe: the permissive defaults.
impl Hooks for Login {
    fn authenticate(&mut self, _: &Context<'_>, _: &ConnectRequest) -> Verdict {
        Verdict::Defer
    }
}

fn main() -> std::io::Result<()> {
    let (listener, (to_core, answers)) = (TcpListener::bind("127.0.0.1:1883")?, mpsc::channel());
    listener.set_nonblocking(true)?;
    let start = std::time::Instant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);
    let mut broker = Broker::with_hooks(BrokerConfig::default(), Login, now());
    let (mut conns, mut buf, mut out) = (HashMap::new(), [0; 4096], vec![0; 1 << 20]);
    loop {
        let t = now();
        if let Ok((stream, _)) = listener.accept() {
            stream.set_read_timeout(Some(Duration::from_micros(100)))?;
            conns.insert(broker.open(t), (stream, bytes::BytesMut::new()));
        }
        // Read what the core wants read: not a connection waiting for its login. (A real
        // adapter tells a timeout from an error; here keep alive ends a broken connection.)
        conns.retain(|&id, (stream, input)| {
            match broker
                .wants_input(id)
                .then(|| stream.read(&mut buf).ok())
                .flatten()
            {
                Some(0) => broker.handle_close(t, id),
                Some(n) => input.extend_from_slice(&buf[..n]),
                None => {}
            }
            broker.handle_input(t, id, input);
            broker.context(id).is_some() // still open
        });
        for (id, ok) in answers.try_iter() {
            let _ = match ok {
                true => broker.accept(t, id),
                false => broker.reject(t, id, ReasonCode::NotAuthorized, Some("wrong password")),
            };
        }
        while let Some(Request { id, kind, .. }) = broker.poll_request() {
            if let Authenticate { username, password } = kind {
                let to_core = to_core.clone();
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(200)); // a password hash, a lookup...
                    let ok = (username.as_deref(), password.as_deref())
                        == (Some("alice"), Some(&b"pw"[..]));
                    to_core.send((id, ok))
                });
            }
        }
        broker.handle_timeout(t);
        while let Some(event) = broker.poll_event() {
            if let Transmit(id) | Close { id, .. } = event {
                while let Ok(Some(n)) = broker.poll_transmit(t, id, &mut out) {
                    conns.get_mut(&id).map(|(s, _)| s.write_all(&out[..n]).ok());
                }
            }
            if let Close { id, .. } = event {
                broker.handle_close(t, id); // its socket is dropped on the next turn
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
}
