//! Users, roles and authorization: durable user entries (argon2 password hashes for HTTP logins
//! and SCRAM-SHA-256 salted passwords for the PostgreSQL protocol, in the catalog keyspace),
//! `CREATE/ALTER/DROP USER`, password checks, and the one rule that decides what a role may run. Every interface (embedded, HTTP, the PostgreSQL protocol) goes through
//! [`authorize`] before a statement runs.

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use datafusion::common::{DataFusionError, Result, exec_err, plan_err};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use topicfusion_dialect::Role;
use topicfusion_dialect::{AlterUserAction, UserStatement};
use topicfusion_storage::keys::{self, CatalogKind};
use topicfusion_storage::{Commit, Store};

use crate::catalog::{now_ms, storage_err};

/// The user every new data dir starts with (role `system`).
pub const ROOT_USER: &str = "root";

/// Who runs a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// The embedded interface's identity: `root`, role `system`.
    pub fn root() -> Self {
        Self { name: ROOT_USER.to_owned(), role: Role::System }
    }
}

/// What a statement needs permission for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SELECT and DML on user tables; SHOW TOPICS and the system tables other than users.
    ReadWrite,
    /// CONSUME, ACK, RESET/DROP CONSUMER GROUP.
    Consume,
    /// DDL on schemas, tables and topics.
    Ddl,
    /// CREATE/ALTER/DROP USER of another user.
    ManageUsers,
    /// Reading `system.users`.
    ReadUsers,
    /// Statements that read or write the server's file system (`COPY`, `CREATE EXTERNAL TABLE`).
    FileSystem,
    /// `SET` of an engine option.
    SetOption,
    /// `ALTER CLUSTER`: the membership of a replicated cluster.
    ManageCluster,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Action::ReadWrite => "read or write tables",
            Action::Consume => "consume from topics or change consumer groups",
            Action::Ddl => "run DDL",
            Action::ManageUsers => "manage users",
            Action::ReadUsers => "read system.users",
            Action::FileSystem => "read or write the server's files",
            Action::SetOption => "set engine options",
            Action::ManageCluster => "change the cluster's membership",
        }
    }
}

/// A refused statement: the caller's role does not allow it.
#[derive(Debug, thiserror::Error)]
#[error("permission denied: user {user} (role {role}) may not {what}; this needs role {needs}")]
pub struct PermissionDenied {
    pub user: String,
    pub role: Role,
    pub what: &'static str,
    pub needs: &'static str,
}

/// Checks that `principal` may perform `action`. `allow_user_consume` lets role `user` consume.
pub fn authorize(principal: &Principal, action: Action, allow_user_consume: bool) -> Result<(), PermissionDenied> {
    let (allowed, needs) = match action {
        Action::ReadWrite => (true, "user"),
        Action::Consume if allow_user_consume => (true, "user"),
        Action::Consume => (principal.role >= Role::Service, "service, dba or system"),
        Action::Ddl | Action::ManageUsers | Action::ReadUsers | Action::FileSystem | Action::SetOption => {
            (principal.role >= Role::Dba, "dba or system")
        }
        Action::ManageCluster => (principal.role >= Role::System, "system"),
    };
    if allowed {
        return Ok(());
    }
    Err(PermissionDenied { user: principal.name.clone(), role: principal.role, what: action.describe(), needs })
}

/// A stored user. `password_hash` is an argon2 PHC string, or empty for "no password" (only
/// `root` before a password is configured; accepted on loopback connections only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserMeta {
    pub name: String,
    pub role: String,
    pub password_hash: String,
    pub created_at_ms: i64,
    /// The SCRAM-SHA-256 credential of the PostgreSQL protocol, set with the password (users
    /// created before it existed have none until their password is set again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<ScramCredential>,
}

/// The iteration count of new SCRAM credentials (PostgreSQL's default).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// What a SCRAM-SHA-256 server needs of a password (RFC 5802), as PostgreSQL stores it: a random
/// salt, the iteration count, `StoredKey = H(HMAC(SaltedPassword, "Client Key"))` and
/// `ServerKey = HMAC(SaltedPassword, "Server Key")`, base64-encoded. The keys verify a client's
/// proof and sign the server's answer, but do not log in: a client needs the password (or the
/// salted password, which is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub salt: String,
    pub iterations: u32,
    #[serde(default)]
    pub stored_key: String,
    #[serde(default)]
    pub server_key: String,
    /// Data dirs from before this release stored the salted password itself; [`Users::load`]
    /// replaces it with the keys.
    #[serde(default, skip_serializing)]
    pub salted_password: Option<String>,
}

/// `(StoredKey, ServerKey)` of a salted password.
fn scram_keys(salted_password: &[u8]) -> ([u8; 32], [u8; 32]) {
    use hmac::{Hmac, Mac};
    let hmac = |key: &[u8], message: &[u8]| -> [u8; 32] {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        m.update(message);
        m.finalize().into_bytes().into()
    };
    let client_key = hmac(salted_password, b"Client Key");
    (Sha256::digest(client_key).into(), hmac(salted_password, b"Server Key"))
}

impl ScramCredential {
    /// A new credential for `password` with a random 16-byte salt.
    pub fn new(password: &str) -> Self {
        let mut salt = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut salt);
        Self::with_salt(password, &salt, SCRAM_ITERATIONS)
    }

    /// The credential for `password` with a given salt (deterministic: for tests).
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        // Clients normalize with SASLprep and fall back to the raw bytes when it fails.
        let normalized = stringprep::saslprep(password).map(|p| p.into_owned()).unwrap_or_else(|_| password.into());
        Self::from_salted(salt, iterations, &scram_hi(normalized.as_bytes(), salt, iterations))
    }

    fn from_salted(salt: &[u8], iterations: u32, salted_password: &[u8]) -> Self {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (stored_key, server_key) = scram_keys(salted_password);
        Self {
            salt: b64.encode(salt),
            iterations,
            stored_key: b64.encode(stored_key),
            server_key: b64.encode(server_key),
            salted_password: None,
        }
    }

    /// `(salt, StoredKey, ServerKey)` as bytes.
    pub fn decode(&self) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (salt, stored, server) =
            (b64.decode(&self.salt).ok()?, b64.decode(&self.stored_key).ok()?, b64.decode(&self.server_key).ok()?);
        (stored.len() == 32 && server.len() == 32).then_some((salt, stored, server))
    }

    /// The credential of an older data dir, with its salted password replaced by the keys.
    fn upgraded(&self) -> Option<Self> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salted = b64.decode(self.salted_password.as_ref()?).ok()?;
        Some(Self::from_salted(&b64.decode(&self.salt).ok()?, self.iterations, &salted))
    }
}

/// RFC 5802's `Hi`: PBKDF2 with HMAC-SHA-256 and one output block.
fn scram_hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mac = Hmac::<Sha256>::new_from_slice(password).expect("HMAC takes keys of any length");
    let mut u = {
        let mut m = mac.clone();
        m.update(salt);
        m.update(&1u32.to_be_bytes());
        m.finalize().into_bytes()
    };
    let mut out: [u8; 32] = u.into();
    for _ in 1..iterations {
        let mut m = mac.clone();
        m.update(&u);
        u = m.finalize().into_bytes();
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

impl UserMeta {
    pub fn role(&self) -> Role {
        Role::from_name(&self.role).unwrap_or(Role::User)
    }

    /// A short fingerprint of the password hash: changes whenever the password does, so a token
    /// that carries it dies with the old password.
    pub fn credential_tag(&self) -> String {
        let digest = Sha256::digest(self.password_hash.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The users of a database, loaded at open and kept in memory; every change is one commit.
#[derive(Debug)]
pub struct Users {
    users: RwLock<BTreeMap<String, UserMeta>>,
    /// Serializes user changes (read, check, commit, apply).
    change: Mutex<()>,
}

impl Users {
    pub fn load(store: &Store) -> Result<Self> {
        let prefix = keys::catalog_prefix(CatalogKind::User);
        let mut users = BTreeMap::new();
        let mut upgraded = Vec::new();
        for (_, v) in store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).map_err(storage_err)? {
            let mut u: UserMeta = serde_json::from_slice(&v).map_err(|e| DataFusionError::External(Box::new(e)))?;
            if let Some(scram) = u.scram.as_ref().filter(|c| c.salted_password.is_some()) {
                u.scram = scram.upgraded();
                upgraded.push(u.clone());
            }
            users.insert(u.name.clone(), u);
        }
        let users = Self { users: RwLock::new(users), change: Mutex::new(()) };
        // Salted passwords of older data dirs become keys, and the salted passwords leave the
        // store (they would log in).
        if !upgraded.is_empty() {
            for u in upgraded {
                users.commit(store, Some(&u), None)?;
            }
            store.purge_old_versions(&prefix, &keys::prefix_end(&prefix)).map_err(storage_err)?;
        }
        Ok(users)
    }

    /// Replaces the users held by those the store holds, writing nothing (see
    /// `Catalog::reload`).
    pub fn reload(&self, store: &Store) -> Result<()> {
        let prefix = keys::catalog_prefix(CatalogKind::User);
        let mut users = BTreeMap::new();
        for (_, v) in store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).map_err(storage_err)? {
            let u: UserMeta = serde_json::from_slice(&v).map_err(|e| DataFusionError::External(Box::new(e)))?;
            users.insert(u.name.clone(), u);
        }
        let _change = self.change.lock().unwrap_or_else(|e| e.into_inner());
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = users;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<UserMeta> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn principal(&self, name: &str) -> Option<Principal> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.get(name).map(|u| Principal { name: u.name.clone(), role: u.role() })
    }

    /// Calls `f` with every user, holding the users' read lock (changes wait meanwhile).
    pub fn while_read<R>(&self, f: impl FnOnce(&BTreeMap<String, UserMeta>) -> R) -> R {
        f(&self.users.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn list(&self) -> Vec<UserMeta> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    fn commit(&self, store: &Store, put: Option<&UserMeta>, delete: Option<&str>) -> Result<()> {
        let mut commit = Commit::default();
        if let Some(u) = put {
            let json = serde_json::to_vec(u).map_err(|e| DataFusionError::External(Box::new(e)))?;
            commit.batch.put(keys::catalog_key(CatalogKind::User, &u.name), json);
        }
        if let Some(name) = delete {
            commit.batch.delete(keys::catalog_key(CatalogKind::User, name));
        }
        store.commit(commit).map_err(storage_err)?;
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = put {
            users.insert(u.name.clone(), u.clone());
        }
        if let Some(name) = delete {
            users.remove(name);
        }
        Ok(())
    }

    /// Creates `root` (role system) on a new data dir, and sets its password when it has none
    /// and one is configured. Returns whether root is left without a password.
    pub fn ensure_root(&self, store: &Store, password: Option<&str>) -> Result<bool> {
        let _change = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let password = password.filter(|p| !p.is_empty());
        let hash = password.map(hash_password).transpose()?.unwrap_or_default();
        let scram = password.map(ScramCredential::new);
        match self.get(ROOT_USER) {
            None => {
                let root = UserMeta {
                    name: ROOT_USER.to_owned(),
                    role: Role::System.as_str().to_owned(),
                    password_hash: hash.clone(),
                    created_at_ms: now_ms(),
                    scram,
                };
                self.commit(store, Some(&root), None)?;
            }
            Some(mut root) if root.password_hash.is_empty() && !hash.is_empty() => {
                root.password_hash = hash.clone();
                root.scram = scram;
                self.commit(store, Some(&root), None)?;
            }
            // A data dir from before SCRAM: the configured password, if it is root's, gives
            // root its SCRAM credential.
            Some(mut root) if root.scram.is_none() && password.is_some_and(|p| verify_hash(&root.password_hash, p)) => {
                root.scram = scram;
                self.commit(store, Some(&root), None)?;
            }
            Some(root) => return Ok(root.password_hash.is_empty()),
        }
        Ok(hash.is_empty())
    }

    /// Checks a user's password. An empty stored password matches only an empty password from a
    /// loopback connection. Returns the principal, or `None` for a wrong name or password.
    /// Slow on purpose (argon2): call it off the async workers.
    pub fn verify(&self, name: &str, password: &str, loopback: bool) -> Option<Principal> {
        let Some(user) = self.get(name) else {
            // An unknown user costs the same argon2 verification as a known one, so the time
            // of the answer does not tell which names exist.
            static UNKNOWN_USER_HASH: std::sync::LazyLock<String> =
                std::sync::LazyLock::new(|| hash_password("the password of no user").unwrap_or_default());
            verify_hash(&UNKNOWN_USER_HASH, password);
            return None;
        };
        let ok = if user.password_hash.is_empty() {
            loopback && password.is_empty()
        } else {
            verify_hash(&user.password_hash, password)
        };
        ok.then(|| Principal { name: user.name.clone(), role: user.role() })
    }

    /// Runs a user statement as `principal` (who has been checked for [`Action::ManageUsers`],
    /// except a user changing their own password).
    pub fn execute(&self, store: &Store, principal: &Principal, stmt: &UserStatement) -> Result<String> {
        let _change = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let name = stmt.name();
        let existing = self.get(name);
        // Only a system user may create, change or drop system users, or grant role system.
        let touches_system = existing.as_ref().is_some_and(|u| u.role() == Role::System)
            || matches!(stmt, UserStatement::Create(c) if c.role == Role::System)
            || matches!(stmt, UserStatement::Alter(a) if a.action == AlterUserAction::SetRole(Role::System));
        let own_password = matches!(stmt, UserStatement::Alter(a) if a.name == principal.name
            && matches!(a.action, AlterUserAction::SetPassword(_)));
        if touches_system && principal.role != Role::System && !own_password {
            return Err(DataFusionError::External(Box::new(PermissionDenied {
                user: principal.name.clone(),
                role: principal.role,
                what: "manage users with role system",
                needs: "system",
            })));
        }
        match stmt {
            UserStatement::Create(c) => {
                if existing.is_some() {
                    if c.if_not_exists {
                        return Ok(format!("user {name} already exists, skipping"));
                    }
                    return plan_err!("user {name} already exists");
                }
                check_password(&c.password)?;
                let user = UserMeta {
                    name: name.to_owned(),
                    role: c.role.as_str().to_owned(),
                    password_hash: hash_password(&c.password)?,
                    created_at_ms: now_ms(),
                    scram: Some(ScramCredential::new(&c.password)),
                };
                self.commit(store, Some(&user), None)?;
                Ok(format!("created user {name} with role {}", c.role))
            }
            UserStatement::Alter(a) => {
                let Some(mut user) = existing else { return plan_err!("user {name} does not exist") };
                match &a.action {
                    AlterUserAction::SetPassword(p) => {
                        check_password(p)?;
                        user.password_hash = hash_password(p)?;
                        user.scram = Some(ScramCredential::new(p));
                        self.commit(store, Some(&user), None)?;
                        Ok(format!("changed the password of user {name}"))
                    }
                    AlterUserAction::SetRole(role) => {
                        if user.role() == Role::System && *role != Role::System {
                            self.check_not_last_system(name)?;
                        }
                        user.role = role.as_str().to_owned();
                        self.commit(store, Some(&user), None)?;
                        Ok(format!("user {name} now has role {role}"))
                    }
                }
            }
            UserStatement::Drop(d) => {
                let Some(user) = existing else {
                    if d.if_exists {
                        return Ok(format!("user {name} does not exist, skipping"));
                    }
                    return plan_err!("user {name} does not exist");
                };
                if name == principal.name {
                    return plan_err!("user {name} cannot drop itself");
                }
                if user.role() == Role::System {
                    self.check_not_last_system(name)?;
                }
                self.commit(store, None, Some(name))?;
                Ok(format!("dropped user {name}"))
            }
        }
    }

    fn check_not_last_system(&self, name: &str) -> Result<()> {
        let others = self.list().iter().filter(|u| u.name != name && u.role() == Role::System).count();
        if others == 0 {
            return plan_err!("user {name} is the last user with role system: create another one first");
        }
        Ok(())
    }
}

/// The longest password, in bytes (argon2 accepts more; a bound keeps hashing cheap to refuse).
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn check_password(password: &str) -> Result<()> {
    if password.is_empty() {
        return plan_err!("a password cannot be empty");
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return plan_err!("a password can have at most {MAX_PASSWORD_BYTES} bytes");
    }
    Ok(())
}

fn verify_hash(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    match Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(h) => Ok(h.to_string()),
        Err(e) => exec_err!("cannot hash the password: {e}"),
    }
}
