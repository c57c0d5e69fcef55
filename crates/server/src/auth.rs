//! Authentication: signed login tokens and `Basic` credentials of the HTTP API, and the slowdown
//! of repeated failed logins both protocols share. Roles and what they allow live in the engine
//! (`users`), so every interface authorizes the same way.
//!
//! A token is `v1.<payload>.<signature>` (base64url): the payload names the user, the expiry and
//! a tag of the user's password hash; the signature is HMAC-SHA256 with a secret kept in the data
//! dir. Tokens survive restarts, die with a password change or DROP USER, and carry no role: the
//! role is read at every request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use topicfusion_engine::{Database, Principal};

type HmacSha256 = Hmac<Sha256>;

/// The name of the signing secret in the data dir.
pub const TOKEN_SECRET: &str = "http_token_secret";

#[derive(Serialize, Deserialize)]
struct TokenPayload {
    /// User name.
    u: String,
    /// Expiry, Unix seconds.
    exp: i64,
    /// The user's credential tag when the token was issued.
    c: String,
}

/// Issues and checks tokens.
pub struct Tokens {
    secret: Vec<u8>,
    ttl_seconds: u64,
}

impl Tokens {
    pub fn new(secret: Vec<u8>, ttl_seconds: u64) -> Self {
        Self { secret, ttl_seconds }
    }

    fn sign(&self, payload: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A token for `user` (whose credential tag is `tag`) and its expiry (Unix seconds).
    pub fn issue(&self, user: &str, tag: &str, now: i64) -> (String, i64) {
        let exp = now + self.ttl_seconds as i64;
        let payload = TokenPayload { u: user.to_owned(), exp, c: tag.to_owned() };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).expect("payload serializes"));
        let signature = URL_SAFE_NO_PAD.encode(self.sign(&payload));
        (format!("v1.{payload}.{signature}"), exp)
    }

    /// The principal a token stands for, if it is genuine, unexpired and its user still has the
    /// same password.
    pub fn verify(&self, db: &Database, token: &str, now: i64) -> Option<Principal> {
        let rest = token.strip_prefix("v1.")?;
        let (payload_b64, signature_b64) = rest.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).ok()?;
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(payload_b64.as_bytes());
        mac.verify_slice(&signature).ok()?;
        let payload: TokenPayload = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload_b64).ok()?).ok()?;
        if payload.exp <= now {
            return None;
        }
        let (principal, tag) = db.user_credentials(&payload.u)?;
        (tag == payload.c).then_some(principal)
    }
}

/// Slows down repeated failed logins (HTTP and PostgreSQL alike), per user name and per client
/// address: after [`FREE_FAILURES_PER_USER`] failures in a row for a user name (or
/// [`FREE_FAILURES_PER_ADDRESS`] from one address), each further failure is answered only
/// after 100 ms × 2^(failures over the free ones), at most [`MAX_DELAY`]. A correct password is
/// never delayed; a success resets the user's count; counts are forgotten after
/// [`FORGET_AFTER`] without a failure. User names are cut to [`MAX_USER_NAME_BYTES`] (no user
/// has a longer one) before they become keys or appear in a log line.
#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

pub const FREE_FAILURES_PER_USER: u32 = 3;
pub const FREE_FAILURES_PER_ADDRESS: u32 = 20;
pub const MAX_DELAY: Duration = Duration::from_secs(5);
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The most entries the throttle keeps; beyond, forgotten ones are dropped first.
const MAX_ENTRIES: usize = 100_000;

/// A user name as logs and the throttle show it: at most the longest name a user can have.
pub fn shown_user(user: &str) -> &str {
    let max = topicfusion_engine::MAX_USER_NAME_BYTES;
    if user.len() <= max {
        return user;
    }
    let mut cut = max;
    while !user.is_char_boundary(cut) {
        cut -= 1;
    }
    &user[..cut]
}

impl LoginThrottle {
    fn keys(user: &str, ip: IpAddr) -> [(String, u32); 2] {
        [
            (format!("user:{}", shown_user(user)), FREE_FAILURES_PER_USER),
            (format!("ip:{ip}"), FREE_FAILURES_PER_ADDRESS),
        ]
    }

    /// Records a failed login; returns how long to wait before answering it.
    pub fn failed(&self, user: &str, ip: IpAddr) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > MAX_ENTRIES {
            map.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
            if map.len() > MAX_ENTRIES {
                map.clear();
            }
        }
        let now = Instant::now();
        let mut excess = None;
        for (k, free) in Self::keys(user, ip) {
            let e = map.entry(k).or_insert((0, now));
            if e.1.elapsed() >= FORGET_AFTER {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = now;
            excess = excess.max(e.0.checked_sub(free + 1));
        }
        match excess {
            None => Duration::ZERO,
            Some(n) => (Duration::from_millis(100) * 2u32.pow(n.min(16))).min(MAX_DELAY),
        }
    }

    pub fn succeeded(&self, user: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&format!("user:{}", shown_user(user)));
    }
}

/// Parses `Authorization: Basic base64(user:password)`.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Parses `Authorization: Bearer <token>`.
pub fn parse_bearer(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim)
}
