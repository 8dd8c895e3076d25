//! A connection whose token expires is told so at its `exp` (`auth:expired`), never before,
//! and is closed `auth.grace_ms` after that unless the server accepted an `auth:refresh`
//! with a later token in between; a refreshed connection is not closed for the old token.
//!
//! Watched from the server's end of the wire: the token a link's CONNECT carried (its
//! `exp` known from the tokens the world minted), the `auth:expired` frames the server
//! sent on it, the `auth:refresh` requests it received and the `{ok:true}` acks it sent
//! back for them, and its closes with their reasons. A connection's deadline is its token's
//! `exp` until it is told, then the grace's end ([`Deadlines`]); an expiry close or
//! `auth:expired` that itself comes at the wrong time is a violation as it is seen. Links with a token the world did not
//! mint (hostile actors') are not watched.
//!
//! `exp` is a time on the server's wall clock: when that clock is stepped, every token
//! not yet told runs out when the stepped clock reaches its `exp` (at once, for those it
//! passed), while a grace already begun is the server's own monotonic time.

use std::collections::BTreeMap;

use heartline_core::Instant;
use serde_json::Value;

use super::deadlines::Deadlines;
use super::wire::chat_packet;
use super::Finding;

/// The checker's name.
pub const NAME: &str = "token-expiry";

/// One connection's watch.
#[derive(Clone, Debug, Default)]
struct Watch {
    /// The token's `exp`, Unix milliseconds.
    exp_ms: u64,
    /// When the server sent `auth:expired` for that `exp`.
    told: Option<Instant>,
    /// `auth:refresh` requests received and not yet answered: ack id to the new `exp`.
    refreshes: BTreeMap<u64, u64>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct TokenExpiry {
    grace_ms: u64,
    epoch_ms: u64,
    /// When the server's wall clock was last stepped.
    stepped_at: Instant,
    /// `exp` of every token the world minted, Unix milliseconds.
    minted: BTreeMap<String, u64>,
    /// The `exp` a link's CONNECT carried, until the server answers it.
    connecting: BTreeMap<u64, u64>,
    links: BTreeMap<u64, Watch>,
    deadlines: Deadlines,
    /// `auth:expired` frames sent.
    pub told: u64,
    /// Refreshes the server accepted.
    pub refreshed: u64,
    /// Connections closed for an expired token.
    pub closed: u64,
    /// A frame or close that came at the wrong time, as first seen.
    wrong: Option<String>,
}

impl TokenExpiry {
    /// `grace_ms`: `auth.grace_ms`; `epoch_ms`: the Unix time of the simulated clock's zero
    /// on the server's wall clock.
    pub fn new(grace_ms: u64, epoch_ms: u64) -> Self {
        TokenExpiry {
            grace_ms,
            epoch_ms,
            ..TokenExpiry::default()
        }
    }

    /// The world signed `token`, which expires at `exp_s` (Unix seconds).
    pub fn minted(&mut self, token: &str, exp_s: u64) {
        self.minted
            .insert(token.to_owned(), exp_s.saturating_mul(1000));
    }

    /// The server's wall clock was stepped at `now`: it now reads `epoch_ms` at the
    /// simulated clock's zero. The tokens not yet told run out by it, those it passed from
    /// `now` on.
    pub fn stepped(&mut self, now: Instant, epoch_ms: u64) {
        self.epoch_ms = epoch_ms;
        self.stepped_at = now;
        let links: Vec<u64> = self.links.keys().copied().collect();
        for link in links {
            if let Some(w) = self.links.get(&link).cloned() {
                self.set(link, w);
            }
        }
    }

    fn exp_of(&self, token: &str) -> Option<u64> {
        self.minted.get(token).copied()
    }

    /// When the server's wall clock, as it now runs, reads `exp_ms`.
    fn instant_of(&self, exp_ms: u64) -> Instant {
        Instant::from_millis(exp_ms.saturating_sub(self.epoch_ms))
    }

    fn deadline(&self, w: &Watch) -> Instant {
        match w.told {
            Some(t) => t.add_ms(self.grace_ms),
            None => self.instant_of(w.exp_ms).max(self.stepped_at),
        }
    }

    fn set(&mut self, link: u64, w: Watch) {
        self.deadlines.set(link, self.deadline(&w));
        self.links.insert(link, w);
    }

    fn wrong(&mut self, what: String) {
        if self.wrong.is_none() {
            self.wrong = Some(what);
        }
    }

    /// The server received a text frame on `link`.
    pub fn received(&mut self, link: u64, text: &str) {
        let Some((kind, id, payload)) = chat_packet(text) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<Value>(payload) else {
            return;
        };
        match kind {
            b'0' => {
                let exp = v["token"].as_str().and_then(|t| self.exp_of(t));
                match exp {
                    Some(exp) => self.connecting.insert(link, exp),
                    None => self.connecting.remove(&link),
                };
            }
            b'2' if v[0] == "auth:refresh" => {
                let (Some(id), Some(exp)) =
                    (id, v[1]["token"].as_str().and_then(|t| self.exp_of(t)))
                else {
                    return;
                };
                if let Some(w) = self.links.get_mut(&link) {
                    w.refreshes.insert(id, exp);
                }
            }
            _ => {}
        }
    }

    /// The server sent a text frame on `link` at `now`.
    pub fn sent(&mut self, now: Instant, link: u64, text: &str) {
        let Some((kind, id, payload)) = chat_packet(text) else {
            return;
        };
        match kind {
            // The CONNECT's answer: the connection holds the token it carried.
            b'0' => {
                if let Some(exp_ms) = self.connecting.remove(&link) {
                    self.set(
                        link,
                        Watch {
                            exp_ms,
                            ..Watch::default()
                        },
                    );
                }
            }
            b'2' if payload.starts_with("[\"auth:expired\"") => {
                let Some(mut w) = self.links.get(&link).cloned() else {
                    return;
                };
                self.told += 1;
                let exp = self.instant_of(w.exp_ms);
                if now < exp {
                    self.wrong(format!(
                        "ws{link} told auth:expired at {now}, before its token's exp {exp}"
                    ));
                }
                if w.told.is_none() {
                    w.told = Some(now);
                    self.set(link, w);
                }
            }
            b'3' => {
                let Some(id) = id else { return };
                let Some(mut w) = self.links.get(&link).cloned() else {
                    return;
                };
                let Some(exp) = w.refreshes.remove(&id) else {
                    return;
                };
                let ok = serde_json::from_str::<Value>(payload)
                    .is_ok_and(|v| v[0]["ok"] == Value::Bool(true));
                if ok {
                    self.refreshed += 1;
                    w.exp_ms = exp;
                    w.told = None;
                }
                self.set(link, w);
            }
            _ => {}
        }
    }

    /// The server's side of `link` closed at `now`; `expired` if for an expired token.
    pub fn closed(&mut self, now: Instant, link: u64, expired: bool) {
        self.connecting.remove(&link);
        let Some(w) = self.links.remove(&link) else {
            return;
        };
        let deadline = self.deadline(&w);
        self.deadlines.remove(link);
        if now > deadline {
            self.wrong(format!(
                "ws{link} still open at {now}, past {deadline} ({})",
                match w.told {
                    Some(t) => format!("told auth:expired at {t}, grace {}ms", self.grace_ms),
                    None => format!("token exp {}, never told", self.instant_of(w.exp_ms)),
                }
            ));
        }
        if expired {
            self.closed += 1;
            match w.told {
                Some(t) if now >= t.add_ms(self.grace_ms) => {}
                Some(t) => self.wrong(format!(
                    "ws{link} closed for its token at {now}, before the grace that began at \
                     {t} ended"
                )),
                None => {
                    let exp = self.instant_of(w.exp_ms);
                    self.wrong(format!(
                        "ws{link} closed for its token at {now}, though it holds one valid until \
                         {exp}"
                    ))
                }
            }
        }
    }

    /// The server died: its connections are gone with it.
    pub fn forget_all(&mut self) {
        self.connecting.clear();
        self.links.clear();
        self.deadlines.clear();
    }

    /// Checks the earliest deadline against `now`.
    pub fn check(&mut self, now: Instant) -> Finding {
        if let Some(what) = self.wrong.take() {
            return Err((NAME, what));
        }
        let Some((_, link)) = self.deadlines.overdue(now) else {
            return Ok(());
        };
        let Some(w) = self.links.get(&link) else {
            return Ok(());
        };
        let what = match w.told {
            None => format!(
                "ws{link} holds a token that expired at {}, not told auth:expired by {now}",
                self.instant_of(w.exp_ms)
            ),
            Some(t) => format!(
                "ws{link} told auth:expired at {t}, still open at {now} (grace {}ms)",
                self.grace_ms
            ),
        };
        // Reported once: the watch goes.
        self.deadlines.remove(link);
        self.links.remove(&link);
        Err((NAME, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u64 = 1_000_000;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// A watcher with a token "t5" that expires 5 s after the epoch, connected on ws1.
    fn connected() -> TokenExpiry {
        let mut c = TokenExpiry::new(1_000, EPOCH);
        c.minted("t5", EPOCH / 1000 + 5);
        c.minted("t9", EPOCH / 1000 + 9);
        c.received(1, r#"40/chat,{"token":"t5"}"#);
        c.sent(at(10), 1, r#"40/chat,{"sid":"x"}"#);
        c
    }

    #[test]
    fn told_at_exp_and_closed_after_the_grace_is_right() {
        let mut c = connected();
        assert_eq!(c.check(at(5_000)), Ok(()));
        c.sent(at(5_000), 1, r#"42/chat,["auth:expired",{}]"#);
        assert_eq!(c.check(at(6_000)), Ok(()));
        c.closed(at(6_000), 1, true);
        assert_eq!(c.check(at(9_000)), Ok(()));
        assert_eq!((c.told, c.closed), (1, 1));
    }

    #[test]
    fn not_told_or_not_closed_in_time_is_a_violation() {
        let mut c = connected();
        assert!(c.check(at(5_001)).is_err(), "never told");
        let mut c = connected();
        c.sent(at(5_000), 1, r#"42/chat,["auth:expired",{}]"#);
        assert!(c.check(at(6_001)).is_err(), "never closed");
    }

    #[test]
    fn told_early_or_closed_early_is_a_violation() {
        let mut c = connected();
        c.sent(at(4_999), 1, r#"42/chat,["auth:expired",{}]"#);
        assert!(c.check(at(4_999)).is_err());
        let mut c = connected();
        c.sent(at(5_000), 1, r#"42/chat,["auth:expired",{}]"#);
        c.closed(at(5_999), 1, true);
        assert!(c.check(at(5_999)).is_err());
    }

    #[test]
    fn an_accepted_refresh_moves_the_deadline_and_a_refused_one_does_not() {
        let mut c = connected();
        c.sent(at(5_000), 1, r#"42/chat,["auth:expired",{}]"#);
        c.received(1, r#"42/chat,7["auth:refresh",{"token":"t9"}]"#);
        c.sent(at(5_100), 1, r#"43/chat,7[{"ok":true}]"#);
        assert_eq!(c.check(at(8_000)), Ok(()), "refreshed until 9 s");
        // Closed for the old token after the refresh: wrong.
        c.closed(at(8_000), 1, true);
        assert!(c.check(at(8_000)).is_err());

        let mut c = connected();
        c.sent(at(5_000), 1, r#"42/chat,["auth:expired",{}]"#);
        c.received(1, r#"42/chat,8["auth:refresh",{"token":"t9"}]"#);
        c.sent(at(5_100), 1, r#"43/chat,8[{"ok":false,"error":"no"}]"#);
        assert!(c.check(at(6_001)).is_err(), "the grace still ends at 6 s");
    }

    #[test]
    fn unknown_tokens_and_crashes_are_not_watched() {
        let mut c = TokenExpiry::new(1_000, EPOCH);
        c.received(2, r#"40/chat,{"token":"forged"}"#);
        c.sent(at(10), 2, r#"40/chat,{"sid":"y"}"#);
        assert_eq!(c.check(at(1_000_000)), Ok(()));
        let mut c = connected();
        c.forget_all();
        assert_eq!(c.check(at(1_000_000)), Ok(()));
    }
}
