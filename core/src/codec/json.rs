//! JSON as JavaScript writes it.
//!
//! A JavaScript string is UTF-16 and may hold a surrogate without its partner: an emoji cut
//! in half by `slice`, a truncated paste. `JSON.stringify` writes such a code unit as an
//! escape (`"\ud83d"`), the Node server's `JSON.parse` takes it, and when the string is
//! stored or sent on as UTF-8 it becomes U+FFFD. serde_json, whose strings are UTF-8,
//! refuses the escape instead, which would make the packet unparseable and end the
//! sender's connection over one bad character. So a text that serde_json refuses is looked
//! at once more: if it escapes a lone surrogate, that escape is read as `\ufffd`, what the
//! Node gateway would have stored, and the text parsed again. Every other error stands.
//!
//! The second look runs only after a failed parse, so well-formed input pays nothing.

use serde_json::Value;

/// Parses `text` as JSON, reading an escaped lone surrogate as U+FFFD.
pub fn parse_lenient(text: &str) -> Result<Value, serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        Err(first) => match replace_lone_surrogates(text) {
            Some(repaired) => serde_json::from_str(&repaired),
            None => Err(first),
        },
    }
}

/// `text` with every `\uXXXX` escape of a lone surrogate written `\ufffd`; `None` when
/// there is none.
///
/// A backslash starts an escape only where the one before it did not escape it, so the
/// scan steps over every escape whole. Outside strings a backslash is a syntax error
/// either way, so which backslashes are inside strings need not be tracked.
fn replace_lone_surrogates(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    // Bytes of `text` before this point are in `out` (once it exists).
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = escaped_unit(bytes, i) else {
            // `\"`, `\\`, `\n`, ... or a malformed escape, which the parser reports.
            i += 2;
            continue;
        };
        let is_pair = (0xD800..=0xDBFF).contains(&unit)
            && escaped_unit(bytes, i + 6).is_some_and(|next| (0xDC00..=0xDFFF).contains(&next));
        if is_pair {
            i += 12;
        } else if (0xD800..=0xDFFF).contains(&unit) {
            let repaired = out.get_or_insert_with(|| String::with_capacity(text.len()));
            repaired.push_str(text.get(copied..i)?);
            repaired.push_str("\\ufffd");
            i += 6;
            copied = i;
        } else {
            i += 6;
        }
    }
    let mut repaired = out?;
    repaired.push_str(text.get(copied..)?);
    Some(repaired)
}

/// The code unit of a `\uXXXX` escape at `at`, if one is there.
fn escaped_unit(bytes: &[u8], at: usize) -> Option<u32> {
    let escape = bytes.get(at..at + 6)?;
    if escape[0] != b'\\' || escape[1] != b'u' {
        return None;
    }
    let hex = std::str::from_utf8(&escape[2..]).ok()?;
    u32::from_str_radix(hex, 16)
        .ok()
        .filter(|_| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_lone_surrogate_reads_as_the_replacement_character() {
        // A lead without its trail, a trail without its lead, a lead before a non-trail.
        for (text, want) in [
            (r#"{"content":"a\ud83d"}"#, "a\u{fffd}"),
            (r#"{"content":"\uDC00b"}"#, "\u{fffd}b"),
            (r#"{"content":"\ud83d\u0041"}"#, "\u{fffd}A"),
            (r#"{"content":"\ud83d\ud83d\ude00"}"#, "\u{fffd}\u{1f600}"),
        ] {
            assert_eq!(
                parse_lenient(text).ok(),
                Some(json!({ "content": want })),
                "{text}"
            );
        }
    }

    #[test]
    fn well_formed_text_is_read_as_serde_json_reads_it() {
        for text in [
            r#"{"content":"\ud83d\ude00 ok"}"#,
            r#"["a\\ud83d", "\\\ud83d\ude00"]"#,
            r#"{"n":1.5,"s":"\"\\\/\b\f\n\r\t"}"#,
        ] {
            let want: Value = serde_json::from_str(text).expect("valid JSON");
            assert_eq!(parse_lenient(text).ok(), Some(want), "{text}");
        }
    }

    #[test]
    fn an_escaped_backslash_is_not_the_start_of_an_escape() {
        // `\\ud83d` is a backslash and the letters "ud83d": nothing to repair.
        assert_eq!(replace_lone_surrogates(r#"["\\ud83d"]"#), None);
        assert_eq!(
            parse_lenient(r#"["\\ud83d"]"#).ok(),
            Some(json!(["\\ud83d"]))
        );
    }

    #[test]
    fn other_errors_stand() {
        for text in [
            r#"{"content":"\ud83d"#,
            r#"{"content":"\uZZZZ"}"#,
            r#"{"content":"\u12"}"#,
            r#"["\ud83d",]"#,
            "[\"\\",
            "\\ud83d",
        ] {
            assert!(parse_lenient(text).is_err(), "{text}");
        }
    }
}
