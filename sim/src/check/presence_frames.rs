//! What partners are told of presence, on the wire.
//!
//! [`super::presence_flaps`] reads the server's own notices of its announcements; this
//! checker reads the `user:online` / `user:offline` frames that reach the honest clients'
//! connections, so a fan-out that goes astray cannot hide behind a correct notice:
//!
//! - a connection is told only about users who share a conversation with its user (by the
//!   workload's layout and the member lists the operator has since written, not by the
//!   gateway's membership), never about its own user: judged when the server writes the
//!   frame, by the lists as they stand then, and again when it arrives;
//! - on a connection whose `connection:success` this checker saw written, the nth frame
//!   about a user says what the nth announcement of that user to the connection's user
//!   since then said (frames keep their order on a connection, and every announcement
//!   is written to every connection of every partner in the step it is made): a lost,
//!   repeated or extra frame shows at once; on others, the frames alternate (online,
//!   offline, online...), each connection's first frame after an announcement its user
//!   was passed over for excused once;
//! - once the run has healed and gone quiet, every live connection's last frame about a
//!   user agrees with what the server last announced about that user to the connection's
//!   user (to everyone who shared a conversation with it then), and a connection that was
//!   connected (its `connection:success` sent) before that announcement was told it: an
//!   announcement that reached some devices of a partner and not others shows;
//! - and such a connection got exactly one frame about a user per announcement made to
//!   its user since it connected: a device that missed an offline and the online after it
//!   ends where one told both would, and only the count tells them apart.
//!
//! A connection that connected after a user's last transition has been told nothing about
//! it (there is no snapshot at connect), and that is not a violation. Nor is a frame its
//! server's send queue shed for it as a slow consumer ([`super::send_queue`] hands those
//! over): it counts as an announcement made to the connection, and the connection's view
//! of that user stays stale until the next one, as the contract allows.

use std::collections::{BTreeMap, BTreeSet};

use super::wire::chat_data;
use super::Finding;
use crate::workload::Layout;

/// The checker's name.
pub const NAME: &str = "presence-frames";

/// What each live connection was told, and what the server announced.
#[derive(Debug)]
pub struct PresenceFrames {
    /// The user key of each layout user, by index.
    keys: Vec<String>,
    /// Each conversation's members now (layout users).
    members: BTreeMap<String, BTreeSet<usize>>,
    /// The users each layout user shares a conversation with now (keys, itself excluded).
    partners: Vec<BTreeSet<String>>,
    /// The users each layout user has shared a conversation with at any time.
    ever: Vec<BTreeSet<String>>,
    /// (layout user, subject): an announcement of the subject was made while the user
    /// had shared a conversation with it before but did not then; to the links of that
    /// user that have had a frame about the subject since (the next frame on each may
    /// repeat the last, once).
    passed_over: BTreeMap<(usize, String), BTreeSet<u64>>,
    /// Per connection and user told about: whether the last frame said online, and how
    /// many frames about that user the connection got or had shed. A shed frame counts as
    /// told: the connection's own view then lags this record until the next frame about
    /// that user, which the contract allows; the record is what the checks read.
    told: BTreeMap<(u64, String), (bool, u64)>,
    /// Per user: the announcements of it, ascending: number, online, and the layout users
    /// it was made to.
    announced: BTreeMap<String, Vec<(u64, bool, BTreeSet<usize>)>>,
    /// Announcements made so far, by any server process.
    announcements: u64,
    /// Announcements made before the last crash: the running server process made none
    /// of them.
    crashed_at: u64,
    /// Per connection: how many announcements had been made when its
    /// `connection:success` was sent.
    connected_after: BTreeMap<u64, u64>,
}

impl PresenceFrames {
    /// Partners by `layout`.
    pub fn new(layout: &Layout) -> Self {
        let keys: Vec<String> = layout.users.iter().map(|u| u.key()).collect();
        let members = layout
            .conversations
            .iter()
            .map(|(id, users)| (id.clone(), users.iter().copied().collect()))
            .collect();
        let mut check = PresenceFrames {
            partners: vec![BTreeSet::new(); keys.len()],
            ever: vec![BTreeSet::new(); keys.len()],
            keys,
            members,
            passed_over: BTreeMap::new(),
            told: BTreeMap::new(),
            announced: BTreeMap::new(),
            announcements: 0,
            crashed_at: 0,
            connected_after: BTreeMap::new(),
        };
        check.partner_up();
        check
    }

    /// Works out who shares a conversation with whom from the member lists.
    fn partner_up(&mut self) {
        for set in &mut self.partners {
            set.clear();
        }
        for users in self.members.values() {
            for a in users {
                for b in users {
                    if a != b {
                        if let (Some(set), Some(key)) =
                            (self.partners.get_mut(*a), self.keys.get(*b))
                        {
                            set.insert(key.clone());
                        }
                    }
                }
            }
        }
        for (ever, now) in self.ever.iter_mut().zip(&self.partners) {
            ever.extend(now.iter().cloned());
        }
    }

    /// The store committed a new member list for `conversation`: layout users `users`.
    pub fn set_members(&mut self, conversation: &str, users: BTreeSet<usize>) {
        self.members.insert(conversation.to_owned(), users);
        self.partner_up();
    }

    /// The server announced `user` (`"id:type"`) online or offline, to those who share a
    /// conversation with it now.
    pub fn announced(&mut self, user: String, online: bool) {
        self.announcements += 1;
        let mut to = BTreeSet::new();
        for (u, partners) in self.partners.iter().enumerate() {
            if partners.contains(&user) {
                to.insert(u);
            } else if self.ever.get(u).is_some_and(|e| e.contains(&user)) {
                self.passed_over.insert((u, user.clone()), BTreeSet::new());
            }
        }
        let entry = self.announced.entry(user).or_default();
        entry.push((self.announcements, online, to));
    }

    /// The server sent `text` on connection `link`.
    pub fn sent(&mut self, link: u64, text: &str) {
        if text.starts_with("42/chat,[\"connection:success\"") {
            // A namespace connected again on the same link starts a count of its own.
            self.told.retain(|(l, _), _| *l != link);
            self.connected_after.insert(link, self.announcements);
        }
    }

    /// The server wrote `text` to a connection of layout user `user`: a presence frame must
    /// be about a user it shares a conversation with now (the announcement is made, and
    /// its frames written, in one step).
    pub fn sent_to(&self, user: usize, text: &str) -> Finding {
        let Some((subject, _)) = presence_of(text) else {
            return Ok(());
        };
        if self
            .partners
            .get(user)
            .is_some_and(|p| p.contains(&subject))
        {
            return Ok(());
        }
        let me = self.keys.get(user).map_or("?", String::as_str);
        Err((
            NAME,
            format!("{me} was written a frame about {subject}, who shares no conversation with it now: {text}"),
        ))
    }

    /// The announcements of `subject` made to layout user `user` after the first `after`
    /// (a connection's count at its `connection:success`), in order: number and online.
    fn made_to<'a>(
        &'a self,
        subject: &str,
        user: usize,
        after: u64,
    ) -> impl Iterator<Item = (u64, bool)> + 'a {
        self.announced
            .get(subject)
            .into_iter()
            .flatten()
            .filter(move |(n, _, to)| *n > after && to.contains(&user))
            .map(|(n, online, _)| (*n, *online))
    }

    /// What the running server process last announced of `user` (`"id:type"`), to
    /// anyone: online (`true`) or offline; `None` if it announced nothing.
    pub fn last_announced(&self, user: &str) -> Option<bool> {
        self.announced
            .get(user)?
            .iter()
            .rev()
            .find(|(n, _, _)| *n > self.crashed_at)
            .map(|(_, online, _)| *online)
    }

    /// The server process died: the next one knows nothing of what this one announced
    /// (and every connection it had is gone with it, once what was in flight to them has
    /// arrived, which is still judged by what this one announced).
    pub fn crash(&mut self) {
        self.crashed_at = self.announcements;
    }

    /// A frame for connection `link` of layout user `user` was shed by the server's send
    /// queue: announced to it, never seen by it.
    pub fn shed(&mut self, link: u64, user: usize, text: &str) -> Finding {
        self.received(link, user, text)
    }

    /// A frame reached connection `link` of layout user `user`.
    pub fn received(&mut self, link: u64, user: usize, text: &str) -> Finding {
        let Some(me) = self.keys.get(user) else {
            return Ok(());
        };
        let Some((subject, online)) = presence_of(text) else {
            if is_presence(text) {
                return Err((
                    NAME,
                    format!("{me} got a presence frame that does not parse"),
                ));
            }
            return Ok(());
        };
        // Written before a member list changed, a frame may arrive after it.
        let partner = self.ever.get(user).is_some_and(|p| p.contains(&subject));
        if !partner {
            return Err((
                NAME,
                format!(
                    "{me} was told about {subject}, who shares no conversation with it: {text}"
                ),
            ));
        }
        // A first frame counts as following its opposite.
        let entry = self
            .told
            .entry((link, subject.clone()))
            .or_insert((!online, 0));
        let before = entry.0;
        *entry = (online, entry.1 + 1);
        let nth = entry.1;
        // A connection whose `connection:success` this server process sent gets one frame
        // per announcement to its user since, in order: its nth frame about the subject
        // says what the nth such announcement did.
        if let Some(after) = self.connected_after.get(&link) {
            let made = self
                .made_to(&subject, user, *after)
                .nth(usize::try_from(nth).unwrap_or(usize::MAX).saturating_sub(1));
            return match made {
                Some((_, said)) if said == online => Ok(()),
                Some((n, said)) => Err((
                    NAME,
                    format!(
                        "{me} on ws{link}: frame {nth} about {subject} says online={online}, \
                         announcement #{n} said online={said}"
                    ),
                )),
                None => Err((
                    NAME,
                    format!(
                        "{me} on ws{link}: frame {nth} about {subject}, more than were \
                         announced to it since it connected"
                    ),
                )),
            };
        }
        // Otherwise the frames alternate; each link's first frame after a pass-over may
        // repeat the last, once.
        let excused = self
            .passed_over
            .get_mut(&(user, subject.clone()))
            .is_some_and(|done| done.insert(link));
        if before == online && !excused {
            let kind = if online { "online" } else { "offline" };
            return Err((
                NAME,
                format!("{me} was told {subject} is {kind} twice in a row on ws{link}"),
            ));
        }
        Ok(())
    }

    /// Connection `link` is gone.
    pub fn closed(&mut self, link: u64) {
        self.told.retain(|(l, _), _| *l != link);
        self.connected_after.remove(&link);
    }

    /// After the run healed and went quiet: the last frame about each user on each of
    /// the `live` connections (with the layout user of each) says what the server last
    /// announced.
    pub fn settled(&self, live: &[(u64, usize)]) -> Finding {
        for (link, user) in live {
            let me = self.keys.get(*user).map_or("?", String::as_str);
            for ((l, subject), (online, _)) in self.told.range((*link, String::new())..) {
                if l != link {
                    break;
                }
                let server = self
                    .announced
                    .get(subject)
                    .and_then(|a| {
                        a.iter()
                            .rev()
                            .find(|(n, _, to)| *n > self.crashed_at && to.contains(user))
                    })
                    .is_some_and(|(_, on, _)| *on);
                if *online != server {
                    let (said, is) = if *online {
                        ("online", "offline")
                    } else {
                        ("offline", "online")
                    };
                    return Err((
                        NAME,
                        format!(
                            "{me} on ws{link} was last told {subject} is {said}; the server has it {is}"
                        ),
                    ));
                }
            }
            let Some(after) = self.connected_after.get(link) else {
                continue;
            };
            let partners = self.ever.get(*user).into_iter().flatten();
            for subject in partners {
                if !self.announced.contains_key(subject) {
                    continue;
                }
                let to_me: Vec<bool> = self
                    .made_to(subject, *user, *after)
                    .map(|(_, on)| on)
                    .collect();
                let since = to_me.len();
                let online = to_me.last().copied().unwrap_or(false);
                let got = self
                    .told
                    .get(&(*link, subject.clone()))
                    .map_or(0, |(_, frames)| *frames);
                if since > 0 && got == 0 {
                    let kind = if online { "online" } else { "offline" };
                    return Err((
                        NAME,
                        format!(
                            "{me} on ws{link} was connected when {subject} was announced \
                             {kind}, and was never told"
                        ),
                    ));
                }
                if got != since as u64 {
                    return Err((
                        NAME,
                        format!(
                            "{me} on ws{link} got {got} frames about {subject}; {since} \
                             announcements of it were made since it connected"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_presence(text: &str) -> bool {
    text.starts_with("42/chat,[\"user:online\"") || text.starts_with("42/chat,[\"user:offline\"")
}

/// The subject (`"id:type"`) of a presence frame, and whether it says online.
fn presence_of(text: &str) -> Option<(String, bool)> {
    if !is_presence(text) {
        return None;
    }
    let online = text.starts_with("42/chat,[\"user:online\"");
    let (_, _, data) = chat_data(text)?;
    let subject = format!(
        "{}:{}",
        data[1]["userId"].as_str().unwrap_or(""),
        data[1]["userType"].as_str().unwrap_or("")
    );
    Some((subject, online))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: &str, user: &str) -> String {
        format!(r#"42/chat,["{event}",{{"userId":"{user}","userType":"customer"}}]"#)
    }

    #[test]
    fn only_partners_are_told_and_frames_alternate() {
        // Ten users: g0 = u0..u4, g1 = u5..u9, x0 = {u4, u5}.
        let layout = Layout::new(10, 1);
        let mut check = PresenceFrames::new(&layout);
        assert!(check.received(1, 0, &frame("user:online", "u1")).is_ok());
        assert!(check.received(1, 0, &frame("user:offline", "u1")).is_ok());
        assert!(check.received(1, 0, &frame("user:online", "u1")).is_ok());
        assert!(
            check.received(1, 0, &frame("user:online", "u1")).is_err(),
            "twice in a row"
        );
        assert!(
            check.received(2, 0, &frame("user:online", "u1")).is_ok(),
            "another connection"
        );
        assert!(
            check.received(3, 0, &frame("user:online", "u7")).is_err(),
            "u7 shares nothing with u0"
        );
        assert!(
            check.received(3, 4, &frame("user:online", "u6")).is_err(),
            "u4 and u6 share nothing either"
        );
        assert!(
            check.received(3, 0, &frame("user:online", "u0")).is_err(),
            "itself"
        );
        assert!(
            check.received(4, 5, &frame("user:online", "u4")).is_ok(),
            "u4 and u5 share x0"
        );
        assert!(check
            .received(4, 5, r#"42/chat,["message:new",{}]"#)
            .is_ok());
        check.closed(1);
        assert!(
            check.received(1, 0, &frame("user:online", "u1")).is_ok(),
            "a closed connection is forgotten"
        );
    }

    /// On a connection whose connect was seen, each frame is the announcement it stands
    /// for: a first frame that says the opposite, or one more than were made, is caught
    /// (alternation alone would take both); one in flight when the server crashed is
    /// judged by what the crashed process announced.
    #[test]
    fn each_frame_says_what_its_announcement_said() {
        let layout = Layout::new(10, 1);
        let mut check = PresenceFrames::new(&layout);
        let success = r#"42/chat,["connection:success",{"userId":"u0"}]"#;
        check.sent(1, success);
        check.sent(2, success);
        check.announced("u1:customer".into(), true);
        assert!(check.received(1, 0, &frame("user:offline", "u1")).is_err());
        assert!(check.received(2, 0, &frame("user:online", "u1")).is_ok());
        assert!(
            check.received(2, 0, &frame("user:offline", "u1")).is_err(),
            "no second announcement"
        );
        check.sent(3, success);
        check.announced("u1:customer".into(), false);
        check.crash();
        assert!(
            check.received(3, 0, &frame("user:offline", "u1")).is_ok(),
            "in flight across the crash"
        );
    }

    #[test]
    fn announcements_follow_the_member_lists_as_they_stood_when_made() {
        // Ten users: g0 = u0..u4. u0 is let out of g0 (it shares nothing with u1 then).
        let layout = Layout::new(10, 1);
        let mut check = PresenceFrames::new(&layout);
        let success = r#"42/chat,["connection:success",{"userId":"u0"}]"#;
        check.sent(1, success);
        check.announced("u1:customer".into(), true);
        check.set_members("g0", [1, 2, 3, 4].into_iter().collect());
        // Written while they were partners, it may arrive after.
        assert!(check.received(1, 0, &frame("user:online", "u1")).is_ok());
        check.announced("u1:customer".into(), false);
        assert!(
            check.settled(&[(1, 0)]).is_ok(),
            "not told of the offline: u0 was out of g0"
        );
        check.set_members("g0", [0, 1, 2, 3, 4].into_iter().collect());
        check.announced("u1:customer".into(), true);
        assert!(check.settled(&[(1, 0)]).is_err(), "back in: told nothing");
        assert!(
            check.received(1, 0, &frame("user:online", "u1")).is_ok(),
            "online twice in a row, the offline between made to others"
        );
        assert!(check.settled(&[(1, 0)]).is_ok());
        // u5 never shared a conversation with u0.
        assert!(check.received(1, 0, &frame("user:online", "u5")).is_err());
        // When written, a frame must be about a partner as the lists stand then.
        assert!(check.sent_to(0, &frame("user:offline", "u1")).is_ok());
        check.set_members("g0", [1, 2, 3, 4].into_iter().collect());
        assert!(check.sent_to(0, &frame("user:offline", "u1")).is_err());
        assert!(check.sent_to(0, r#"42/chat,["message:new",{}]"#).is_ok());
    }

    #[test]
    fn the_last_frame_agrees_with_the_server_once_settled() {
        let layout = Layout::new(10, 1);
        let mut check = PresenceFrames::new(&layout);
        check.announced("u1:customer".into(), true);
        assert!(check.received(1, 0, &frame("user:online", "u1")).is_ok());
        assert!(check.settled(&[(1, 0)]).is_ok());
        check.announced("u1:customer".into(), false);
        assert!(check.settled(&[(1, 0)]).is_err(), "the offline never came");
        assert!(check.settled(&[(2, 0)]).is_ok(), "told nothing on ws2");
        assert!(check.received(1, 0, &frame("user:offline", "u1")).is_ok());
        assert!(check.settled(&[(1, 0)]).is_ok());
    }

    #[test]
    fn a_shed_frame_counts_as_told_and_leaves_the_view_stale_until_the_next() {
        let layout = Layout::new(10, 1);
        let mut check = PresenceFrames::new(&layout);
        let success = r#"42/chat,["connection:success",{"userId":"u0"}]"#;
        check.sent(1, success);
        check.announced("u1:customer".into(), true);
        assert!(check.received(1, 0, &frame("user:online", "u1")).is_ok());
        check.announced("u1:customer".into(), false);
        assert!(check.shed(1, 0, &frame("user:offline", "u1")).is_ok());
        // Its view is stale (last saw online), as the contract allows; the shed frame
        // counts as the announcement made to it.
        assert!(check.settled(&[(1, 0)]).is_ok());
        // The next transition reaches it: online after the shed offline alternates.
        check.announced("u1:customer".into(), true);
        assert!(check.received(1, 0, &frame("user:online", "u1")).is_ok());
        assert!(check.settled(&[(1, 0)]).is_ok());
        // A shed frame is still checked for whom it is about.
        assert!(check.shed(1, 0, &frame("user:online", "u7")).is_err());
    }

    #[test]
    fn a_connection_connected_before_an_announcement_must_have_been_told() {
        let layout = Layout::new(10, 1);
        let mut check = PresenceFrames::new(&layout);
        let success = r#"42/chat,["connection:success",{"userId":"u0"}]"#;
        check.sent(1, success);
        check.announced("u1:customer".into(), true);
        check.sent(2, success);
        assert!(check.settled(&[(2, 0)]).is_ok(), "connected after it");
        assert!(
            check.settled(&[(1, 0)]).is_err(),
            "connected before it, told nothing"
        );
        assert!(check.received(1, 0, &frame("user:online", "u1")).is_ok());
        assert!(check.settled(&[(1, 0), (2, 0)]).is_ok());
        check.announced("u7:customer".into(), true);
        assert!(check.settled(&[(1, 0)]).is_ok(), "u7 is no partner of u0");
    }
    #[test]
    fn a_connection_gets_one_frame_per_announcement_since_it_connected() {
        let layout = Layout::new(10, 1);
        let mut check = PresenceFrames::new(&layout);
        let success = r#"42/chat,["connection:success",{"userId":"u0"}]"#;
        check.announced("u1:customer".into(), true);
        check.sent(1, success);
        check.announced("u1:customer".into(), false);
        assert!(check.received(1, 0, &frame("user:offline", "u1")).is_ok());
        assert!(
            check.settled(&[(1, 0)]).is_ok(),
            "the one announcement since"
        );
        check.announced("u1:customer".into(), true);
        check.announced("u1:customer".into(), false);
        assert!(
            check.settled(&[(1, 0)]).is_err(),
            "missed an online and the offline after it: last told offline all the same"
        );
        assert!(check.received(1, 0, &frame("user:online", "u1")).is_ok());
        assert!(check.received(1, 0, &frame("user:offline", "u1")).is_ok());
        assert!(check.settled(&[(1, 0)]).is_ok());
        check.crash();
        check.closed(1);
        check.sent(2, success);
        check.announced("u1:customer".into(), true);
        assert!(check.received(2, 0, &frame("user:online", "u1")).is_ok());
        assert!(
            check.settled(&[(2, 0)]).is_ok(),
            "a new server process counts its own announcements"
        );
    }
}
