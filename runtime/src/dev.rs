//! Dev mode: what `heartline` does when `auth.jwt_secret` is empty, so that the README's
//! run command gives a working chat on a fresh machine.
//!
//! It generates a random secret (never reused: tokens from a previous run stop working),
//! makes sure the conversation `dev` exists with two users, `dev:customer` and
//! `dev2:agent`, and signs a 24-hour token for each so two people (or two browser tabs)
//! can talk at once.

use std::time::{SystemTime, UNIX_EPOCH};

use heartline_core::gateway::auth::{self, Claims};

use crate::config::Config;
use crate::settings;
use crate::store::{Member, Store, StoreError};

/// The conversation dev mode creates.
pub const DEV_CONVERSATION: &str = "dev";

/// The dev users, as (user id, user type).
const DEV_USERS: [(&str, &str); 2] = [("dev", "customer"), ("dev2", "agent")];

/// Lifetime of a dev token.
pub const DEV_TOKEN_SECS: u64 = 24 * 3600;

/// Why dev mode could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// No randomness for the secret.
    #[error("cannot generate a secret: {0}")]
    Random(String),
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

/// Sets a random secret in `config` and signs the tokens. The dev conversation is put by
/// [`put_conversation`], which the server runs once it holds its port and its store.
pub fn prepare(config: &mut Config) -> Result<Vec<DevUser>, DevError> {
    let secret = settings::random_hex(32).map_err(|e| DevError::Random(e.to_string()))?;
    config.auth.jwt_secret = secret;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = vec![];
    for (user_id, user_type) in DEV_USERS {
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

/// Creates the dev conversation if the store has none of that id. A conversation `dev`
/// already stored is left as it is: a store that holds real data (the secret was
/// forgotten) keeps it untouched.
pub fn put_conversation(store: &mut Store) -> Result<(), StoreError> {
    let members: Vec<Member> = DEV_USERS.iter().map(|(u, t)| Member::new(*u, *t)).collect();
    match store.conversation(DEV_CONVERSATION)? {
        None => store
            .put_conversation(DEV_CONVERSATION, &members)
            .map(|_| ()),
        Some(kept) if kept.members != members => {
            tracing::warn!(
                conversation = DEV_CONVERSATION,
                "dev mode: the store already has this conversation with other members; left as it is"
            );
            Ok(())
        }
        Some(_) => Ok(()),
    }
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

    #[test]
    fn dev_mode_sets_a_secret_its_tokens_are_signed_with() {
        let mut config = Config::default();
        let users = prepare(&mut config).expect("prepare");
        assert_eq!(users.len(), 2);
        assert!(!config.auth.jwt_secret.is_empty());
        for u in &users {
            let verified = auth::Verifier::new(config.auth.jwt_secret.as_bytes())
                .verify(&u.token, 0)
                .expect("signed with the secret set");
            assert_eq!(verified.claims.sub, u.user_id);
            assert_eq!(verified.claims.user_type, u.user_type);
        }
    }

    #[test]
    fn dev_mode_creates_its_conversation_in_an_empty_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("dev.db")).expect("store");
        put_conversation(&mut store).expect("put");
        let conv = store
            .conversation(DEV_CONVERSATION)
            .expect("read")
            .expect("created");
        assert!(conv.has_member("dev", "customer") && conv.has_member("dev2", "agent"));
    }

    #[test]
    fn dev_mode_leaves_a_stored_conversation_of_its_id_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("real.db")).expect("store");
        let real = vec![
            Member::new("alice", "customer"),
            Member::new("bob", "agent"),
        ];
        store
            .put_conversation(DEV_CONVERSATION, &real)
            .expect("put");
        put_conversation(&mut store).expect("put");
        let conv = store
            .conversation(DEV_CONVERSATION)
            .expect("read")
            .expect("kept");
        assert_eq!(conv.members, real);
    }
}
