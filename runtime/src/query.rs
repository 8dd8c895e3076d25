//! Query strings and percent-decoding, for the Engine.IO parameters and the HTTP API.
//!
//! Only what Heartline reads is decoded: a handful of known keys. Unknown keys (the
//! client's cache buster `t`, app query values) are ignored, as the protocol asks.
//!
//! A query string and a path are decoded by different rules. In a query `+` stands for a
//! space (form encoding) and a value that is not UTF-8 only fails to match. A path segment
//! names something stored (a conversation id), so `+` is itself (RFC 3986) and a segment
//! that does not decode to exactly one string is refused: read leniently, `c++` would
//! become `"c  "`, and `%fe` and `%ff` would both become U+FFFD, one conversation's
//! member list replacing the other's.

use heartline_core::engine::Query;

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes a path segment: `%XX` escapes only, `+` as itself. `None` for a malformed
/// escape or for bytes that are not UTF-8.
pub fn percent_decode_path(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let high = hex(*bytes.get(i + 1)?)?;
            let low = hex(*bytes.get(i + 2)?)?;
            out.push(high * 16 + low);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The decoded value of the first `key` in a query string.
pub fn param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

/// The Engine.IO parameters of a request URI's query string.
pub fn engine_query(query: Option<&str>) -> Query {
    Query {
        eio: param(query, "EIO"),
        transport: param(query, "transport"),
        sid: param(query, "sid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn a_path_segment_decodes_to_one_string_or_none() {
        assert_eq!(percent_decode_path("c++").as_deref(), Some("c++"));
        assert_eq!(percent_decode_path("a%2Bb").as_deref(), Some("a+b"));
        assert_eq!(percent_decode_path("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode_path("a%20b").as_deref(), Some("a b"));
        for bad in ["%ff", "%fe", "%C3", "100%", "%4", "%zz"] {
            assert_eq!(percent_decode_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_engine_params() {
        let q = engine_query(Some("EIO=4&transport=polling&t=abc&sid=x%2Dy"));
        assert_eq!(q.eio.as_deref(), Some("4"));
        assert_eq!(q.transport.as_deref(), Some("polling"));
        assert_eq!(q.sid.as_deref(), Some("x-y"));
        assert_eq!(engine_query(None), Query::default());
        assert_eq!(param(Some("flag&x=1"), "flag").as_deref(), Some(""));
    }
}
