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

/// Slows down repeated failed logins (HTTP and PostgreSQL alike). Every login attempt counts,
/// before its password is checked ([`LoginThrottle::admit`]), against three keys: the client's
/// address (an IPv6 address by its /64), the user name from that address, and the user name
/// from anywhere; a success ([`LoginThrottle::succeeded`]) takes it back. A key with more
/// counted attempts than its free ones ([`FREE_ATTEMPTS_PER_USER`], [`FREE_ATTEMPTS_PER_ADDRESS`])
/// is throttled: its attempts take turns 100 ms × 2^(attempts over the free ones) apart, at most
/// [`MAX_DELAY`], each waiting for its turn *before* its password is checked, the right one
/// included, so a guesser learns nothing sooner by guessing right, and attempts sent in parallel
/// queue instead of sharing one wait (they count as they start, not as they fail). An attempt
/// that would wait longer than [`MAX_QUEUE`] is refused at once, unchecked.
///
/// Guessing one user's password from many addresses throttles the user name everywhere, except
/// from the addresses the user logged in from lately ([`TRUST_FOR`]): an attacker cannot lock
/// the user out of those. Counts are forgotten after [`FORGET_AFTER`] without an attempt. The
/// table holds at most [`MAX_ENTRIES`] keys: when full, keys that throttle nobody are dropped
/// (never the attempt's own, never a throttled one, so a flood of new names cannot reset a
/// targeted count), and new keys that find no room share one overflow key, throttled like an
/// address. User names are cut to [`MAX_USER_NAME_BYTES`](topicfusion_engine::MAX_USER_NAME_BYTES)
/// (no user has a longer one) before they become keys or appear in a log line.
#[derive(Default)]
pub struct LoginThrottle {
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    entries: HashMap<String, Entry>,
    /// Per user name, the addresses it logged in from lately (at most [`TRUSTED_PER_USER`]).
    trusted: HashMap<String, Vec<(String, Instant)>>,
    /// When the table was last swept for room.
    last_sweep: Option<Instant>,
}

/// The attempts of one key.
struct Entry {
    /// Attempts counted and not taken back by a success.
    attempts: u32,
    last_attempt: Instant,
    /// When the next attempt may be checked.
    next_slot: Instant,
    free: u32,
}

pub const FREE_ATTEMPTS_PER_USER: u32 = 3;
pub const FREE_ATTEMPTS_PER_ADDRESS: u32 = 20;
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// The longest an attempt waits for its turn; beyond, it is refused.
pub const MAX_QUEUE: Duration = Duration::from_secs(30);
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// How long an address a user logged in from is exempt from the user name's own throttle.
pub const TRUST_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
const TRUSTED_PER_USER: usize = 16;
/// The most keys the throttle keeps.
pub const MAX_ENTRIES: usize = 100_000;
/// The key new keys share while the table is full of throttled entries.
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

/// An address as the throttle counts it: IPv4 as it is, IPv6 by its /64 (one host's share).
fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

impl Entry {
    /// The spacing of this key's attempts after its counted ones.
    fn delay(&self) -> Duration {
        match self.attempts.checked_sub(self.free) {
            None => Duration::ZERO,
            Some(n) => (Duration::from_millis(100) * 2u32.pow(n.min(16))).min(MAX_DELAY),
        }
    }

    fn forgotten(&self) -> bool {
        self.last_attempt.elapsed() >= FORGET_AFTER
    }
}

impl ThrottleState {
    fn trusts(&self, user: &str, address: &str) -> bool {
        self.trusted.get(user).is_some_and(|a| a.iter().any(|(a, at)| a == address && at.elapsed() < TRUST_FOR))
    }

    /// Room for `needed` new keys, keeping `keep`: drops forgotten entries, then ones that
    /// throttle nobody (at most one sweep a second: a flood does not make every attempt scan).
    fn make_room(&mut self, keep: &[String], needed: usize) -> bool {
        if self.entries.len() + needed <= MAX_ENTRIES {
            return true;
        }
        let now = Instant::now();
        if self.last_sweep.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            return false;
        }
        self.last_sweep = Some(now);
        let kept = |k: &String| k == OVERFLOW_KEY || keep.contains(k);
        self.entries.retain(|k, e| kept(k) || (!e.forgotten() && !e.delay().is_zero()));
        self.trusted.retain(|_, a| {
            a.retain(|(_, at)| at.elapsed() < TRUST_FOR);
            !a.is_empty()
        });
        self.entries.len() + needed <= MAX_ENTRIES
    }
}

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt to log in as `user` from `ip`, before its password is checked: counts it
    /// (a success takes it back) and returns how long it waits for its turn, or a refusal when
    /// the queue is too long (then nothing is counted).
    pub fn admit(&self, user: &str, ip: IpAddr) -> Result<Duration, TooManyAttempts> {
        let mut st = self.lock();
        let (user, address) = (shown_user(user), address_key(ip));
        let mut keys = vec![
            (format!("addr:{address}"), FREE_ATTEMPTS_PER_ADDRESS),
            (format!("name-from:{user}@{address}"), FREE_ATTEMPTS_PER_USER),
        ];
        if !st.trusts(user, &address) {
            keys.push((format!("name:{user}"), FREE_ATTEMPTS_PER_USER));
        }
        let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
        let missing = keys.iter().filter(|(k, _)| !st.entries.contains_key(k)).count();
        let room = st.make_room(&names, missing);
        let mut counted: Vec<(String, u32)> = Vec::new();
        for (key, free) in keys {
            let (key, free) = if room || st.entries.contains_key(&key) {
                (key, free)
            } else {
                (OVERFLOW_KEY.to_owned(), FREE_ATTEMPTS_PER_ADDRESS)
            };
            if !counted.iter().any(|(k, _)| *k == key) {
                counted.push((key, free));
            }
        }
        let now = Instant::now();
        let mut turn = now;
        for (key, _) in &counted {
            if let Some(e) = st.entries.get(key).filter(|e| !e.forgotten() && !e.delay().is_zero()) {
                turn = turn.max(e.next_slot);
            }
        }
        if turn - now > MAX_QUEUE {
            return Err(TooManyAttempts);
        }
        for (key, free) in counted {
            let e = st.entries.entry(key).or_insert(Entry { attempts: 0, last_attempt: now, next_slot: now, free });
            if e.forgotten() {
                e.attempts = 0;
            }
            e.attempts = e.attempts.saturating_add(1);
            e.last_attempt = now;
            e.next_slot = e.next_slot.max(turn) + e.delay();
        }
        Ok(turn - now)
    }

    /// The attempt admitted for `user` from `ip` logged in: the user name's counts are cleared,
    /// the address's attempt is taken back, and the address is trusted for the user.
    pub fn succeeded(&self, user: &str, ip: IpAddr) {
        let mut st = self.lock();
        let (user, address) = (shown_user(user), address_key(ip));
        st.entries.remove(&format!("name:{user}"));
        st.entries.remove(&format!("name-from:{user}@{address}"));
        if let Some(e) = st.entries.get_mut(&format!("addr:{address}")) {
            e.attempts = e.attempts.saturating_sub(1);
        }
        let trusted = st.trusted.entry(user.to_owned()).or_default();
        trusted.retain(|(a, _)| *a != address);
        if trusted.len() >= TRUSTED_PER_USER {
            trusted.remove(0);
        }
        trusted.push((address, Instant::now()));
    }

    /// The attempts counted now for a user name from anywhere (0 when none or forgotten).
    pub fn user_attempts(&self, user: &str) -> u32 {
        let st = self.lock();
        st.entries.get(&format!("name:{}", shown_user(user))).filter(|e| !e.forgotten()).map_or(0, |e| e.attempts)
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
