//! A connect with a missing, forged or expired token never opens the namespace.
//!
//! Seen on the wire of each hostile connection that presented such a token and then sent
//! a join and a send as if connected: the server may answer with a CONNECT_ERROR and
//! close, but never with a namespace CONNECT (`40`), an event or an ack, whatever faults
//! delay, reorder or cut its packets.

use std::collections::BTreeSet;

use super::Finding;

/// The checker's name.
pub const NAME: &str = "bad-token-refused";

/// The connections that presented a bad token.
#[derive(Debug, Default)]
pub struct BadToken {
    links: BTreeSet<u64>,
}

impl BadToken {
    /// Connection `link` presents a bad token.
    pub fn presented(&mut self, link: u64) {
        self.links.insert(link);
    }

    /// Connection `link` is gone.
    pub fn closed(&mut self, link: u64) {
        self.links.remove(&link);
    }

    /// A frame from the server reached `link`.
    pub fn received(&self, link: u64, text: &str) -> Finding {
        if !self.links.contains(&link) {
            return Ok(());
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
        check.presented(4);
        assert!(check
            .received(4, r#"44/chat,{"message":"invalid token"}"#)
            .is_ok());
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
