//! The user key: whose a connection, a rate window or a conversation membership is.
//!
//! The contract names a user `userId:userType`. Kept as that text alone, the name would be
//! ambiguous: user id `a:b` of type `c` and user id `a` of type `b:c` print alike, and
//! would replace each other's connections, share one rate limit and pass each other's
//! membership checks. A [`UserKey`] keeps where the user id ends, so two keys are one user
//! only when both parts are equal; it still prints as `userId:userType`.
//!
//! A key is reference-counted: a connection, its user, the timer index and the outputs that
//! name the user share one copy of the text instead of holding a string each.

use std::fmt;
use std::sync::Arc;

/// Longest user id, user type or conversation id accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Whether `name` is fit to be a user id, a user type or a conversation id: 1 to
/// [`MAX_NAME_BYTES`] bytes without control characters. Names are written to logs, metrics
/// labels and every message a user sends; a newline or a megabyte in one has no business
/// there. One rule for the HTTP API's member lists and for the claims of a token, so that
/// every user who can connect can be made a member.
pub fn is_good_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

/// A user id and a user type, compared as a pair; cheap to clone.
///
/// Keys order by their printed text (then by where the user id ends), so anything iterated
/// in key order comes out in the order `userId:userType` strings would.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey {
    /// `userId:userType`.
    text: Arc<str>,
    /// Length of the user id within `text`: the separator is the byte after it.
    id_len: usize,
}

impl UserKey {
    /// The key of the user with this id and type.
    pub fn new(user_id: &str, user_type: &str) -> UserKey {
        let mut text = String::with_capacity(user_id.len() + 1 + user_type.len());
        text.push_str(user_id);
        text.push(':');
        text.push_str(user_type);
        UserKey {
            text: text.into(),
            id_len: user_id.len(),
        }
    }

    /// The user id.
    pub fn user_id(&self) -> &str {
        self.text.get(..self.id_len).unwrap_or_default()
    }

    /// The user type.
    pub fn user_type(&self) -> &str {
        self.text.get(self.id_len + 1..).unwrap_or_default()
    }

    /// Whether both are the one copy of the text (not merely equal).
    #[cfg(test)]
    pub(crate) fn same_copy(&self, other: &UserKey) -> bool {
        Arc::ptr_eq(&self.text, &other.text)
    }

    /// `userId:userType`, as the contract and the logs spell it. Not an identity: two
    /// different users can spell alike (see the module docs).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UserKey")
            .field(&self.user_id())
            .field(&self.user_type())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_come_back_as_given() {
        let k = UserKey::new("u:1", "agent:eu");
        assert_eq!(k.user_id(), "u:1");
        assert_eq!(k.user_type(), "agent:eu");
        assert_eq!(k.to_string(), "u:1:agent:eu");
        let empty = UserKey::new("", "");
        assert_eq!((empty.user_id(), empty.user_type()), ("", ""));
        assert_eq!(empty.as_str(), ":");
        let wide = UserKey::new("ü", "é");
        assert_eq!((wide.user_id(), wide.user_type()), ("ü", "é"));
    }

    #[test]
    fn keys_that_print_alike_are_different_users() {
        let a = UserKey::new("a:b", "c");
        let b = UserKey::new("a", "b:c");
        assert_eq!(a.to_string(), b.to_string());
        assert_ne!(a, b);
        assert_ne!(a.cmp(&b), std::cmp::Ordering::Equal);
        assert_eq!(a, UserKey::new("a:b", "c"));
    }

    #[test]
    fn keys_order_as_their_text() {
        let mut keys = [
            UserKey::new("bob", "customer"),
            UserKey::new("alice", "customer"),
            UserKey::new("alice", "agent"),
            UserKey::new("al", "z"),
        ];
        keys.sort();
        let text: Vec<String> = keys.iter().map(UserKey::to_string).collect();
        let mut sorted = text.clone();
        sorted.sort();
        assert_eq!(text, sorted);
    }
}
