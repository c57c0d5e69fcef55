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
/// address. After [`FREE_FAILURES_PER_USER`] failures in a row for a user name (or
/// [`FREE_FAILURES_PER_ADDRESS`] from one address) the name (address) is throttled: its login
/// attempts are spaced 100 ms × 2^(failures over the free ones) apart, at most [`MAX_DELAY`].
///
/// The spacing applies *before* the password is checked ([`LoginThrottle::admit`]), to every
/// attempt, the correct password included: a guesser learns nothing sooner by guessing right,
/// and attempts made in parallel queue one delay apart instead of sharing one wait. An attempt
/// that would queue longer than [`MAX_QUEUE`] is refused at once without a check. A success
/// resets the name's count; counts are forgotten after [`FORGET_AFTER`] without a failure.
/// When the table is full ([`MAX_ENTRIES`]), entries that throttle nobody are dropped first;
/// throttled ones are never dropped to make room (a flood of new names or addresses cannot
/// reset a targeted count): new keys then share one overflow entry, throttled like an address.
/// User names are cut to [`MAX_USER_NAME_BYTES`](topicfusion_engine::MAX_USER_NAME_BYTES) (no
/// user has a longer one) before they become keys or appear in a log line.
#[derive(Default)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<String, Entry>>,
}

/// The failures of one user name or address.
struct Entry {
    failures: u32,
    last_failure: Instant,
    /// When the next attempt may be checked.
    next_slot: Instant,
}

pub const FREE_FAILURES_PER_USER: u32 = 3;
pub const FREE_FAILURES_PER_ADDRESS: u32 = 20;
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// The longest an attempt waits for its turn; beyond, it is refused.
pub const MAX_QUEUE: Duration = Duration::from_secs(30);
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The most entries the throttle keeps.
pub const MAX_ENTRIES: usize = 100_000;
/// The key new names and addresses share while the table is full of throttled entries.
const OVERFLOW_KEY: &str = "overflow";

/// A login attempt refused without checking its password: the name or address has too many
/// attempts queued.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyAttempts;

impl std::fmt::Display for TooManyAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too many failed logins for this user or address: try again later")
    }
}

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

impl Entry {
    /// The spacing of this key's attempts, given its free failures.
    fn delay(&self, free: u32) -> Duration {
        match self.failures.checked_sub(free + 1) {
            None => Duration::ZERO,
            Some(n) => (Duration::from_millis(100) * 2u32.pow(n.min(16))).min(MAX_DELAY),
        }
    }

    fn forgotten(&self) -> bool {
        self.last_failure.elapsed() >= FORGET_AFTER
    }
}

impl LoginThrottle {
    fn keys(user: &str, ip: IpAddr) -> [(String, u32); 2] {
        [
            (format!("user:{}", shown_user(user)), FREE_FAILURES_PER_USER),
            (format!("ip:{ip}"), FREE_FAILURES_PER_ADDRESS),
        ]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before a password is checked: how long this attempt waits for its turn (it reserves the
    /// turn, so attempts in parallel queue), or a refusal when the queue is too long.
    pub fn admit(&self, user: &str, ip: IpAddr) -> Result<Duration, TooManyAttempts> {
        let mut map = self.lock();
        let now = Instant::now();
        let mut turns = Vec::new();
        for (key, free) in Self::keys(user, ip) {
            // A key the full table could not hold counted its failures in the overflow entry.
            let (key, free) = match map.contains_key(&key) {
                true => (key, free),
                false if map.len() >= MAX_ENTRIES => (OVERFLOW_KEY.to_owned(), FREE_FAILURES_PER_ADDRESS),
                false => continue,
            };
            let Some(e) = map.get(&key) else { continue };
            let delay = e.delay(free);
            if e.forgotten() || delay.is_zero() {
                continue;
            }
            let turn = e.next_slot.max(now);
            if turn - now > MAX_QUEUE {
                return Err(TooManyAttempts);
            }
            turns.push((key, turn, delay));
        }
        let mut wait = Duration::ZERO;
        for (key, turn, delay) in turns {
            if let Some(e) = map.get_mut(&key) {
                e.next_slot = turn + delay;
            }
            wait = wait.max(turn - now);
        }
        Ok(wait)
    }

    /// Records a failed login; returns the spacing of the next attempts of its name or address
    /// (zero while within the free failures).
    pub fn failed(&self, user: &str, ip: IpAddr) -> Duration {
        let mut map = self.lock();
        let now = Instant::now();
        let mut spacing = Duration::ZERO;
        for (key, free) in Self::keys(user, ip) {
            let key = if map.contains_key(&key) || Self::make_room(&mut map) { key } else { OVERFLOW_KEY.to_owned() };
            let free = if key == OVERFLOW_KEY { FREE_FAILURES_PER_ADDRESS } else { free };
            let e = map.entry(key).or_insert(Entry { failures: 0, last_failure: now, next_slot: now });
            if e.forgotten() {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last_failure = now;
            let delay = e.delay(free);
            e.next_slot = e.next_slot.max(now + delay);
            spacing = spacing.max(delay);
        }
        spacing
    }

    /// Whether a new key fits: drops forgotten entries, then ones that throttle nobody.
    fn make_room(map: &mut HashMap<String, Entry>) -> bool {
        if map.len() < MAX_ENTRIES {
            return true;
        }
        map.retain(|k, e| k == OVERFLOW_KEY || !e.forgotten());
        if map.len() >= MAX_ENTRIES {
            map.retain(|k, e| {
                let free = if k.starts_with("user:") { FREE_FAILURES_PER_USER } else { FREE_FAILURES_PER_ADDRESS };
                k == OVERFLOW_KEY || !e.delay(free).is_zero()
            });
        }
        map.len() < MAX_ENTRIES
    }

    /// The failures counted for a user name now (0 when none or forgotten).
    pub fn user_failures(&self, user: &str) -> u32 {
        self.lock().get(&format!("user:{}", shown_user(user))).filter(|e| !e.forgotten()).map_or(0, |e| e.failures)
    }

    pub fn succeeded(&self, user: &str) {
        self.lock().remove(&format!("user:{}", shown_user(user)));
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
