//! Every namespace connect the server accepts is followed, on the same link and as the
//! very next frame, by `connection:success {userId, userType, socketId, serverTime}`:
//! the user the token named, the Socket.IO id the CONNECT answer gave the client, and the
//! server's wall clock in milliseconds.
//!
//! The other checkers that start watching a link at `connection:success` (heartbeat
//! cadence, the wire's count of a user's connections, presence frames) have nothing to
//! watch on a link that never gets it; the client counts itself connected on the CONNECT
//! answer alone. So a server that skipped it (for a replacement, say) would pass them all.
//!
//! The server writes both in one step, so nothing can come between them on a link. A link
//! that closes in between (dropped as a slow consumer when the second frame did not fit) is
//! forgotten.

use std::collections::BTreeMap;

use heartline_core::Instant;
use serde_json::Value;

use super::wire::chat_data;
use super::Finding;

/// The checker's name.
pub const NAME: &str = "connection-success";

/// See the module docs.
#[derive(Debug, Default)]
pub struct ConnectionSuccess {
    wall_epoch_ms: u64,
    /// Links whose CONNECT answer went out, with the Socket.IO id it gave.
    owed: BTreeMap<u64, String>,
    /// `connection:success` frames checked.
    pub seen: u64,
}

impl ConnectionSuccess {
    /// `wall_epoch_ms`: the server's wall clock at the simulation's zero.
    pub fn new(wall_epoch_ms: u64) -> Self {
        ConnectionSuccess {
            wall_epoch_ms,
            ..ConnectionSuccess::default()
        }
    }

    /// The server's wall clock was stepped: it now reads `wall_epoch_ms` at the simulated
    /// clock's zero.
    pub fn stepped(&mut self, wall_epoch_ms: u64) {
        self.wall_epoch_ms = wall_epoch_ms;
    }

    /// The server wrote `text` at `now` on `link`, whose client presented a token of
    /// `user` (`id:type`), if known.
    pub fn sent(&mut self, now: Instant, link: u64, user: Option<&str>, text: &str) -> Finding {
        if let Some(sid) = self.owed.remove(&link) {
            let wall = self.wall_epoch_ms + now.as_millis();
            return self.check(link, &sid, user, wall, text);
        }
        if let Some(answer) = text.strip_prefix("40/chat,") {
            let sid = serde_json::from_str::<Value>(answer)
                .ok()
                .and_then(|v| v["sid"].as_str().map(str::to_owned));
            match sid {
                Some(sid) => {
                    self.owed.insert(link, sid);
                }
                None => return Err((NAME, format!("ws{link}: a CONNECT answer {text}"))),
            }
        }
        Ok(())
    }

    fn check(
        &mut self,
        link: u64,
        sid: &str,
        user: Option<&str>,
        wall: u64,
        text: &str,
    ) -> Finding {
        let success = chat_data(text).and_then(|(kind, id, data)| {
            (kind == b'2' && id.is_none() && data[0] == "connection:success")
                .then(|| data[1].clone())
        });
        let Some(p) = success else {
            return Err((
                NAME,
                format!("ws{link}: after its CONNECT answer, {text} instead of connection:success"),
            ));
        };
        self.seen += 1;
        let named = format!(
            "{}:{}",
            p["userId"].as_str().unwrap_or("?"),
            p["userType"].as_str().unwrap_or("?")
        );
        let problem = if p["socketId"].as_str() != Some(sid) {
            Some(format!(
                "socketId {} where the CONNECT gave {sid}",
                p["socketId"]
            ))
        } else if p["serverTime"].as_u64() != Some(wall) {
            Some(format!(
                "serverTime {} where the server's clock is {wall}",
                p["serverTime"]
            ))
        } else if user.is_some_and(|u| u != named) {
            Some(format!(
                "user {named} on a connection of {}",
                user.unwrap_or("")
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => Err((NAME, format!("ws{link}: connection:success with {problem}"))),
            None => Ok(()),
        }
    }

    /// `link` closed.
    pub fn gone(&mut self, link: u64) {
        self.owed.remove(&link);
    }

    /// The server died: its links are gone with it.
    pub fn forget_all(&mut self) {
        self.owed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn success(user: &str, kind: &str, sid: &str, time: u64) -> String {
        format!(
            r#"42/chat,["connection:success",{{"userId":"{user}","userType":"{kind}","socketId":"{sid}","serverTime":{time}}}]"#
        )
    }

    #[test]
    fn a_connect_answer_is_followed_by_its_success_with_the_users_sid_and_clock() {
        let mut c = ConnectionSuccess::new(1_000);
        let u = Some("alice:customer");
        c.sent(at(5), 1, u, r#"40/chat,{"sid":"s1"}"#)
            .expect("answer");
        c.sent(at(5), 1, u, &success("alice", "customer", "s1", 1_005))
            .expect("as it should be");
        assert_eq!(c.seen, 1);
        // Anything else after the answer, or a wrong field, is a violation.
        for (second, why) in [
            (
                r#"42/chat,["heartbeat",{"timestamp":1005}]"#.to_owned(),
                "missing",
            ),
            (success("alice", "customer", "other", 1_005), "socketId"),
            (success("alice", "customer", "s1", 1_004), "serverTime"),
            (success("bob", "agent", "s1", 1_005), "user"),
        ] {
            c.sent(at(5), 2, u, r#"40/chat,{"sid":"s1"}"#)
                .expect("answer");
            assert!(c.sent(at(5), 2, u, &second).is_err(), "{why}");
        }
        // A clock step moves the expected serverTime with it.
        c.stepped(50_000);
        c.sent(at(10), 3, u, r#"40/chat,{"sid":"s3"}"#)
            .expect("answer");
        c.sent(at(10), 3, u, &success("alice", "customer", "s3", 50_010))
            .expect("the stepped clock");
        // A link closed between the two is forgotten.
        c.sent(at(10), 4, u, r#"40/chat,{"sid":"s4"}"#)
            .expect("answer");
        c.gone(4);
        c.sent(at(11), 4, u, r#"42/chat,["heartbeat",{}]"#)
            .expect("nothing owed");
    }
}
