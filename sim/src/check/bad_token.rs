//! A connect with a missing, forged or expired token never opens the namespace.
//!
//! Seen on the wire of each hostile connection that presented such a token and then sent
//! a join and a send as if connected: the server may answer with a CONNECT_ERROR and
//! close, but never with a namespace CONNECT (`40`), an event or an ack, whatever faults
//! delay, reorder or cut its packets. A CONNECT_ERROR says what the contract says:
//! `Authentication required` for no token, `Invalid authentication token` for any other.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Finding;

/// The checker's name.
pub const NAME: &str = "bad-token-refused";

/// The CONNECT_ERROR message for a connect with no token.
pub const MISSING: &str = "Authentication required";

/// The CONNECT_ERROR message for any other bad token.
pub const INVALID: &str = "Invalid authentication token";

/// The connections that presented a bad token, with the refusal each is owed.
#[derive(Debug, Default)]
pub struct BadToken {
    links: BTreeMap<u64, &'static str>,
}

impl BadToken {
    /// Connection `link` presents a bad token, to be refused with `message` ([`MISSING`]
    /// or [`INVALID`]).
    pub fn presented(&mut self, link: u64, message: &'static str) {
        self.links.insert(link, message);
    }

    /// Connection `link` is gone.
    pub fn closed(&mut self, link: u64) {
        self.links.remove(&link);
    }

    /// A frame from the server reached `link`.
    pub fn received(&self, link: u64, text: &str) -> Finding {
        let Some(owed) = self.links.get(&link) else {
            return Ok(());
        };
        if let Some(refusal) = text.strip_prefix("44/chat,") {
            let message = serde_json::from_str::<Value>(refusal)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned));
            if message.as_deref() != Some(*owed) {
                return Err((
                    NAME,
                    format!("hostile link {link} refused with {refusal}, not \"{owed}\""),
                ));
            }
        }
        if text.starts_with("40/chat") {
            return Err((
                NAME,
                format!("hostile link {link} with a bad token connected: {text}"),
            ));
        }
        if text.starts_with("42/chat") {
            return Err((
                NAME,
                format!("hostile link {link} with a bad token got an event: {text}"),
            ));
        }
        if text.starts_with("43/chat") {
            return Err((
                NAME,
                format!("hostile link {link} with a bad token was answered: {text}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_may_reach_a_bad_token() {
        let mut check = BadToken::default();
        check.presented(4, INVALID);
        assert!(check
            .received(4, r#"44/chat,{"message":"Invalid authentication token"}"#)
            .is_ok());
        assert!(check
            .received(4, r#"44/chat,{"message":"Authentication required"}"#)
            .is_err());
        assert!(check
            .received(4, r#"44/chat,{"message":"invalid token"}"#)
            .is_err());
        assert!(check.received(4, r#"0{"sid":"a"}"#).is_ok());
        assert!(check.received(4, r#"40/chat,{"sid":"b"}"#).is_err());
        assert!(check.received(4, r#"42/chat,["heartbeat",{}]"#).is_err());
        assert!(check.received(4, r#"43/chat,1[{"ok":true}]"#).is_err());
        assert!(
            check.received(5, r#"40/chat,{"sid":"b"}"#).is_ok(),
            "not a bad token"
        );
        check.closed(4);
        assert!(check.received(4, r#"40/chat,{"sid":"b"}"#).is_ok());
    }
}
