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
use std::sync::{Arc, Mutex};
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

/// Slows down repeated failed logins (HTTP and PostgreSQL alike). An attempt
/// ([`LoginThrottle::admit`], before its password is checked) is counted against three keys:
/// the client's address (an IPv6 address by its /64), the user name from that address, and the
/// user name from anywhere. A key with failures is throttled once its failures, plus the
/// attempts still being checked, pass its free ones ([`FREE_FAILURES_PER_USER`],
/// [`FREE_FAILURES_PER_ADDRESS`]): its attempts then take turns 100 ms × 2^(count over the free
/// ones) apart, at most [`MAX_DELAY`], each waiting for its turn *before* its password is
/// checked, the right one included (a guesser learns nothing sooner by guessing right), and
/// attempts sent in parallel count as they start, so they queue instead of sharing one wait.
/// Attempts of a key without failures are never held up, however many run at once (a pool
/// opening connections). An attempt that would wait longer than [`MAX_QUEUE`] is refused at
/// once, unchecked.
///
/// A success ([`Attempt::succeeded`]) clears the failures of the name from that address and
/// trusts the address for the name: addresses a user logged in from lately ([`TRUST_FOR`], kept
/// in memory) are exempt from the name-wide key, so guessing from elsewhere cannot lock the
/// user out of them. A key's failures are forgotten [`FORGET_AFTER`] after its last failure.
/// The table holds at most [`MAX_ENTRIES`] keys: when full, keys that throttle nobody are
/// dropped (never the attempt's own, never a throttled one: a flood of new names cannot reset a
/// targeted count); new keys that find no room share one overflow key, throttled like an
/// address, except for trusted addresses, which then go uncounted. User names are cut to
/// [`MAX_USER_NAME_BYTES`](topicfusion_engine::MAX_USER_NAME_BYTES) (no user has a longer one)
/// before they become keys or appear in a log line.
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

/// The failures and running attempts of one key.
struct Entry {
    failures: u32,
    /// Attempts admitted and not yet ended.
    in_flight: u32,
    last_failure: Instant,
    /// When the next attempt may be checked.
    next_slot: Instant,
    free: u32,
}

/// A login attempt admitted by [`LoginThrottle::admit`]: end it with [`Attempt::succeeded`] or
/// [`Attempt::failed`]; dropped unended (the client went away before the check), it only
/// stops counting as running.
pub struct Attempt {
    throttle: Arc<LoginThrottle>,
    keys: Vec<String>,
    user: String,
    address: String,
    ended: bool,
}

pub const FREE_FAILURES_PER_USER: u32 = 3;
pub const FREE_FAILURES_PER_ADDRESS: u32 = 20;
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
    /// What the key's throttle counts: its failures and, once it has some, its running attempts.
    fn counted(&self) -> u32 {
        if self.failures == 0 { 0 } else { self.failures.saturating_add(self.in_flight) }
    }

    /// The spacing of this key's attempts now.
    fn delay(&self) -> Duration {
        match self.counted().checked_sub(self.free) {
            None => Duration::ZERO,
            Some(n) => (Duration::from_millis(100) * 2u32.pow(n.min(16))).min(MAX_DELAY),
        }
    }

    fn forgotten(&self) -> bool {
        self.in_flight == 0 && self.last_failure.elapsed() >= FORGET_AFTER
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
        self.entries.retain(|k, e| kept(k) || e.in_flight > 0 || (!e.forgotten() && !e.delay().is_zero()));
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

    /// An attempt to log in as `user` from `ip`, before its password is checked: how long it
    /// waits for its turn, and the attempt to end once checked; or a refusal when the queue is
    /// too long (then nothing is counted).
    pub fn admit(self: &Arc<Self>, user: &str, ip: IpAddr) -> Result<(Duration, Attempt), TooManyAttempts> {
        let mut st = self.lock();
        let (user, address) = (shown_user(user), address_key(ip));
        let trusted = st.trusts(user, &address);
        let mut keys = vec![
            (format!("addr:{address}"), FREE_FAILURES_PER_ADDRESS),
            (format!("name-from:{user}@{address}"), FREE_FAILURES_PER_USER),
        ];
        if !trusted {
            keys.push((format!("name:{user}"), FREE_FAILURES_PER_USER));
        }
        let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
        let missing = keys.iter().filter(|(k, _)| !st.entries.contains_key(k)).count();
        let room = st.make_room(&names, missing);
        let mut counted: Vec<(String, u32)> = Vec::new();
        for (key, free) in keys {
            let (key, free) = match room || st.entries.contains_key(&key) {
                true => (key, free),
                // A trusted address is not made to queue with strangers.
                false if trusted => continue,
                false => (OVERFLOW_KEY.to_owned(), FREE_FAILURES_PER_ADDRESS),
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
        for (key, free) in &counted {
            let e = st.entries.entry(key.clone()).or_insert(Entry {
                failures: 0,
                in_flight: 0,
                last_failure: now,
                next_slot: now,
                free: *free,
            });
            if e.forgotten() {
                e.failures = 0;
            }
            e.in_flight = e.in_flight.saturating_add(1);
            e.next_slot = e.next_slot.max(turn) + e.delay();
        }
        let attempt = Attempt {
            throttle: Arc::clone(self),
            keys: counted.into_iter().map(|(k, _)| k).collect(),
            user: user.to_owned(),
            address,
            ended: false,
        };
        Ok((turn - now, attempt))
    }

    /// The failures counted now for a user name from anywhere (0 when none or forgotten).
    pub fn user_failures(&self, user: &str) -> u32 {
        let st = self.lock();
        st.entries.get(&format!("name:{}", shown_user(user))).filter(|e| !e.forgotten()).map_or(0, |e| e.failures)
    }
}

impl Attempt {
    /// Ends the attempt: no longer running, and with `f` applied to each of its keys.
    fn end(&mut self, mut f: impl FnMut(&str, &mut Entry)) {
        self.ended = true;
        let mut st = self.throttle.lock();
        for key in &self.keys {
            if let Some(e) = st.entries.get_mut(key) {
                e.in_flight = e.in_flight.saturating_sub(1);
                f(key, e);
            }
        }
    }

    /// The password was right: the name's failures from this address are cleared and the
    /// address is trusted for the name.
    pub fn succeeded(mut self) {
        let from = format!("name-from:{}@{}", self.user, self.address);
        self.end(|key, e| {
            if key == from {
                e.failures = 0;
            }
        });
        let mut st = self.throttle.lock();
        let trusted = st.trusted.entry(self.user.clone()).or_default();
        trusted.retain(|(a, _)| *a != self.address);
        if trusted.len() >= TRUSTED_PER_USER {
            trusted.remove(0);
        }
        trusted.push((self.address.clone(), Instant::now()));
    }

    /// The password was wrong: a failure for each of the attempt's keys.
    pub fn failed(mut self) {
        let now = Instant::now();
        self.end(|_, e| {
            e.failures = e.failures.saturating_add(1);
            e.last_failure = now;
            e.next_slot = e.next_slot.max(now + e.delay());
        });
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.ended {
            self.end(|_, _| {});
        }
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
