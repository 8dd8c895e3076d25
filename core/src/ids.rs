//! Identifiers, and the seeded generator behind every random one.
//!
//! Internal keys ([`SessionId`]) are counters that are never reused, so a transcript line
//! names one session for the whole run (a reused slot index would make traces ambiguous).
//! Keys the driver owns ([`TransportId`] for a WebSocket, [`RequestId`] for an HTTP
//! request) are allocated by the driver, which sees a socket or a request before the core
//! does. Public ids that must be unguessable (the Engine.IO `sid`, the Socket.IO socket id)
//! come from a ChaCha generator seeded from configuration: the same seed gives the same ids,
//! which is what makes a simulated run reproducible.

use std::fmt;

use base64::Engine as _;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// An Engine.IO session, as the core knows it. Allocated by the core, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// One WebSocket connection, allocated by the driver. Unique among live WebSockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransportId(pub u64);

/// One HTTP request on the Engine.IO path, allocated by the driver. Unique among requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for TransportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ws{}", self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req{}", self.0)
    }
}

/// A 20-character public id (an Engine.IO `sid`, a Socket.IO socket id), held inline.
///
/// Every session keeps its sid and its socket id, and the engine indexes sessions by sid:
/// as strings those were three allocations per connection plus the index's copy of the
/// key. The characters are URL-safe base64, so the bytes are always valid UTF-8.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id20([u8; 20]);

impl Id20 {
    /// The id a client sent, if it has the shape of one; anything else is no id of ours.
    pub fn parse(text: &str) -> Option<Id20> {
        let bytes: [u8; 20] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
            .then_some(Id20(bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Id20 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Id20 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What the id generator starts from.
///
/// A `u64` is enough to replay a simulated run, but not to keep a server's ids unguessable:
/// whoever has seen a few of its `sid`s could search the 2^64 seeds for the one that made
/// them and predict the rest. A server is seeded with a full 32-byte key from the
/// operating system instead.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// A run to replay: expanded into a key as `ChaCha8Rng::seed_from_u64` does.
    Replayable(u64),
    /// A whole ChaCha key.
    Key([u8; 32]),
}

impl Seed {
    /// A seed for a second, independent stream: `salt` mixed into this one.
    pub fn salted(self, salt: u64) -> Seed {
        match self {
            Seed::Replayable(seed) => Seed::Replayable(seed ^ salt),
            Seed::Key(mut key) => {
                for (k, s) in key.iter_mut().zip(salt.to_le_bytes()) {
                    *k ^= s;
                }
                Seed::Key(key)
            }
        }
    }
}

impl From<u64> for Seed {
    fn from(seed: u64) -> Self {
        Seed::Replayable(seed)
    }
}

impl Default for Seed {
    fn default() -> Self {
        Seed::Replayable(0)
    }
}

/// A key never reaches a log: configurations are printed with `{:?}`.
impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::Replayable(seed) => write!(f, "Replayable({seed})"),
            Seed::Key(_) => f.write_str("Key(..)"),
        }
    }
}

/// The core's only source of randomness: a ChaCha8 stream seeded by the driver.
#[derive(Clone, Debug)]
pub struct Rng {
    inner: ChaCha8Rng,
}

impl Rng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn from_seed(seed: u64) -> Self {
        Rng::seeded(Seed::Replayable(seed))
    }

    /// A generator whose whole output is fixed by `seed`, either kind.
    pub fn seeded(seed: Seed) -> Self {
        let inner = match seed {
            Seed::Replayable(seed) => ChaCha8Rng::seed_from_u64(seed),
            Seed::Key(key) => ChaCha8Rng::from_seed(key),
        };
        Rng { inner }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// A uniformly drawn value in `0..bound` (`0` when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Rejection sampling keeps the draw unbiased.
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let v = self.inner.next_u64();
            if v < zone {
                return v % bound;
            }
        }
    }

    /// A uniformly drawn float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.inner.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A 20-character URL-safe id from 120 random bits, the shape Node's Engine.IO uses.
    pub fn id20(&mut self) -> Id20 {
        let mut raw = [0u8; 15];
        self.inner.fill_bytes(&mut raw);
        let mut id = [b'A'; 20];
        // 15 bytes are exactly 20 base64 characters, so this cannot fail; if it did, the
        // id would only be less random, never malformed (all `A`s).
        let _ = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_slice(raw, &mut id);
        Id20(id)
    }

    /// A 23-character id that sorts by time: `unix_ms` as 11 hex digits (good until the
    /// year 2527), then 72 random bits. Stored ids are indexed, and an index on random keys
    /// takes every insert to a page of its own; ids that grow with time are appended to
    /// the index's last page instead. The random part keeps ids of one millisecond apart.
    pub fn time_ordered_id(&mut self, unix_ms: u64) -> String {
        let mut raw = [0u8; 9];
        self.inner.fill_bytes(&mut raw);
        let mut id = format!("{:011x}", unix_ms & ((1 << 44) - 1));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(raw, &mut id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_fix_their_stream_and_salts_and_keys_change_it() {
        let first = |seed: Seed| Rng::seeded(seed).next_u64();
        // A number replays exactly as before keys existed.
        assert_eq!(first(Seed::from(9)), Rng::from_seed(9).next_u64());
        assert_eq!(first(Seed::from(9)), first(Seed::from(9)));
        let key = Seed::Key([7; 32]);
        assert_eq!(first(key), first(key));
        // Every bit of a key counts, and a salt gives another stream of either kind.
        let mut other = [7; 32];
        other[31] = 8;
        assert_ne!(first(key), first(Seed::Key(other)));
        assert_ne!(first(key), first(key.salted(1)));
        assert_ne!(first(Seed::from(9)), first(Seed::from(9).salted(1)));
        assert_eq!(format!("{key:?}"), "Key(..)");
    }

    #[test]
    fn time_ordered_ids_sort_by_time_and_differ_within_a_millisecond() {
        let mut rng = Rng::from_seed(3);
        let a = rng.time_ordered_id(1_700_000_000_000);
        let b = rng.time_ordered_id(1_700_000_000_000);
        let c = rng.time_ordered_id(1_700_000_000_001);
        let d = rng.time_ordered_id(1_800_000_000_000);
        assert_eq!(a.len(), 23);
        assert!(a.starts_with("18bcfe56800"), "{a}");
        assert_ne!(a, b);
        assert!(a.clone().max(b.clone()) < c && c < d, "{a} {b} {c} {d}");
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn same_seed_same_ids() {
        let mut a = Rng::from_seed(7);
        let mut b = Rng::from_seed(7);
        let ida = a.id20();
        assert_eq!(ida, b.id20());
        assert_eq!(ida.as_str().len(), 20);
        assert!(ida
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(Rng::from_seed(8).id20(), ida);
        assert_eq!(Id20::parse(ida.as_str()), Some(ida));
    }

    #[test]
    fn only_ids_of_our_shape_parse() {
        assert!(Id20::parse("").is_none());
        assert!(Id20::parse("abcdefghijklmnopqrs").is_none());
        assert!(Id20::parse("abcdefghijklmnopqrstu").is_none());
        assert!(Id20::parse("abcdefghijklmnopqrs=").is_none());
        assert!(Id20::parse("abcdefghijklmnopqré").is_none());
        let id = Id20::parse("AZaz09-_AZaz09-_AZaz").expect("our shape");
        assert_eq!(id.to_string(), "AZaz09-_AZaz09-_AZaz");
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = Rng::from_seed(1);
        for bound in [1u64, 2, 3, 10, 1000] {
            for _ in 0..100 {
                assert!(r.below(bound) < bound);
            }
        }
        assert_eq!(r.below(0), 0);
        let u = r.unit();
        assert!((0.0..1.0).contains(&u));
    }
}
