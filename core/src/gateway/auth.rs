//! Token verification: HS256 JWTs checked against the time the core is handed.
//!
//! Expiry is judged with the wall-clock time derived from the core's `now`, never with the
//! machine's clock, so that the simulator can expire tokens in simulated time and a run
//! repeats exactly. Signature and algorithm checks are jsonwebtoken's; only HS256 is
//! accepted, so `none`, HS512 and RS256 tokens are refused like forged ones.
//!
//! `exp` and `nbf` are NumericDates (RFC 7519): seconds that may have a fraction, which
//! tokens minted by hand (`Date.now() / 1000`) do. A token is refused from its `exp` on,
//! and before its `nbf` if it has one, to the millisecond, with no leeway either way.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::gateway::user_key::{is_good_name, UserKey};

/// The claims Heartline reads from a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The kind of user, e.g. `customer` or `agent`.
    #[serde(rename = "userType")]
    pub user_type: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// `"admin"` for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Claims {
    /// The user key, `userId:userType`, under which a user's connections, rate limit and
    /// idempotency keys are kept.
    pub fn user_key(&self) -> UserKey {
        UserKey::new(&self.sub, &self.user_type)
    }

    /// Whether the token grants operator rights.
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some("admin")
    }
}

/// A token that passed [`Verifier::verify`]: its claims, and its expiry to the
/// millisecond. A JWT's `exp` may have a fraction (RFC 7519's NumericDate), which the
/// whole seconds of [`Claims::exp`] would drop: an `auth:refresh` token expiring later in
/// the same second would then not count as later, and the expiry would fire early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The claims; `exp` in whole seconds, rounded down.
    pub claims: Claims,
    /// Expiry in milliseconds since the Unix epoch, rounded down from the token's `exp`.
    pub exp_ms: u64,
}

/// Why a token was refused. The messages are the contract's CONNECT_ERROR messages.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the CONNECT payload or the `Authorization` header.
    #[error("Authentication required")]
    Missing,
    /// Bad signature, wrong algorithm, malformed, missing claims or expired.
    #[error("Invalid authentication token")]
    Invalid,
}

/// The longest token taken: far past any the contract's claims make (two 256-byte names
/// and a role give about 1 KiB), short enough that a client sending tokens over and over
/// (each `auth:refresh` is checked) cannot have the server hash megabytes for each.
pub const MAX_TOKEN_BYTES: usize = 8 << 10;

/// Verifies tokens signed with one shared secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { .. }")
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the time the core was handed, not the OS clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        // Presence of `exp` and `sub` is checked by reading them ([`Read`]): jsonwebtoken
        // would call an `exp` with a fraction missing.
        validation.required_spec_claims = Default::default();
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// MUTATION (test-only): HS384 and HS512 taken beside HS256 (a validation given the
    /// family of HMAC algorithms rather than the one the contract names).
    #[cfg(feature = "mutations")]
    pub fn mutate_any_hmac(&mut self) {
        self.validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
    }

    /// Checks `token` at wall-clock time `now_ms` (milliseconds since the Unix epoch).
    /// One over [`MAX_TOKEN_BYTES`] is invalid before anything of it is computed.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Verified, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid);
        }
        let data = jsonwebtoken::decode::<Read>(token, &self.key, &self.validation)
            .map_err(|_| AuthError::Invalid)?;
        let read = data.claims;
        let exp_ms = read.exp.ms(f64::floor).ok_or(AuthError::Invalid)?;
        let nbf_ms = match read.nbf {
            Some(nbf) => nbf.ms(f64::ceil).ok_or(AuthError::Invalid)?,
            None => 0,
        };
        // A `sub` or `userType` no member list could name (empty, over 256 bytes, a
        // control character) is a malformed token.
        let named = is_good_name(&read.sub) && is_good_name(&read.user_type);
        if !named || exp_ms <= now_ms || now_ms < nbf_ms {
            return Err(AuthError::Invalid);
        }
        Ok(Verified {
            claims: Claims {
                sub: read.sub,
                user_type: read.user_type,
                exp: exp_ms / 1000,
                role: read.role,
            },
            exp_ms,
        })
    }
}

/// The claims as a token carries them.
#[derive(Deserialize)]
struct Read {
    sub: String,
    #[serde(rename = "userType")]
    user_type: String,
    exp: NumericDate,
    #[serde(default)]
    nbf: Option<NumericDate>,
    #[serde(default)]
    role: Option<String>,
}

/// Seconds since the Unix epoch, as a JSON number, whole or not.
#[derive(Deserialize)]
#[serde(transparent)]
struct NumericDate(serde_json::Number);

impl NumericDate {
    /// In milliseconds, a fraction of one rounded by `round`; `None` for a negative or
    /// non-finite number, which is no date. Past `u64::MAX` it saturates.
    fn ms(&self, round: fn(f64) -> f64) -> Option<u64> {
        if let Some(secs) = self.0.as_u64() {
            return Some(secs.saturating_mul(1000));
        }
        let secs = self.0.as_f64()?;
        // `as` saturates a float's conversion to an integer.
        (secs.is_finite() && secs >= 0.0).then(|| round(secs * 1000.0) as u64)
    }
}

/// Signs claims with HS256: dev tokens, tests and the simulator's clients.
pub fn issue(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| AuthError::Invalid)
}

/// Why a connect with no token ([`token_of`] found none) is refused: a `auth.token` that is
/// there but not a string (a number, an object) is a malformed token, [`AuthError::Invalid`];
/// none at all, `null` or `""` is [`AuthError::Missing`].
pub fn no_token(auth: Option<&Value>) -> AuthError {
    match auth.and_then(|a| a.get("token")) {
        None | Some(Value::Null) => AuthError::Missing,
        Some(Value::String(s)) if s.is_empty() => AuthError::Missing,
        Some(_) => AuthError::Invalid,
    }
}

/// The token of a connect: `auth.token` from the CONNECT payload, else the bearer token of
/// the handshake's `Authorization` header.
pub fn token_of(auth: Option<&Value>, authorization: Option<&str>) -> Option<String> {
    if let Some(t) = auth
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_owned());
    }
    let header = authorization?.trim();
    let (scheme, rest) = header.split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::user_key::MAX_NAME_BYTES;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            user_type: "customer".into(),
            exp,
            role: None,
        }
    }

    /// What `verify` gives for a token of [`claims`] expiring at `exp_ms`.
    fn verified(exp_ms: u64) -> Verified {
        Verified {
            claims: claims(exp_ms / 1000),
            exp_ms,
        }
    }

    #[test]
    fn valid_token_passes_until_it_expires() {
        let v = Verifier::new(SECRET);
        let token = issue(SECRET, &claims(1_000)).expect("sign");
        assert_eq!(v.verify(&token, 999_999), Ok(verified(1_000_000)));
        assert_eq!(v.verify(&token, 1_000_000), Err(AuthError::Invalid));
    }

    #[test]
    fn wrong_secret_and_garbage_are_invalid() {
        let v = Verifier::new(SECRET);
        let token = issue(b"other", &claims(1_000)).expect("sign");
        assert_eq!(v.verify(&token, 0), Err(AuthError::Invalid));
        assert_eq!(v.verify("not.a.jwt", 0), Err(AuthError::Invalid));
        assert_eq!(v.verify("", 0), Err(AuthError::Invalid));
    }

    #[test]
    fn other_algorithms_are_refused() {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let body = b64(json!({"sub":"u1","userType":"customer","exp":9_999_999_999u64}));
        let none = format!("{}.{}.", b64(json!({"alg":"none","typ":"JWT"})), body);
        let v = Verifier::new(SECRET);
        assert_eq!(v.verify(&none, 0), Err(AuthError::Invalid));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(9_999_999_999),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        assert_eq!(v.verify(&hs512, 0), Err(AuthError::Invalid));
    }

    #[test]
    fn missing_claims_are_invalid() {
        #[derive(Serialize)]
        struct NoExp {
            sub: String,
            #[serde(rename = "userType")]
            user_type: String,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp {
                sub: "u".into(),
                user_type: "agent".into(),
            },
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        assert_eq!(
            Verifier::new(SECRET).verify(&token, 0),
            Err(AuthError::Invalid)
        );
    }

    fn signed(body: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &body,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign")
    }

    #[test]
    fn a_user_no_member_list_could_name_is_a_malformed_token() {
        let v = Verifier::new(SECRET);
        let long = "u".repeat(MAX_NAME_BYTES);
        let ok = signed(json!({"sub": long, "userType":"customer","exp":2_000}));
        assert!(v.verify(&ok, 0).is_ok());
        for (sub, kind) in [
            ("u".repeat(MAX_NAME_BYTES + 1), "customer"),
            ("u\n1".into(), "customer"),
            ("u1".into(), "agent\u{7f}"),
            ("u1".into(), ""),
        ] {
            let token = signed(json!({"sub": sub, "userType": kind, "exp":2_000}));
            assert_eq!(
                v.verify(&token, 0),
                Err(AuthError::Invalid),
                "{sub:?} {kind:?}"
            );
        }
    }

    #[test]
    fn a_token_over_8_kib_is_invalid_however_well_signed() {
        let v = Verifier::new(SECRET);
        // Names as long as allowed and a role: well under the bound.
        let long = "u".repeat(MAX_NAME_BYTES);
        let most = signed(json!({"sub": long, "userType": long, "role": long, "exp": 2_000}));
        assert!(most.len() < MAX_TOKEN_BYTES / 4, "{}", most.len());
        assert!(v.verify(&most, 0).is_ok());
        // A claim the server does not read, making the token just over the bound.
        let pad = "p".repeat(MAX_TOKEN_BYTES * 3 / 4);
        let big = signed(json!({"sub":"u1","userType":"customer","exp":2_000,"pad": pad}));
        assert!(big.len() > MAX_TOKEN_BYTES);
        assert_eq!(v.verify(&big, 0), Err(AuthError::Invalid));
    }

    #[test]
    fn exp_may_have_a_fraction_and_counts_to_the_millisecond() {
        let v = Verifier::new(SECRET);
        let token = signed(json!({"sub":"u1","userType":"customer","exp":1_000.5}));
        assert_eq!(v.verify(&token, 1_000_499), Ok(verified(1_000_500)));
        assert_eq!(v.verify(&token, 1_000_500), Err(AuthError::Invalid));
        for exp in [json!(-1), json!(-0.5), json!("1000"), json!(null)] {
            let token = signed(json!({"sub":"u1","userType":"customer","exp":exp}));
            assert_eq!(v.verify(&token, 0), Err(AuthError::Invalid), "{exp}");
        }
    }

    #[test]
    fn a_token_is_refused_before_its_nbf() {
        let v = Verifier::new(SECRET);
        let token = signed(json!({"sub":"u1","userType":"customer","exp":2_000,"nbf":1_000}));
        assert_eq!(v.verify(&token, 999_999), Err(AuthError::Invalid));
        assert_eq!(v.verify(&token, 1_000_000), Ok(verified(2_000_000)));
        let token = signed(json!({"sub":"u1","userType":"customer","exp":2_000,"nbf":999.0001}));
        assert_eq!(v.verify(&token, 999_000), Err(AuthError::Invalid));
        assert_eq!(v.verify(&token, 999_001), Ok(verified(2_000_000)));
        let token = signed(json!({"sub":"u1","userType":"customer","exp":2_000,"nbf":"soon"}));
        assert_eq!(v.verify(&token, 1_500_000), Err(AuthError::Invalid));
    }

    #[test]
    fn token_comes_from_auth_then_header() {
        let auth = json!({"token":"from-auth"});
        assert_eq!(
            token_of(Some(&auth), Some("Bearer from-header")).as_deref(),
            Some("from-auth")
        );
        assert_eq!(
            token_of(None, Some("Bearer from-header")).as_deref(),
            Some("from-header")
        );
        assert_eq!(token_of(Some(&json!({})), Some("Basic abc")), None);
        assert_eq!(token_of(Some(&json!({"token": 5})), None), None);
        assert_eq!(token_of(None, None), None);
    }

    #[test]
    fn a_token_that_is_there_but_not_a_string_is_invalid_not_missing() {
        for malformed in [
            json!({"token": 5}),
            json!({"token": {"jwt": "x"}}),
            json!({"token": true}),
        ] {
            assert_eq!(
                no_token(Some(&malformed)),
                AuthError::Invalid,
                "{malformed}"
            );
        }
        for missing in [
            json!({}),
            json!({"token": null}),
            json!({"token": ""}),
            json!(7),
        ] {
            assert_eq!(no_token(Some(&missing)), AuthError::Missing, "{missing}");
        }
        assert_eq!(no_token(None), AuthError::Missing);
    }
}
