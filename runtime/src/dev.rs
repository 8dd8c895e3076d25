//! Dev mode: what `heartline` does when `auth.jwt_secret` is empty, so that the README's
//! run command gives a working chat on a fresh machine.
//!
//! It generates a random secret (never reused: tokens from a previous run stop working),
//! makes sure the conversation `dev` exists with two users, `dev:customer` and
//! `dev2:agent`, and signs a 24-hour token for each so two people (or two browser tabs)
//! can talk at once.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use heartline_core::gateway::auth::{self, Claims};

use crate::config::Config;
use crate::settings;
use crate::store::{Member, Store, StoreError, StoreLock};

/// The conversation dev mode creates.
pub const DEV_CONVERSATION: &str = "dev";

/// Lifetime of a dev token.
pub const DEV_TOKEN_SECS: u64 = 24 * 3600;

/// Why dev mode could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// No randomness for the secret.
    #[error("cannot generate a secret: {0}")]
    Random(String),
    /// The store could not be written.
    #[error("cannot create the dev conversation: {0}")]
    Store(#[from] StoreError),
    /// A token could not be signed.
    #[error("cannot sign a dev token: {0}")]
    Token(#[from] auth::AuthError),
}

/// A dev user and a token for it.
#[derive(Debug, Clone)]
pub struct DevUser {
    /// User id.
    pub user_id: String,
    /// User type.
    pub user_type: String,
    /// A signed token, valid for [`DEV_TOKEN_SECS`].
    pub token: String,
}

/// Sets a random secret in `config`, creates the dev conversation if the store has none
/// of that id, and signs the tokens. A conversation `dev` already stored is left as it is:
/// a store that holds real data (the secret was forgotten) keeps it untouched.
pub fn prepare(config: &mut Config) -> Result<Vec<DevUser>, DevError> {
    let secret = settings::random_hex(32).map_err(|e| DevError::Random(e.to_string()))?;
    config.auth.jwt_secret = secret;
    let users = [("dev", "customer"), ("dev2", "agent")];
    let path = Path::new(&config.store.path);
    // Not while a server runs on it (that server's start takes the same lock).
    let _lock = StoreLock::acquire(path)?;
    let mut store = Store::open(path)?;
    let members: Vec<Member> = users.iter().map(|(u, t)| Member::new(*u, *t)).collect();
    match store.conversation(DEV_CONVERSATION)? {
        None => {
            store.put_conversation(DEV_CONVERSATION, &members)?;
        }
        Some(kept) if kept.members != members => tracing::warn!(
            conversation = DEV_CONVERSATION,
            "dev mode: the store already has this conversation with other members; left as it is"
        ),
        Some(_) => {}
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = vec![];
    for (user_id, user_type) in users {
        let claims = Claims {
            sub: user_id.to_owned(),
            user_type: user_type.to_owned(),
            exp: now + DEV_TOKEN_SECS,
            role: None,
        };
        let token = auth::issue(config.auth.jwt_secret.as_bytes(), &claims)?;
        out.push(DevUser {
            user_id: user_id.to_owned(),
            user_type: user_type.to_owned(),
            token,
        });
    }
    Ok(out)
}

/// The text printed at start in dev mode.
pub fn banner(users: &[DevUser], addr: &str, namespace: &str) -> String {
    let mut s = String::new();
    s.push_str(
        "Dev mode: auth.jwt_secret is empty, so a random secret was generated for this run.\n",
    );
    s.push_str(&format!(
        "Conversation \"{DEV_CONVERSATION}\" has the members below; tokens are valid for 24 h.\n\n"
    ));
    for u in users {
        s.push_str(&format!(
            "  {}:{}  token: {}\n",
            u.user_id, u.user_type, u.token
        ));
    }
    s.push_str("\nOr chat in a browser, one window per user:\n");
    for u in users {
        s.push_str(&format!(
            "  http://{addr}/?conversation={DEV_CONVERSATION}&autoconnect&token={}\n",
            u.token
        ));
    }
    s.push_str(&format!(
        "\nConnect with socket.io-client:\n  const socket = io(\"http://{addr}{namespace}\", {{ auth: {{ token: \"<token>\" }} }});\n  socket.emit(\"conversation:join\", {{ conversationId: \"{DEV_CONVERSATION}\" }}, console.log);\n  socket.emit(\"message:send\", {{ conversationId: \"{DEV_CONVERSATION}\", content: \"hello\", tempId: \"t1\" }}, console.log);\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_at(path: &Path) -> Config {
        let mut config = Config::default();
        config.store.path = path.to_string_lossy().into_owned();
        config
    }

    #[test]
    fn dev_mode_creates_its_conversation_in_an_empty_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.db");
        let mut config = config_at(&path);
        let users = prepare(&mut config).expect("prepare");
        assert_eq!(users.len(), 2);
        assert!(!config.auth.jwt_secret.is_empty());
        let conv = Store::open(&path)
            .expect("store")
            .conversation(DEV_CONVERSATION)
            .expect("read")
            .expect("created");
        assert!(conv.has_member("dev", "customer") && conv.has_member("dev2", "agent"));
    }

    #[test]
    fn dev_mode_leaves_a_stored_conversation_of_its_id_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("real.db");
        let real = vec![
            Member::new("alice", "customer"),
            Member::new("bob", "agent"),
        ];
        Store::open(&path)
            .expect("store")
            .put_conversation(DEV_CONVERSATION, &real)
            .expect("put");
        prepare(&mut config_at(&path)).expect("prepare");
        let conv = Store::open(&path)
            .expect("store")
            .conversation(DEV_CONVERSATION)
            .expect("read")
            .expect("kept");
        assert_eq!(conv.members, real);
    }
}
