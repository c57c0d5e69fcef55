//! PostgreSQL logins: SCRAM-SHA-256 (RFC 5802, RFC 7677) against the users' stored keys, and
//! SCRAM-SHA-256-PLUS (`tls-server-end-point` channel binding) under TLS.
//!
//! The server holds `StoredKey` and `ServerKey`, never the salted password (pgwire's SCRAM needs
//! the latter, so the exchange is done here). It checks a proof by recovering the client key
//! from it and comparing its hash with `StoredKey`.
//!
//! A login with an unknown user name runs the same exchange with a salt derived from the name
//! (the same at every attempt, like a real user's) and keys that match nothing, and fails with
//! the same message and the same delay. Failed logins are slowed down by the throttle HTTP uses
//! ([`crate::auth::LoginThrottle`]): a throttled name's or address's attempts wait their turn
//! before the proof is checked, whatever the proof.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{Sink, SinkExt};
use hmac::{Hmac, Mac};
use pgwire::api::auth::{
    ServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, ConnectionHandle, ConnectionManager, METADATA_USER, PgWireConnectionState, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use topicfusion_engine::Database;
use topicfusion_engine::auth::SCRAM_ITERATIONS;

use crate::auth::{LoginThrottle, shown_user};

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// What every connection's login shares.
pub struct Logins {
    pub db: Arc<Database>,
    pub throttle: Arc<LoginThrottle>,
    /// Derives the salts of unknown users (a secret of the data dir).
    pub fake_salt_key: Vec<u8>,
    /// The hash of the server certificate (`tls-server-end-point`), when TLS is on.
    pub cert_hash: Option<Vec<u8>>,
    pub connections: Arc<ConnectionManager>,
}

/// The credential a login is checked against.
struct Credential {
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// Where a connection's login is.
enum Stage {
    Start,
    /// The mechanisms were offered.
    Offered,
    /// The server-first message was sent.
    Challenged {
        credential: Credential,
        /// `client-first-message-bare,server-first-message,` (the start of AuthMessage).
        auth_message: String,
        nonce: String,
        /// What `c=` must hold: base64 of the gs2 header and, with channel binding, the hash.
        channel_binding: String,
    },
    Done,
}

/// The startup handler of one connection.
pub struct ScramLogin {
    logins: Arc<Logins>,
    stage: Mutex<Stage>,
}

impl ScramLogin {
    pub fn new(logins: Arc<Logins>) -> Self {
        Self { logins, stage: Mutex::new(Stage::Start) }
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message)))
}

fn protocol_violation(message: &str) -> PgWireError {
    fatal("08P01", format!("malformed SCRAM message: {message}"))
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(message);
    m.finalize().into_bytes().to_vec()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b
}

/// `key=value` attributes of a SCRAM message, in order.
fn attributes(message: &str) -> Vec<(char, &str)> {
    message
        .split(',')
        .filter_map(|part| {
            let mut chars = part.chars();
            let key = chars.next()?;
            part.get(1..)?.strip_prefix('=').map(|v| (key, v))
        })
        .collect()
}

impl Logins {
    /// The user's credential, or one for an unknown user (or one without a SCRAM credential)
    /// that no proof matches.
    fn credential(&self, user: &str) -> Credential {
        let stored = self
            .db
            .user(user)
            .and_then(|u| u.scram)
            .filter(|c| c.iterations == SCRAM_ITERATIONS)
            .and_then(|c| c.decode());
        match stored {
            Some((salt, stored_key, server_key)) => Credential { salt, stored_key, server_key },
            None => Credential {
                salt: hmac(&self.fake_salt_key, shown_user(user).as_bytes())[..16].to_vec(),
                stored_key: random_bytes(32),
                server_key: random_bytes(32),
            },
        }
    }
}

/// The parameters a connection starts with (ParameterStatus), as `SHOW` gives them.
pub struct Parameters {
    pub db: Arc<Database>,
}

impl ServerParameterProvider for Parameters {
    fn server_parameters<C: ClientInfo>(&self, client: &C) -> Option<HashMap<String, String>> {
        let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
        let superuser = self.db.principal(&user).is_some_and(|p| p.role == topicfusion_engine::Role::System);
        let who = topicfusion_engine::session::settings::Identity { user: &user, superuser };
        let session = topicfusion_engine::Session::new();
        let mut out: HashMap<String, String> = REPORTED
            .iter()
            .filter_map(|name| topicfusion_engine::session::settings::show(&session, name, who))
            .collect();
        if let Some(app) = client.metadata().get("application_name") {
            out.insert("application_name".into(), app.clone());
        }
        out.insert("in_hot_standby".into(), "off".into());
        Some(out)
    }
}

/// The parameters PostgreSQL reports to every new connection.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
];

#[async_trait]
impl StartupHandler for ScramLogin {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut stage = self.stage.lock().await;
        match (message, &*stage) {
            (PgWireFrontendMessage::Startup(startup), Stage::Start) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                if client.metadata().get(METADATA_USER).is_none_or(|u| u.is_empty()) {
                    return Err(fatal("28000", "no PostgreSQL user name specified in startup packet".into()));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let mut mechanisms = vec![SCRAM.to_owned()];
                if client.is_secure() && self.logins.cert_hash.is_some() {
                    mechanisms.push(SCRAM_PLUS.to_owned());
                }
                client.send(PgWireBackendMessage::Authentication(Authentication::SASL(mechanisms))).await?;
                *stage = Stage::Offered;
            }
            (PgWireFrontendMessage::PasswordMessageFamily(msg), Stage::Offered) => {
                let initial = msg.into_sasl_initial_response()?;
                let plus = match initial.auth_method.as_str() {
                    SCRAM => false,
                    SCRAM_PLUS if client.is_secure() && self.logins.cert_hash.is_some() => true,
                    other => return Err(PgWireError::UnsupportedSASLAuthMethod(other.to_owned())),
                };
                let data = initial.data.as_deref().ok_or_else(|| protocol_violation("empty client-first message"))?;
                let text = std::str::from_utf8(data).map_err(|_| protocol_violation("not UTF-8"))?;
                // gs2-header: "n,," / "y,," / "p=tls-server-end-point,," then the bare message.
                let mut parts = text.splitn(3, ',');
                let (flag, authzid, bare) = (parts.next(), parts.next(), parts.next());
                let (Some(flag), Some(_), Some(bare)) = (flag, authzid, bare) else {
                    return Err(protocol_violation("no gs2 header"));
                };
                let binding = match (flag, plus) {
                    ("p=tls-server-end-point", true) => self.logins.cert_hash.clone(),
                    ("n" | "y", false) => None,
                    _ => return Err(protocol_violation("channel binding does not match the mechanism")),
                };
                let client_nonce = attributes(bare)
                    .into_iter()
                    .find(|(k, _)| *k == 'r')
                    .map(|(_, v)| v.to_owned())
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
                    .ok_or_else(|| protocol_violation("no client nonce"))?;
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                let credential = self.logins.credential(&user);
                let nonce = format!("{client_nonce}{}", B64.encode(random_bytes(18)));
                let server_first = format!("r={nonce},s={},i={SCRAM_ITERATIONS}", B64.encode(&credential.salt));
                let mut header = format!("{flag},{},", parts_authzid(text)).into_bytes();
                if let Some(hash) = &binding {
                    header.extend_from_slice(hash);
                }
                *stage = Stage::Challenged {
                    credential,
                    auth_message: format!("{bare},{server_first},"),
                    nonce,
                    channel_binding: B64.encode(header),
                };
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASLContinue(
                        server_first.into_bytes().into(),
                    )))
                    .await?;
            }
            (PgWireFrontendMessage::PasswordMessageFamily(msg), Stage::Challenged { .. }) => {
                let Stage::Challenged { credential, auth_message, nonce, channel_binding } =
                    std::mem::replace(&mut *stage, Stage::Done)
                else {
                    unreachable!("matched above")
                };
                let response = msg.into_sasl_response()?;
                let text = std::str::from_utf8(&response.data).map_err(|_| protocol_violation("not UTF-8"))?;
                let (without_proof, proof) =
                    text.rsplit_once(",p=").ok_or_else(|| protocol_violation("no proof in client-final message"))?;
                let attrs = attributes(without_proof);
                let get = |k: char| attrs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
                if get('c') != Some(channel_binding.as_str()) {
                    return Err(fatal("28000", "SCRAM channel binding check failed".into()));
                }
                if get('r') != Some(nonce.as_str()) {
                    return Err(protocol_violation("nonce mismatch"));
                }
                let proof = B64.decode(proof).map_err(|_| protocol_violation("proof is not base64"))?;
                let auth_message = format!("{auth_message}{without_proof}");
                let signature = hmac(&credential.stored_key, auth_message.as_bytes());
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                let ip = client.socket_addr().ip();
                // A name or address with failed logins waits its turn before the proof is
                // checked, whatever the proof.
                let attempt = match self.logins.throttle.admit(&user, ip) {
                    Ok((wait, attempt)) => {
                        tokio::time::sleep(wait).await;
                        attempt
                    }
                    Err(refused) => {
                        tracing::warn!(user = shown_user(&user), peer = %ip, "PostgreSQL login refused: {refused}");
                        return Err(fatal("28000", refused.to_string()));
                    }
                };
                let valid = proof.len() == signature.len() && {
                    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                    Sha256::digest(&client_key).as_slice() == credential.stored_key.as_slice()
                };
                if !valid {
                    attempt.failed();
                    return Err(self.failed(&user, ip));
                }
                attempt.succeeded();
                let verifier = B64.encode(hmac(&credential.server_key, auth_message.as_bytes()));
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASLFinal(
                        format!("v={verifier}").into_bytes().into(),
                    )))
                    .await?;
                let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
                client.set_pid_and_secret_key(pid, secret.clone());
                let (handle, guard) = self.logins.connections.register(pid, secret);
                client.session_extensions().insert::<Arc<ConnectionHandle>>(handle);
                client.session_extensions().insert(guard);
                finish_authentication(client, &Parameters { db: Arc::clone(&self.logins.db) }).await?;
            }
            (_, _) => return Err(protocol_violation("unexpected message during login")),
        }
        Ok(())
    }
}

/// The hash of the server certificate that `tls-server-end-point` channel binding uses (RFC
/// 5929): SHA-256, or the certificate's own signature hash when that is SHA-384 or SHA-512.
pub fn certificate_hash(pem: &[u8]) -> Result<Vec<u8>, String> {
    use x509_certificate::{CapturedX509Certificate, SignatureAlgorithm};
    let certs = CapturedX509Certificate::from_pem_multiple(pem).map_err(|e| e.to_string())?;
    let cert = certs.first().ok_or("no certificate")?;
    let der = cert.constructed_data();
    Ok(match cert.signature_algorithm() {
        Some(SignatureAlgorithm::RsaSha384 | SignatureAlgorithm::EcdsaSha384) => sha2::Sha384::digest(der).to_vec(),
        Some(SignatureAlgorithm::RsaSha512) => sha2::Sha512::digest(der).to_vec(),
        _ => Sha256::digest(der).to_vec(),
    })
}

/// The authzid field of a gs2 header (kept as sent: it is part of the binding input).
fn parts_authzid(text: &str) -> &str {
    text.split(',').nth(1).unwrap_or("")
}

impl ScramLogin {
    /// A failed login, logged (the throttle counts it through its attempt).
    fn failed(&self, user: &str, ip: IpAddr) -> PgWireError {
        tracing::warn!(user = shown_user(user), peer = %ip, "failed PostgreSQL login");
        // Every data dir has root, so saying why root cannot log in reveals nothing.
        if user == topicfusion_engine::auth::ROOT_USER
            && self.logins.db.user(user).is_some_and(|u| u.password_hash.is_empty())
        {
            return fatal(
                "28P01",
                "user root has no password: set [auth] root_password (or TOPICFUSION_ROOT_PASSWORD) to log in over the PostgreSQL protocol".into(),
            );
        }
        fatal("28P01", format!("password authentication failed for user \"{}\"", shown_user(user)))
    }
}
