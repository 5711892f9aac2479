//! Authentication and access control for the example broker: a password file and an ACL
//! file in mosquitto's formats, behind [`mqtt_broker::Hooks`].
//!
//! # Password file
//!
//! One `username:HASH` per line; blank lines and lines starting with `#` are skipped.
//! `HASH` is a password hash, never the password itself:
//!
//! - a PHC string from Argon2 (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`; also
//!   `$argon2i$`/`$argon2d$`), as printed by `mqtt-broker hash-password USER`;
//! - mosquitto's own `$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512, 64-byte output,
//!   standard base64), as written by `mosquitto_passwd`, so a mosquitto password file can
//!   be used as is.
//!
//! Anything else (plain text, mosquitto's older `$6$` SHA-512) is refused when the file is
//! loaded.
//!
//! # ACL file
//!
//! mosquitto's `acl_file` format:
//!
//! ```text
//! # anonymous clients (lines before any `user`)
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic write sensors/+/temp
//! # everyone: %u is the user name, %c the client id
//! pattern readwrite clients/%c/#
//! pattern read users/%u/#
//! ```
//!
//! `topic [read|write|readwrite|deny] FILTER` (readwrite when omitted) applies to the user
//! of the `user` section it is in, or to anonymous clients before the first `user` line.
//! `pattern [...] FILTER` applies to every client after substituting `%u` and `%c`; a
//! pattern with `%u` never applies to anonymous clients, and a user name or client id
//! holding `+` or `#` never matches a pattern that substitutes it. A matching `deny` rule
//! wins over any allow. With an ACL file, what no rule allows is refused.
//!
//! A PUBLISH to topic `T` is allowed when a write rule's filter matches `T`. A SUBSCRIBE to
//! filter `F` is allowed when a read rule's filter *covers* `F`: it matches every topic
//! `F` can match (see [`covers`]). A shared subscription `$share/GROUP/F` is checked as `F`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use base64::Engine as _;
use mqtt_broker::{Context, Hooks, Verdict};
use mqtt_codec::{QoS, ReasonCode};
use mqtt_state::ConnectRequest;
use mqtt_topic::{TopicFilter, TopicName};

/// An error in a password or ACL file, with its line number (1-based).
#[derive(Debug)]
pub(crate) struct ParseError {
    line: usize,
    message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// Reads `path` and parses it with `parse`, naming the file in the error.
pub(crate) fn load<T>(path: &Path, parse: fn(&str) -> Result<T, ParseError>) -> std::io::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    parse(&text).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// A stored password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StoredHash {
    /// An Argon2 PHC string.
    Argon2(String),
    /// mosquitto's `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl StoredHash {
    fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("$argon2id$") || s.starts_with("$argon2i$") || s.starts_with("$argon2d$") {
            argon2::password_hash::phc::PasswordHash::new(s)
                .map_err(|e| format!("bad Argon2 PHC string: {e}"))?;
            return Ok(Self::Argon2(s.to_string()));
        }
        if let Some(rest) = s.strip_prefix("$7$") {
            let b64 = base64::engine::general_purpose::STANDARD;
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a $7$ hash is $7$ITERATIONS$SALT$HASH".into());
            };
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or("bad $7$ iteration count")?;
            let salt = b64.decode(salt).map_err(|e| format!("bad $7$ salt: {e}"))?;
            let hash = b64.decode(hash).map_err(|e| format!("bad $7$ hash: {e}"))?;
            if salt.is_empty() || hash.len() != 64 {
                return Err("a $7$ hash has a salt and a 64-byte PBKDF2-SHA512 output".into());
            }
            return Ok(Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            });
        }
        Err(
            "not a supported password hash (Argon2 PHC `$argon2id$...` or mosquitto \
             `$7$...`); plain-text passwords are not accepted"
                .into(),
        )
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Argon2(phc) => Argon2::default()
                .verify_password(password, phc.as_str())
                .is_ok(),
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, *iterations, &mut out);
                // Constant-time comparison: no early exit on the first differing byte.
                out.iter().zip(hash).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
        }
    }
}

/// Hashes `password` for a password file: an Argon2id PHC string with a random salt.
pub(crate) fn hash_password(password: &[u8]) -> Result<String, String> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A parsed password file: user name to hash.
#[derive(Debug, Clone, Default)]
pub(crate) struct Passwords(HashMap<String, StoredHash>);

impl Passwords {
    /// Parses a password file (see the module docs).
    pub(crate) fn parse(text: &str) -> Result<Self, ParseError> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            // mosquitto_passwd refuses ':' in user names, so the first one separates.
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err(n, "expected USERNAME:HASH"))?;
            if user.is_empty() {
                return Err(err(n, "empty user name"));
            }
            let hash = StoredHash::parse(hash.trim()).map_err(|m| err(n, m))?;
            if map.insert(user.to_string(), hash).is_some() {
                return Err(err(n, format!("user {user:?} appears twice")));
            }
        }
        Ok(Self(map))
    }

    /// Whether `user` exists and `password` is theirs.
    pub(crate) fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.0.get(user).is_some_and(|h| h.verify(password))
    }
}

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn reads(self) -> bool {
        matches!(self, Self::Read | Self::ReadWrite)
    }
    fn writes(self) -> bool {
        matches!(self, Self::Write | Self::ReadWrite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Acl {
    /// `topic` lines before any `user` line.
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    /// `pattern` lines, anywhere in the file.
    patterns: Vec<Rule>,
}

impl Acl {
    /// Parses an ACL file (see the module docs).
    pub(crate) fn parse(text: &str) -> Result<Self, ParseError> {
        let mut acl = Self::default();
        let mut user: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line
                .split_once(char::is_whitespace)
                .map(|(k, r)| (k, r.trim_start()))
                .unwrap_or((line, ""));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err(n, "`user` needs a user name"));
                    }
                    acl.users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(|m| err(n, m))?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(u) = &user {
                        acl.users.entry(u.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => return Err(err(n, format!("unknown keyword {other:?}"))),
            }
        }
        Ok(acl)
    }

    /// The rules for a client, patterns substituted; `None` entries are skipped.
    fn rules<'s>(
        &'s self,
        client_id: &'s str,
        username: Option<&'s str>,
    ) -> impl Iterator<Item = (Grant, std::borrow::Cow<'s, str>)> + 's {
        let own = match username {
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or(&[]),
            None => &self.anonymous,
        };
        let direct = own.iter().map(|r| (r.grant, r.filter.as_str().into()));
        let patterns = self.patterns.iter().filter_map(move |r| {
            substitute(&r.filter, client_id, username).map(|f| (r.grant, f.into()))
        });
        direct.chain(patterns)
    }

    /// Whether the client may publish to `topic`.
    pub(crate) fn may_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        let Ok(name) = TopicName::new(topic) else {
            return false;
        };
        self.decide(client_id, username, Grant::writes, |f| {
            TopicFilter::new(f).is_ok_and(|f| mqtt_topic::matches(f, name))
        })
    }

    /// Whether the client may subscribe to `filter`.
    pub(crate) fn may_subscribe(
        &self,
        client_id: &str,
        username: Option<&str>,
        filter: &str,
    ) -> bool {
        let inner = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((_group, f)) => f,
                None => return false,
            },
            None => filter,
        };
        self.decide(client_id, username, Grant::reads, |a| covers(a, inner))
    }

    /// Denied if a matching `deny` rule exists, else allowed if a matching rule grants.
    fn decide(
        &self,
        client_id: &str,
        username: Option<&str>,
        grants: fn(Grant) -> bool,
        applies: impl Fn(&str) -> bool,
    ) -> bool {
        let mut allowed = false;
        for (grant, filter) in self.rules(client_id, username) {
            if grant == Grant::Deny {
                if applies(&filter) {
                    return false;
                }
            } else if !allowed && grants(grant) && applies(&filter) {
                allowed = true;
            }
        }
        allowed
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, after) = rest
        .split_once(char::is_whitespace)
        .map(|(k, r)| (k, r.trim_start()))
        .unwrap_or((rest, ""));
    let (grant, filter) = match first {
        "read" => (Grant::Read, after),
        "write" => (Grant::Write, after),
        "readwrite" => (Grant::ReadWrite, after),
        "deny" => (Grant::Deny, after),
        _ => (Grant::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("missing topic filter".into());
    }
    // Validate with the placeholders standing in for a plain level.
    let probe = filter.replace("%u", "u").replace("%c", "c");
    TopicFilter::new(&probe).map_err(|e| format!("bad topic filter {filter:?}: {e}"))?;
    Ok(Rule {
        grant,
        filter: filter.to_string(),
    })
}

/// `%u`/`%c` substituted in `pattern`; `None` when the pattern cannot apply (anonymous with
/// `%u`, or a value holding a wildcard).
fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let unsafe_value = |v: &str| v.contains(['+', '#']);
    let mut out = pattern.to_string();
    if pattern.contains("%u") {
        let u = username.filter(|u| !unsafe_value(u))?;
        out = out.replace("%u", u);
    }
    if pattern.contains("%c") {
        if unsafe_value(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    Some(out)
}

/// Whether ACL filter `acl` matches every topic that subscription filter `filter` can
/// match, level by level: `#` in `acl` covers whatever is left (none included), `+` covers
/// one level holding `+` or a literal, a literal covers only itself. As in matching, an
/// `acl` starting with a wildcard does not cover a `filter` starting with `$`.
pub(crate) fn covers(acl: &str, filter: &str) -> bool {
    if filter.starts_with('$') && (acl.starts_with('+') || acl.starts_with('#')) {
        return false;
    }
    let mut a = acl.split('/');
    let mut f = filter.split('/');
    loop {
        match (a.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(al), Some(fl)) if al != "+" && al == fl && fl != "+" && fl != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The broker's [`Hooks`]: password check and ACLs, each optional.
#[derive(Debug, Default)]
pub(crate) struct Access {
    /// With a password file, every user name must be in it with the right password.
    pub(crate) passwords: Option<Passwords>,
    /// Whether clients without a user name are let in when there is a password file.
    pub(crate) allow_anonymous: bool,
    /// With an ACL file, what it does not allow is refused.
    pub(crate) acl: Option<Acl>,
}

impl Access {
    /// Checks a CONNECT's user name and password against the password file (a hash
    /// check: slow on purpose, so the broker runs it off its event loop).
    pub(crate) fn check_password(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), ReasonCode> {
        let Some(passwords) = &self.passwords else {
            return Ok(());
        };
        match username {
            None if self.allow_anonymous => Ok(()),
            None => Err(ReasonCode::NotAuthorized),
            Some(user) => match password.is_some_and(|pw| passwords.verify(user, pw)) {
                true => Ok(()),
                false => Err(ReasonCode::BadUserNameOrPassword),
            },
        }
    }
}

fn verdict(allowed: bool) -> Verdict {
    if allowed {
        Verdict::Allow
    } else {
        Verdict::Deny(ReasonCode::NotAuthorized)
    }
}

impl Hooks for Access {
    fn authenticate(&mut self, _: &Context<'_>, request: &ConnectRequest) -> Verdict {
        let username = request.username.as_ref().map(|u| u.as_str());
        match self.check_password(username, request.password.as_deref()) {
            Ok(()) => Verdict::Allow,
            Err(code) => Verdict::Deny(code),
        }
    }

    fn authorize_publish(
        &mut self,
        ctx: &Context<'_>,
        topic: TopicName<'_>,
        _: QoS,
        _: bool,
    ) -> Verdict {
        verdict(
            self.acl
                .as_ref()
                .is_none_or(|acl| acl.may_publish(ctx.client_id, ctx.username, topic.as_str())),
        )
    }

    fn authorize_subscribe(
        &mut self,
        ctx: &Context<'_>,
        filter: TopicFilter<'_>,
        _: QoS,
    ) -> Verdict {
        verdict(
            self.acl
                .as_ref()
                .is_none_or(|acl| acl.may_subscribe(ctx.client_id, ctx.username, filter.as_str())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_level_by_level() {
        let yes = [
            ("#", "a/b"),
            ("#", "#"),
            ("a/#", "a"),
            ("a/#", "a/#"),
            ("a/#", "a/+/c"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("a/+/c", "a/+/c"),
            ("a/b", "a/b"),
            ("+/+", "x/y"),
            ("$SYS/#", "$SYS/broker/+"),
        ];
        let no = [
            ("a/+", "a/#"),
            ("a/b", "a/+"),
            ("a/b", "a/#"),
            ("a/b", "a"),
            ("a", "a/b"),
            ("a/+", "a/b/c"),
            ("a/+/c", "a/b/d"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a/b/#", "a/#"),
        ];
        for (a, f) in yes {
            assert!(covers(a, f), "{a} should cover {f}");
        }
        for (a, f) in no {
            assert!(!covers(a, f), "{a} should not cover {f}");
        }
    }

    const ACL: &str = "\
# comment
topic read public/#

user alice
topic readwrite alice/#
topic write sensors/+/temp
topic deny alice/secret

user bob smith
topic things

pattern readwrite clients/%c/#
pattern read users/%u/inbox
";

    #[test]
    fn acl_parse() {
        let acl = Acl::parse(ACL).unwrap();
        assert_eq!(
            acl.anonymous,
            [Rule {
                grant: Grant::Read,
                filter: "public/#".into()
            }]
        );
        assert_eq!(acl.users["alice"].len(), 3);
        assert_eq!(
            acl.users["bob smith"],
            [Rule {
                grant: Grant::ReadWrite,
                filter: "things".into()
            }]
        );
        assert_eq!(acl.patterns.len(), 2);
        assert!(Acl::parse("topic read a/#/b").is_err());
        assert!(Acl::parse("topic read").is_err());
        assert!(Acl::parse("user").is_err());
        assert!(Acl::parse("frobnicate x").is_err());
        let e = Acl::parse("\n\nbogus").unwrap_err();
        assert_eq!(e.line, 3);
    }

    #[test]
    fn acl_decisions() {
        let acl = Acl::parse(ACL).unwrap();
        let alice = Some("alice");
        // user rules
        assert!(acl.may_publish("c1", alice, "alice/x"));
        assert!(acl.may_subscribe("c1", alice, "alice/#"));
        assert!(acl.may_subscribe("c1", alice, "alice/+/y"));
        assert!(acl.may_publish("c1", alice, "sensors/k/temp"));
        assert!(!acl.may_subscribe("c1", alice, "sensors/k/temp"));
        assert!(!acl.may_publish("c1", alice, "sensors/k/hum"));
        assert!(!acl.may_subscribe("c1", alice, "#"));
        // deny wins
        assert!(!acl.may_publish("c1", alice, "alice/secret"));
        assert!(!acl.may_subscribe("c1", alice, "alice/secret"));
        // anonymous rules are for anonymous clients only
        assert!(acl.may_subscribe("c1", None, "public/news"));
        assert!(!acl.may_publish("c1", None, "public/news"));
        assert!(!acl.may_subscribe("c1", alice, "public/news"));
        // user names with spaces, default readwrite
        assert!(acl.may_publish("c2", Some("bob smith"), "things"));
        assert!(acl.may_subscribe("c2", Some("bob smith"), "things"));
        // patterns, for everyone
        assert!(acl.may_publish("c1", alice, "clients/c1/x"));
        assert!(acl.may_publish("c9", None, "clients/c9/x"));
        assert!(!acl.may_publish("c9", None, "clients/c1/x"));
        assert!(acl.may_subscribe("c1", alice, "users/alice/inbox"));
        assert!(!acl.may_subscribe("c1", alice, "users/bob/inbox"));
        assert!(!acl.may_subscribe("c1", None, "users/%u/inbox"));
        // a wildcard in a substituted value matches nothing
        assert!(!acl.may_subscribe("c+", None, "clients/c+/x"));
        assert!(!acl.may_subscribe("#", None, "clients/#"));
        // shared subscriptions are checked by their filter
        assert!(acl.may_subscribe("c1", alice, "$share/g/alice/x"));
        assert!(!acl.may_subscribe("c1", alice, "$share/g/other"));
        // unknown users get the patterns only
        assert!(!acl.may_publish("c1", Some("mallory"), "alice/x"));
        assert!(acl.may_publish("c1", Some("mallory"), "clients/c1/x"));
    }

    #[test]
    fn passwords_argon2() {
        let hash = hash_password(b"s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let p = Passwords::parse(&format!("# users\n\nalice:{hash}\n")).unwrap();
        assert!(p.verify("alice", b"s3cret"));
        assert!(!p.verify("alice", b"wrong"));
        assert!(!p.verify("bob", b"s3cret"));
    }

    #[test]
    fn passwords_mosquitto_7() {
        // PBKDF2-HMAC-SHA512, 101 iterations, salt "saltsaltsalt", password "pass",
        // laid out as mosquitto_passwd does.
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b"saltsaltsalt";
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<sha2::Sha512>(b"pass", salt, 101, &mut out);
        let line = format!("u:$7$101${}${}", b64.encode(salt), b64.encode(out));
        let p = Passwords::parse(&line).unwrap();
        assert!(p.verify("u", b"pass"));
        assert!(!p.verify("u", b"pas"));
    }

    #[test]
    fn passwords_refuse_plain_text_and_junk() {
        assert!(Passwords::parse("alice:hunter2").is_err());
        assert!(Passwords::parse("alice").is_err());
        assert!(Passwords::parse(":$7$1$AAAA$AAAA").is_err());
        assert!(Passwords::parse("a:$6$abc$def").is_err());
        assert!(Passwords::parse("a:$7$0$AAAA$AAAA").is_err());
        assert!(Passwords::parse("a:$argon2id$garbage").is_err());
        let h = hash_password(b"x").unwrap();
        assert!(Passwords::parse(&format!("a:{h}\na:{h}")).is_err());
    }

    fn connect(user: Option<&'static str>, password: Option<&[u8]>) -> ConnectRequest {
        ConnectRequest {
            protocol: mqtt_codec::ProtocolVersion::V5,
            client_id: "c".into(),
            clean_start: true,
            keep_alive: 60,
            username: user.map(Into::into),
            password: password.map(bytes::Bytes::copy_from_slice),
            will: None,
            session_expiry_interval: 0,
            authentication_method: None,
            authentication_data: None,
            bridge: false,
        }
    }

    #[test]
    fn hooks_authenticate() {
        let hash = hash_password(b"pw").unwrap();
        let mut access = Access {
            passwords: Some(Passwords::parse(&format!("alice:{hash}")).unwrap()),
            ..Access::default()
        };
        let info = mqtt_broker::ConnInfo::default();
        let ctx = Context::new("c", None, mqtt_codec::ProtocolVersion::V5, &info);
        assert_eq!(
            access.authenticate(&ctx, &connect(Some("alice"), Some(b"pw"))),
            Verdict::Allow
        );
        assert_eq!(
            access.authenticate(&ctx, &connect(Some("alice"), Some(b"no"))),
            Verdict::Deny(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(
            access.check_password(Some("alice"), None),
            Err(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(
            access.check_password(None, None),
            Err(ReasonCode::NotAuthorized)
        );
        access.allow_anonymous = true;
        assert_eq!(access.check_password(None, None), Ok(()));
        // no password file: anyone
        let mut open = Access::default();
        assert_eq!(open.check_password(Some("x"), Some(b"y")), Ok(()));
        let topic = TopicName::new("any").unwrap();
        assert_eq!(
            open.authorize_publish(&ctx, topic, QoS::AtMostOnce, false),
            Verdict::Allow
        );
    }
}
