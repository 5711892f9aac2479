//! A whole MQTT broker on mqtt-tokio's server runner: TCP and WebSocket, every connection a
//! tokio task, logins checked asynchronously.
//!
//! ```text
//! cargo run -p mqtt-tokio --example broker -- 127.0.0.1:1883 127.0.0.1:8080
//! mosquitto_sub -p 1883 -t 'demo/#' -u alice -P secret &
//! mosquitto_pub -p 1883 -t demo/1 -m hi -u alice -P secret
//! ```
//!
//! Prints `listening on tcp ADDR` (and `ws`) once bound; a client without a user name is
//! let in, one with a wrong password is not.
use mqtt_tokio::broker::{BrokerConfig, Context, Hooks, RequestKind, Verdict};
use mqtt_tokio::server::{Answer, Server, Transport};
use mqtt_tokio::{mqtt_state::ConnectRequest, ReasonCode};

/// Anonymous clients are let in at once; a user name sends the login to `decide`.
struct Policy;

impl Hooks for Policy {
    fn authenticate(&mut self, _: &Context<'_>, request: &ConnectRequest) -> Verdict {
        match request.username {
            Some(_) => Verdict::Defer,
            None => Verdict::Allow,
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let tcp = args.next().unwrap_or_else(|| "127.0.0.1:1883".into());
    let ws = args.next();
    let mut server = Server::new(BrokerConfig::default(), Policy);
    println!(
        "listening on tcp {}",
        server.bind(tcp, Transport::Tcp).await?
    );
    if let Some(ws) = ws {
        println!("listening on ws {}", server.bind(ws, Transport::Ws).await?);
    }
    server.decide(|decision| async move {
        let RequestKind::Authenticate { username, password } = decision.request.kind else {
            return Answer::Deny(ReasonCode::NotAuthorized);
        };
        // A password hash or a directory lookup would go here, off the core's task.
        match (username.as_deref(), password.as_deref()) {
            (Some("alice"), Some(b"secret")) => Answer::Allow,
            _ => Answer::Deny(ReasonCode::BadUserNameOrPassword),
        }
    });
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
