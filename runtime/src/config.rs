//! Heartline's configuration: the TOML file an operator writes, its defaults and its checks.
//!
//! The key names and defaults are part of Heartline's external contract, so every struct
//! here mirrors one TOML table field for field, and `Config::default()` is exactly the
//! documented default file. A configuration mistake should stop the server at start-up with
//! a message that points at the offending key, not surface later as odd runtime behaviour,
//! so loading is strict: unknown keys (typos such as `server.lisen`), wrong types and values
//! outside their range are all refused, and every message names the full key path.
//!
//! Loading happens in three steps. The text is parsed into a generic TOML table, which is
//! checked against the shape of the defaults (this is what lets the messages name key
//! paths, which the TOML deserializer's own errors do not). The table is then deserialized
//! with serde, whose `deny_unknown_fields` stays on as a second guard, and finally
//! [`Config::validate`] checks values against their ranges. Durations are kept as `u64`
//! milliseconds under their contract names (`engine.ping_interval_ms`, ...).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable that overrides `auth.jwt_secret`.
pub const ENV_JWT_SECRET: &str = "HEARTLINE_JWT_SECRET";
/// Environment variable that overrides `api.key`.
pub const ENV_API_KEY: &str = "HEARTLINE_API_KEY";

/// `api.key` must be one that a request can present: an HTTP header carries visible ASCII
/// and inner spaces, and the `Bearer` token is read without the spaces around it. A key
/// read from a secret file with its final newline would otherwise refuse every request
/// with 401 and nothing said at startup. (The key itself is never shown.)
fn check_api_key(key: &str) -> Result<(), ConfigError> {
    let presentable = key.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if !presentable || key.trim() != key {
        return Err(ConfigError::invalid(
            "api.key",
            "must be printable ASCII without spaces at either end (a newline from a secret \
             file?): no request could present it",
        ));
    }
    Ok(())
}

/// Upper bound for every `*_ms` duration: 2^31 - 1 ms, about 24.8 days.
///
/// Browsers and Node.js run timers on a signed 32-bit millisecond count and fire a longer
/// timer at once; `socket.io-client` arms one from the advertised ping values. Server-side
/// deadlines gain nothing from longer spans either, and the bound keeps deadline arithmetic
/// far from overflow.
pub const MAX_DURATION_MS: u64 = i32::MAX as u64;

/// Below this many bytes `auth.jwt_secret` draws a warning at startup (HS256's output size;
/// RFC 7518 §3.2). Not refused: a deployment's existing tokens may use a shorter one.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Upper bound for `engine.max_payload_bytes` (256 MiB): a single chat message or polling
/// body beyond this is a misconfiguration, and every connection may buffer this much.
pub const MAX_PAYLOAD_LIMIT: u64 = 256 * 1024 * 1024;

/// Below this `server.max_outbound_bytes` a connection cannot queue even an ordinary
/// message plus its framing, and is closed as a slow consumer for normal traffic; allowed
/// (the operator asked for it), but said at startup.
pub const SMALL_OUTBOUND_BYTES: u64 = 1024;

/// Upper bound for `server.max_outbound_bytes` (1 GiB): a connection's send queue counts
/// its bytes in 32 bits.
pub const MAX_OUTBOUND_BYTES: u64 = 1024 * 1024 * 1024;

/// Transport names accepted in `engine.transports`.
pub const TRANSPORTS: [&str; 2] = ["websocket", "polling"];

/// Why a configuration was refused. Every variant except `Read` and `Syntax` names the full
/// key path, e.g. `engine.ping_interval_ms`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("invalid TOML: {0}")]
    Syntax(String),
    /// A key that Heartline does not know, at any level.
    #[error("unknown key \"{0}\"")]
    UnknownKey(String),
    /// A key whose value has the wrong TOML type.
    #[error("{key}: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A key whose value has the right type but is out of range or malformed.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    /// The key path the error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey(key)
            | ConfigError::WrongType { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax(_) => None,
        }
    }

    /// This error, if it is about `key`, named after where the value came from instead
    /// (`--listen`, an environment variable), the key beside it: the operator looks there
    /// first, not in a file that may not even set it.
    pub fn given_as(self, key: &str, source: &str) -> Self {
        match self {
            ConfigError::Invalid { key: k, reason } if k == key => ConfigError::Invalid {
                key: format!("{source} (for {key})"),
                reason,
            },
            other => other,
        }
    }

    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration; one field per TOML table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub shutdown: ShutdownConfig,
    pub engine: EngineConfig,
    pub heartbeat: HeartbeatConfig,
    pub connections: ConnectionsConfig,
    pub presence: PresenceConfig,
    pub rate_limit: RateLimitConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub store: StoreConfig,
}

/// `[server]`: listening socket, namespace and connection admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, `IP:port`; see [`Config::listen_addr`].
    pub listen: String,
    /// The one Socket.IO namespace clients may connect to.
    pub namespace: String,
    /// Allowed `Origin` values for browser clients; `"*"` allows any.
    pub cors_origins: Vec<String>,
    /// Clients (Engine.IO sessions) at once; open sockets are bounded above it, see
    /// [`crate::admission::socket_bound`].
    pub max_connections: u64,
    /// From TCP accept to a completed namespace connect.
    pub handshake_timeout_ms: u64,
    /// New connections per second from one client IP (a session's own further
    /// connections excepted); 0 means no limit.
    pub connect_rate_per_ip: u64,
    /// Per-connection send queue; droppable traffic is shed first, then the connection closes.
    pub max_outbound_bytes: u64,
    /// Not a configuration key (never read from or written to TOML): how long a large
    /// message may take before it can be ended for arriving too slowly, when not
    /// [`crate::arriving::GRACE`]; for tests, which cannot wait that long or must not be
    /// overtaken by it.
    #[serde(skip)]
    pub arriving_grace_ms: Option<u64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:3002".to_owned(),
            namespace: "/chat".to_owned(),
            cors_origins: vec!["*".to_owned()],
            max_connections: 100_000,
            handshake_timeout_ms: 10_000,
            connect_rate_per_ip: 0,
            max_outbound_bytes: 1_048_576,
            arriving_grace_ms: None,
        }
    }
}

/// `[shutdown]`: how a SIGTERM drains clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Client closes are spread over this long; 0 closes them all at once.
    pub drain_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_ms: 5_000 }
    }
}

/// `[engine]`: Engine.IO transport settings advertised to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub upgrade_timeout_ms: u64,
    pub max_payload_bytes: u64,
    /// Non-empty subset of [`TRANSPORTS`].
    pub transports: Vec<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ping_interval_ms: 25_000,
            ping_timeout_ms: 60_000,
            upgrade_timeout_ms: 30_000,
            max_payload_bytes: 1_000_000,
            transports: vec!["websocket".to_owned(), "polling".to_owned()],
        }
    }
}

impl EngineConfig {
    /// Whether `transport` (`"websocket"` or `"polling"`) is among those offered.
    pub fn offers(&self, transport: &str) -> bool {
        self.transports.iter().any(|t| t == transport)
    }
}

/// `[heartbeat]`: the application-level `heartbeat` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    pub interval_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_ms: 30_000,
        }
    }
}

/// `[connections]`: live connections per user key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Live connections per user key; a newer one replaces the oldest.
    pub per_user: u64,
    /// Close a connection without application events for this long; 0 means never.
    pub idle_timeout_ms: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            per_user: 1,
            idle_timeout_ms: 0,
        }
    }
}

/// `[presence]`: online/offline transitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A user goes offline only after this long without any connection.
    pub offline_grace_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            offline_grace_ms: 3_000,
        }
    }
}

/// `[rate_limit]`: accepted sends per user key in a sliding window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub messages: u64,
    pub window_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            messages: 10,
            window_ms: 10_000,
        }
    }
}

/// `[auth]`: token verification.
///
/// `Debug` hides the secret so that a logged configuration does not leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret; empty means a random one is generated at start-up.
    pub jwt_secret: String,
    /// Time between `auth:expired` and the disconnect.
    pub grace_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: String::new(),
            grace_ms: 30_000,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &Redacted(&self.jwt_secret))
            .field("grace_ms", &self.grace_ms)
            .finish()
    }
}

/// `[api]`: the HTTP API.
///
/// `Debug` hides the key so that a logged configuration does not leak it.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer key for `/api/...`; empty means the HTTP API is disabled.
    pub key: String,
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("key", &Redacted(&self.key))
            .finish()
    }
}

/// `[store]`: the embedded durable store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Database file, relative to the working directory unless absolute.
    pub path: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: "heartline.db".to_owned(),
        }
    }
}

/// Shows whether a secret is set without showing it.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

impl Config {
    /// Parses and validates a configuration; missing keys keep their defaults.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config = Config::parse_toml_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a configuration without checking its values (keys and types are checked):
    /// for a caller that applies overrides first and then calls [`Config::validate`], so
    /// that an override can stand in for a bad value in the file.
    pub fn parse_toml_str(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        check_shape(&table, &default_shape(), "")?;
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.message().to_owned()))
    }

    /// Reads, parses and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses the configuration file at `path` without checking its values
    /// (see [`Config::parse_toml_str`]).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_toml_str(&text)
    }

    /// Applies the secret overrides from the environment: `HEARTLINE_JWT_SECRET` replaces
    /// `auth.jwt_secret` and `HEARTLINE_API_KEY` replaces `api.key`.
    ///
    /// `get` looks a variable up (pass `std::env::var` in production). An empty value
    /// counts as unset, so that a deployment template that passes an unset variable
    /// through does not silently disable the HTTP API or swap the token secret. A value
    /// that is not Unicode is refused, not taken for unset: unset, the server would run
    /// with a generated secret and refuse every real token. Nothing is changed unless both
    /// variables can be read.
    pub fn apply_env(
        &mut self,
        get: impl Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<(), ConfigError> {
        let read = |key: &str| match get(key) {
            Ok(value) if !value.is_empty() => Ok(Some(value)),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::invalid(
                key,
                "the environment variable is not valid Unicode",
            )),
        };
        let secret = read(ENV_JWT_SECRET)?;
        let key = read(ENV_API_KEY)?;
        if let Some(secret) = secret {
            self.auth.jwt_secret = secret;
        }
        if let Some(key) = key {
            self.api.key = key;
        }
        Ok(())
    }

    /// `server.listen` as a socket address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "server.listen",
                format!(
                    "must be an IP address and port such as \"127.0.0.1:3002\", got {:?}",
                    self.server.listen
                ),
            )
        })
    }

    /// Checks every value against its range; returns the first problem found.
    ///
    /// Call it again after changing fields by hand (e.g. a `--listen` override).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        // Spans that drive a repeating timer or a deadline every connection meets must be
        // positive; the others document 0 as "immediately" or "never".
        let (server, engine) = (&self.server, &self.engine);
        let positive = [
            ("server.handshake_timeout_ms", server.handshake_timeout_ms),
            ("engine.ping_interval_ms", engine.ping_interval_ms),
            ("engine.ping_timeout_ms", engine.ping_timeout_ms),
            ("engine.upgrade_timeout_ms", engine.upgrade_timeout_ms),
            ("heartbeat.interval_ms", self.heartbeat.interval_ms),
            ("rate_limit.window_ms", self.rate_limit.window_ms),
        ];
        let zero_allowed = [
            ("shutdown.drain_ms", self.shutdown.drain_ms),
            (
                "connections.idle_timeout_ms",
                self.connections.idle_timeout_ms,
            ),
            ("presence.offline_grace_ms", self.presence.offline_grace_ms),
            ("auth.grace_ms", self.auth.grace_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be > 0"));
            }
        }
        for (key, value) in positive.into_iter().chain(zero_allowed) {
            if value > MAX_DURATION_MS {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be <= {MAX_DURATION_MS}"),
                ));
            }
        }
        self.validate_engine()?;
        if self.connections.per_user < 1 {
            return Err(ConfigError::invalid("connections.per_user", "must be >= 1"));
        }
        if self.rate_limit.messages < 1 {
            return Err(ConfigError::invalid("rate_limit.messages", "must be >= 1"));
        }
        if self.store.path.is_empty() {
            return Err(ConfigError::invalid("store.path", "must not be empty"));
        }
        if self.store.path == ":memory:" {
            return Err(ConfigError::invalid(
                "store.path",
                "must name a file: an in-memory database keeps nothing across a restart",
            ));
        }
        check_api_key(&self.api.key)?;
        Ok(())
    }

    /// Logs each of [`Config::warnings`]; servers call it when they start.
    pub fn log_warnings(&self) {
        for warning in self.warnings() {
            tracing::warn!("{warning}");
        }
    }

    /// Valid settings that are probably not what the operator meant, one sentence each, to
    /// be said at startup.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.server.cors_origins.is_empty() {
            out.push(
                "server.cors_origins is empty: every browser (any request with an Origin \
                 header) is refused; use [\"*\"] to allow any origin"
                    .to_owned(),
            );
        }
        if !self.engine.offers("polling") {
            out.push(
                "engine.transports has no \"polling\": socket.io-client starts on long-polling \
                 unless told otherwise, so only clients given transports: [\"websocket\"] \
                 connect"
                    .to_owned(),
            );
        }
        if self.server.max_outbound_bytes < SMALL_OUTBOUND_BYTES {
            out.push(format!(
                "server.max_outbound_bytes = {}: below {SMALL_OUTBOUND_BYTES} bytes, ordinary \
                 traffic closes connections as slow consumers",
                self.server.max_outbound_bytes
            ));
        }
        // Empty is dev mode; anything else shorter than HS256's 256-bit output can be
        // guessed offline from one token (RFC 7518 §3.2 asks for at least that much key).
        let secret = self.auth.jwt_secret.len();
        if (1..MIN_JWT_SECRET_BYTES).contains(&secret) {
            out.push(format!(
                "auth.jwt_secret is {secret} bytes: an HS256 secret shorter than \
                 {MIN_JWT_SECRET_BYTES} bytes can be guessed from any token it signed"
            ));
        }
        let jwt = &self.auth.jwt_secret;
        if !jwt.is_empty() && jwt.trim() != jwt {
            out.push(
                "auth.jwt_secret begins or ends with whitespace (a newline from a secret \
                 file?): only tokens signed with that whitespace included are accepted"
                    .to_owned(),
            );
        }
        out
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        check_namespace(&self.server.namespace)?;
        for origin in &self.server.cors_origins {
            check_origin(origin)?;
        }
        if self.server.max_connections < 1 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be >= 1",
            ));
        }
        // A connection's queue counts its bytes in 32 bits; a gigabyte per connection is
        // far past any use.
        if !(1..=MAX_OUTBOUND_BYTES).contains(&self.server.max_outbound_bytes) {
            return Err(ConfigError::invalid(
                "server.max_outbound_bytes",
                "must be between 1 and 1073741824 (1 GiB)",
            ));
        }
        Ok(())
    }

    fn validate_engine(&self) -> Result<(), ConfigError> {
        let engine = &self.engine;
        // socket.io-client arms one timer for interval + timeout; keep the sum in range.
        if engine
            .ping_interval_ms
            .saturating_add(engine.ping_timeout_ms)
            > MAX_DURATION_MS
        {
            return Err(ConfigError::invalid(
                "engine.ping_timeout_ms",
                format!(
                    "engine.ping_interval_ms + engine.ping_timeout_ms must be <= {MAX_DURATION_MS}"
                ),
            ));
        }
        if !(1..=MAX_PAYLOAD_LIMIT).contains(&engine.max_payload_bytes) {
            return Err(ConfigError::invalid(
                "engine.max_payload_bytes",
                format!("must be between 1 and {MAX_PAYLOAD_LIMIT}"),
            ));
        }
        if engine.transports.is_empty() {
            return Err(ConfigError::invalid(
                "engine.transports",
                "must name at least one transport",
            ));
        }
        for (i, transport) in engine.transports.iter().enumerate() {
            if !TRANSPORTS.contains(&transport.as_str()) {
                return Err(ConfigError::invalid(
                    "engine.transports",
                    format!(
                        "unknown transport {transport:?}, expected \"websocket\" or \"polling\""
                    ),
                ));
            }
            if engine.transports[..i].contains(transport) {
                return Err(ConfigError::invalid(
                    "engine.transports",
                    format!("{transport:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

/// The namespace appears verbatim in Socket.IO packets (`40/chat,{...}`), where a comma ends
/// it and `?`/`#` would be read as a query; whitespace and control characters never match
/// what a client sends.
fn check_namespace(namespace: &str) -> Result<(), ConfigError> {
    const KEY: &str = "server.namespace";
    if !namespace.starts_with('/') {
        return Err(ConfigError::invalid(KEY, "must start with '/'"));
    }
    if namespace.len() < 2 {
        return Err(ConfigError::invalid(
            KEY,
            "must name a namespace other than \"/\"",
        ));
    }
    if let Some(c) = namespace
        .chars()
        .find(|c| matches!(c, ',' | '?' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::invalid(KEY, format!("must not contain {c:?}")));
    }
    Ok(())
}

/// An `Origin` header is `scheme://host[:port]` with no path; an entry of any other form
/// would never match and silently lock browsers out. One trailing slash, as a URL copied
/// from a browser's address bar has, is tolerated and ignored when matching. Entries are
/// compared as strings, so wildcards, user info, queries and fragments never match, and a
/// browser leaves a scheme's default port out (`http://a.com`, never `http://a.com:80`).
fn check_origin(origin: &str) -> Result<(), ConfigError> {
    const KEY: &str = "server.cors_origins";
    if origin == "*" {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(ConfigError::invalid(
            KEY,
            format!(
                "{origin:?} is not \"*\" or an origin like \"https://chat.example.com\" \
                 (scheme://host[:port], no path){why}"
            ),
        ))
    };
    let Some((scheme, authority)) = origin_without_slash(origin).split_once("://") else {
        return refuse("");
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok
        || authority.is_empty()
        || authority
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return refuse("");
    }
    if let Some(c) = authority
        .chars()
        .find(|c| matches!(c, '*' | '@' | '?' | '#'))
    {
        return refuse(&format!(
            ": {c:?} never matches, entries are compared with the Origin header as strings"
        ));
    }
    // The port follows the host (an IPv6 host is bracketed: `[::1]:8080`).
    let port = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((_, "")) => None,
            Some((_, after)) => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return refuse(""),
            },
            None => return refuse(""),
        },
        None => authority.split_once(':').map(|(_, port)| port),
    };
    if let Some(port) = port {
        let number = port
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0 && port.bytes().all(|b| b.is_ascii_digit()));
        let Some(number) = number else {
            return refuse(&format!(": port {port:?} is not 1 to 65535"));
        };
        if port != number.to_string() {
            return refuse(&format!(
                ": browsers write port {port:?} as {number} in the Origin header"
            ));
        }
        let default = matches!(
            (scheme.to_ascii_lowercase().as_str(), number),
            ("http" | "ws", 80) | ("https" | "wss", 443)
        );
        if default {
            return refuse(&format!(
                ": browsers leave the default port {number} out of the Origin header"
            ));
        }
    }
    Ok(())
}

/// A `server.cors_origins` entry as it is compared with an `Origin` header: without the one
/// trailing slash the configuration tolerates.
pub fn origin_without_slash(entry: &str) -> &str {
    entry.strip_suffix('/').unwrap_or(entry)
}

/// The shape every configuration file must fit: the defaults as a TOML table.
fn default_shape() -> toml::Table {
    // Serializing plain structs of strings, integers within i64 and string arrays cannot
    // fail; an empty table (which refuses every key) would be the only effect if it did.
    match toml::Table::try_from(Config::default()) {
        Ok(table) => table,
        Err(_) => toml::Table::new(),
    }
}

/// Walks `table` against `shape`, refusing unknown keys and values of the wrong type, so
/// that such errors can name the full key path.
fn check_shape(table: &toml::Table, shape: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let Some(expected) = shape.get(key) else {
            return Err(ConfigError::UnknownKey(path));
        };
        check_value(value, expected, &path)?;
    }
    Ok(())
}

fn check_value(value: &toml::Value, expected: &toml::Value, path: &str) -> Result<(), ConfigError> {
    use toml::Value;
    let wrong_type = || ConfigError::WrongType {
        key: path.to_owned(),
        expected: type_name(expected),
        found: type_name(value),
    };
    match (expected, value) {
        (Value::Table(shape), Value::Table(table)) => check_shape(table, shape, path),
        (Value::Integer(_), Value::Integer(n)) if *n < 0 => {
            Err(ConfigError::invalid(path, "must not be negative"))
        }
        (Value::Array(shape), Value::Array(items)) => {
            // Arrays in the defaults are non-empty and uniform; their first element gives
            // the element type.
            if let Some(element) = shape.first() {
                for (i, item) in items.iter().enumerate() {
                    check_value(item, element, &format!("{path}[{i}]"))?;
                }
            }
            Ok(())
        }
        _ if std::mem::discriminant(expected) == std::mem::discriminant(value) => Ok(()),
        _ => Err(wrong_type()),
    }
}

fn type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block from the contract's configuration section, verbatim.
    const CONTRACT_DEFAULTS: &str = r#"
[server]
listen = "127.0.0.1:3002"
namespace = "/chat"
cors_origins = ["*"]          # allowed Origin values for browser clients
max_connections = 100000
handshake_timeout_ms = 10000  # TCP accept to completed namespace connect
connect_rate_per_ip = 0       # new connections per second from one client IP; 0 = no limit
max_outbound_bytes = 1048576  # per-connection send queue; droppable traffic is shed first, then the connection is closed

[shutdown]
drain_ms = 5000               # on SIGTERM, client closes are spread over this long

[engine]
ping_interval_ms = 25000
ping_timeout_ms = 60000
upgrade_timeout_ms = 30000
max_payload_bytes = 1000000
transports = ["websocket", "polling"]

[heartbeat]
interval_ms = 30000

[connections]
per_user = 1                  # live connections per user key; a newer one replaces the oldest
idle_timeout_ms = 0           # close a connection with no application event for this long; 0 = never

[presence]
offline_grace_ms = 3000

[rate_limit]
messages = 10
window_ms = 10000

[auth]
jwt_secret = ""               # empty: a random secret is generated and a dev token printed
grace_ms = 30000

[api]
key = ""                      # empty: the HTTP API is disabled

[store]
path = "heartline.db"         # embedded default
"#;

    fn err(text: &str) -> String {
        match Config::from_toml_str(text) {
            Ok(config) => panic!("accepted {text:?} as {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn contract_block_is_the_default() {
        let config = Config::from_toml_str(CONTRACT_DEFAULTS).expect("contract block parses");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn default_is_valid() {
        Config::default().validate().expect("defaults are valid");
        assert_eq!(
            Config::default().listen_addr().expect("default listen"),
            "127.0.0.1:3002".parse::<SocketAddr>().expect("literal")
        );
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_toml_str("").expect("empty"), Config::default());
        assert_eq!(
            Config::from_toml_str("[server]\n[engine]\n").expect("empty tables"),
            Config::default()
        );
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::from_toml_str(
            "[engine]\nping_interval_ms = 500\n\n[rate_limit]\nmessages = 3\n",
        )
        .expect("partial");
        let mut expected = Config::default();
        expected.engine.ping_interval_ms = 500;
        expected.rate_limit.messages = 3;
        assert_eq!(config, expected);
    }

    #[test]
    fn dotted_and_inline_keys_work() {
        let config =
            Config::from_toml_str("server.listen = \"0.0.0.0:8080\"\nauth = { grace_ms = 10 }\n")
                .expect("dotted");
        assert_eq!(config.server.listen, "0.0.0.0:8080");
        assert_eq!(config.auth.grace_ms, 10);
        assert_eq!(config.engine, EngineConfig::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        assert_eq!(
            err("[server]\nlisen = \"127.0.0.1:1\"\n"),
            "unknown key \"server.lisen\""
        );
        assert_eq!(err("[sever]\nlisten = \"x\"\n"), "unknown key \"sever\"");
        assert_eq!(err("debug = true\n"), "unknown key \"debug\"");
        assert_eq!(
            err("[engine.ping]\ninterval = 1\n"),
            "unknown key \"engine.ping\""
        );
    }

    #[test]
    fn unknown_key_error_reports_its_key() {
        let e = Config::from_toml_str("[api]\nkeys = \"k\"\n").expect_err("unknown");
        assert_eq!(e.key(), Some("api.keys"));
    }

    #[test]
    fn wrong_types_are_named() {
        assert_eq!(
            err("[engine]\nping_interval_ms = \"25s\"\n"),
            "engine.ping_interval_ms: expected an integer, found a string"
        );
        assert_eq!(
            err("[server]\ncors_origins = \"*\"\n"),
            "server.cors_origins: expected an array, found a string"
        );
        assert_eq!(
            err("[engine]\ntransports = [\"websocket\", 1]\n"),
            "engine.transports[1]: expected a string, found an integer"
        );
        assert_eq!(
            err("server = 1\n"),
            "server: expected a table, found an integer"
        );
        assert_eq!(
            err("[rate_limit]\nwindow_ms = 1.5\n"),
            "rate_limit.window_ms: expected an integer, found a float"
        );
        assert_eq!(
            err("[store]\npath = 1979-05-27\n"),
            "store.path: expected a string, found a datetime"
        );
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (
                "[engine]\nping_interval_ms = 0\n",
                "engine.ping_interval_ms: must be > 0",
            ),
            (
                "[engine]\nping_timeout_ms = 0\n",
                "engine.ping_timeout_ms: must be > 0",
            ),
            (
                "[engine]\nupgrade_timeout_ms = -5\n",
                "engine.upgrade_timeout_ms: must not be negative",
            ),
            (
                "[heartbeat]\ninterval_ms = 0\n",
                "heartbeat.interval_ms: must be > 0",
            ),
            (
                "[server]\nhandshake_timeout_ms = 0\n",
                "server.handshake_timeout_ms: must be > 0",
            ),
            (
                "[connections]\nper_user = 0\n",
                "connections.per_user: must be >= 1",
            ),
            (
                "[rate_limit]\nmessages = 0\n",
                "rate_limit.messages: must be >= 1",
            ),
            (
                "[rate_limit]\nwindow_ms = 0\n",
                "rate_limit.window_ms: must be > 0",
            ),
            (
                "[engine]\nmax_payload_bytes = 0\n",
                "engine.max_payload_bytes: must be between 1 and 268435456",
            ),
            (
                "[engine]\nmax_payload_bytes = 268435457\n",
                "engine.max_payload_bytes: must be between 1 and 268435456",
            ),
            (
                "[server]\nnamespace = \"chat\"\n",
                "server.namespace: must start with '/'",
            ),
            ("[store]\npath = \"\"\n", "store.path: must not be empty"),
            (
                "[server]\nmax_outbound_bytes = 0\n",
                "server.max_outbound_bytes: must be between 1 and 1073741824 (1 GiB)",
            ),
            (
                "[server]\nmax_outbound_bytes = 99999999999999\n",
                "server.max_outbound_bytes: must be between 1 and 1073741824 (1 GiB)",
            ),
            (
                "[server]\nmax_connections = 0\n",
                "server.max_connections: must be >= 1",
            ),
            (
                "[presence]\noffline_grace_ms = 2147483648\n",
                "presence.offline_grace_ms: must be <= 2147483647",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(err(text), message, "for {text:?}");
        }
    }

    #[test]
    fn odd_but_valid_settings_are_accepted_with_a_warning() {
        assert!(Config::default().warnings().is_empty());
        let config =
            Config::from_toml_str("[server]\ncors_origins = []\nmax_outbound_bytes = 512\n")
                .expect("valid");
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("server.cors_origins is empty"));
        assert!(warnings[1].starts_with("server.max_outbound_bytes = 512"));
        let short = Config::from_toml_str("[auth]\njwt_secret = \"s3cret\"\n").expect("valid");
        assert_eq!(
            short.warnings(),
            [
                "auth.jwt_secret is 6 bytes: an HS256 secret shorter than 32 bytes can be guessed \
              from any token it signed"
            ]
        );
        let long = Config::from_toml_str(&format!("[auth]\njwt_secret = \"{}\"\n", "k".repeat(32)))
            .expect("valid");
        assert!(long.warnings().is_empty());
        let spaced =
            Config::from_toml_str(&format!("[auth]\njwt_secret = \"{}\\n\"\n", "k".repeat(32)))
                .expect("valid");
        assert_eq!(spaced.warnings().len(), 1, "{:?}", spaced.warnings());
        assert!(spaced.warnings()[0].contains("whitespace"));
        let config =
            Config::from_toml_str("[server]\ncors_origins = [\"http://a.example:8080/\"]\n")
                .expect("a trailing slash is tolerated");
        assert!(config.warnings().is_empty());
        let ws_only =
            Config::from_toml_str("[engine]\ntransports = [\"websocket\"]\n").expect("valid");
        assert_eq!(ws_only.warnings().len(), 1, "{:?}", ws_only.warnings());
        assert!(ws_only.warnings()[0].starts_with("engine.transports has no \"polling\""));
        let polling_only =
            Config::from_toml_str("[engine]\ntransports = [\"polling\"]\n").expect("valid");
        assert!(polling_only.warnings().is_empty());
    }

    #[test]
    fn invalid_strings_and_lists_are_named() {
        assert!(err("[server]\nlisten = \"localhost\"\n").starts_with("server.listen: "));
        assert!(err("[server]\nlisten = \"127.0.0.1\"\n").starts_with("server.listen: "));
        assert!(err("[server]\nnamespace = \"/\"\n").starts_with("server.namespace: "));
        assert!(err("[server]\nnamespace = \"/a,b\"\n").starts_with("server.namespace: "));
        assert!(err("[server]\ncors_origins = [\"https://a.example/x\"]\n")
            .starts_with("server.cors_origins: "));
        assert!(err("[server]\ncors_origins = [\"https://a.example//\"]\n")
            .starts_with("server.cors_origins: "));
        assert!(
            err("[server]\ncors_origins = [\"https:///\"]\n").starts_with("server.cors_origins: ")
        );
        assert!(
            err("[server]\ncors_origins = [\"a.example\"]\n").starts_with("server.cors_origins: ")
        );
        // Entries that could never equal an Origin header a browser sends.
        for bad in [
            "http://b.example:80",
            "https://b.example:443",
            "http://*.c.example",
            "http://d.example?x",
            "http://user@e.example",
            "http://a.example:99999",
            "http://a.example:0",
            "http://a.example:03000",
            "http://a.example:",
            "http://[::1",
        ] {
            let e = err(&format!("[server]\ncors_origins = [\"{bad}\"]\n"));
            assert!(e.starts_with("server.cors_origins: "), "{bad}: {e}");
        }
        for good in [
            "http://b.example:8080",
            "https://b.example",
            "http://[::1]:3000",
            "http://[::1]",
            "http://127.0.0.1:3000/",
        ] {
            assert!(
                Config::from_toml_str(&format!("[server]\ncors_origins = [\"{good}\"]\n")).is_ok(),
                "{good}"
            );
        }
        assert!(err("[engine]\ntransports = []\n").starts_with("engine.transports: "));
        assert!(
            err("[engine]\ntransports = [\"webtransport\"]\n").starts_with("engine.transports: ")
        );
        assert!(err("[engine]\ntransports = [\"polling\", \"polling\"]\n")
            .starts_with("engine.transports: "));
        assert!(
            err("[engine]\nping_interval_ms = 2000000000\nping_timeout_ms = 2000000000\n")
                .starts_with("engine.ping_timeout_ms: ")
        );
    }

    #[test]
    fn valid_non_defaults_are_accepted() {
        let config = Config::from_toml_str(
            r#"
[server]
listen = "[::1]:0"
namespace = "/support"
cors_origins = ["https://chat.example.com", "http://localhost:5173"]
connect_rate_per_ip = 20
[engine]
transports = ["polling"]
[shutdown]
drain_ms = 0
[connections]
per_user = 3
idle_timeout_ms = 600000
"#,
        )
        .expect("valid");
        assert_eq!(config.server.namespace, "/support");
        assert_eq!(config.engine.transports, vec!["polling".to_owned()]);
        assert_eq!(config.connections.per_user, 3);
        assert_eq!(
            config.listen_addr().expect("listen"),
            "[::1]:0".parse::<SocketAddr>().expect("literal")
        );
    }

    #[test]
    fn syntax_errors_are_refused() {
        assert!(err("[server\n").starts_with("invalid TOML: "));
        assert!(err("[server]\nlisten = \n").starts_with("invalid TOML: "));
        assert!(err("[server]\nlisten = \"a\"\nlisten = \"b\"\n").starts_with("invalid TOML: "));
    }

    #[test]
    fn huge_integers_are_refused_not_wrapped() {
        // Beyond i64: TOML itself cannot represent it.
        assert!(err("[rate_limit]\nmessages = 99999999999999999999\n").starts_with("invalid TOML"));
    }

    #[test]
    fn env_overrides_secrets() {
        let mut config =
            Config::from_toml_str("[auth]\njwt_secret = \"file\"\n[api]\nkey = \"k\"\n")
                .expect("secrets");
        config
            .apply_env(|name| match name {
                ENV_JWT_SECRET => Ok("from-env".to_owned()),
                ENV_API_KEY => Ok("api-from-env".to_owned()),
                _ => Err(std::env::VarError::NotPresent),
            })
            .expect("both readable");
        assert_eq!(config.auth.jwt_secret, "from-env");
        assert_eq!(config.api.key, "api-from-env");
    }

    #[test]
    fn an_api_key_no_request_could_present_is_refused() {
        for bad in [
            "s3cr3t\n",
            " s3cr3t",
            "s3cr3t ",
            "s3\u{7f}cr3t",
            "s3cr3tключ",
            "s3\tcr3t",
        ] {
            let mut config = Config::default();
            config.api.key = bad.to_owned();
            let e = config.validate().expect_err("refused");
            assert_eq!(e.key(), Some("api.key"), "{bad:?}");
            assert!(
                !e.to_string().contains(bad.trim()),
                "the key is not shown: {e}"
            );
        }
        let mut config = Config::default();
        config.api.key = "a key-with.some~chars".to_owned();
        config.validate().expect("any printable key");
    }

    #[test]
    fn a_store_path_that_keeps_nothing_is_refused() {
        let mut config = Config::default();
        config.store.path = ":memory:".to_owned();
        let e = config.validate().expect_err("refused");
        assert_eq!(e.key(), Some("store.path"));
        assert!(matches!(
            crate::store::Store::open(std::path::Path::new(":memory:")),
            Err(crate::store::StoreError::InMemory(_))
        ));
    }

    #[test]
    fn unset_or_empty_env_keeps_file_values() {
        let mut config =
            Config::from_toml_str("[auth]\njwt_secret = \"file\"\n[api]\nkey = \"k\"\n")
                .expect("secrets");
        config
            .apply_env(|_| Err(std::env::VarError::NotPresent))
            .expect("unset");
        assert_eq!(config.auth.jwt_secret, "file");
        assert_eq!(config.api.key, "k");
        config.apply_env(|_| Ok(String::new())).expect("empty");
        assert_eq!(config.auth.jwt_secret, "file");
        assert_eq!(config.api.key, "k");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_that_is_not_unicode_is_refused_and_changes_nothing() {
        use std::os::unix::ffi::OsStringExt;
        let not_unicode = || std::ffi::OsString::from_vec(vec![b's', 0xff, b'k']);
        let mut config =
            Config::from_toml_str("[auth]\njwt_secret = \"file\"\n[api]\nkey = \"k\"\n")
                .expect("secrets");
        let e = config
            .apply_env(|name| match name {
                ENV_JWT_SECRET => Ok("from-env".to_owned()),
                _ => Err(std::env::VarError::NotUnicode(not_unicode())),
            })
            .expect_err("refused");
        assert_eq!(e.key(), Some(ENV_API_KEY));
        assert_eq!(config.auth.jwt_secret, "file", "nothing applied");
        let e = config
            .apply_env(|_| Err(std::env::VarError::NotUnicode(not_unicode())))
            .expect_err("refused");
        assert_eq!(e.key(), Some(ENV_JWT_SECRET));
        assert!(e.to_string().contains("not valid Unicode"), "{e}");
    }

    #[test]
    fn debug_hides_secrets() {
        let mut config = Config::default();
        config.auth.jwt_secret = "s3cret-value".to_owned();
        config.api.key = "api-key-value".to_owned();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(!shown.contains("api-key-value"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn load_reads_a_file_and_reports_missing_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("heartline.toml");
        std::fs::write(&path, "[presence]\noffline_grace_ms = 10\n").expect("write");
        let config = Config::load(&path).expect("load");
        assert_eq!(config.presence.offline_grace_ms, 10);

        let missing = dir.path().join("missing.toml");
        let e = Config::load(&missing).expect_err("missing file");
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }

    #[test]
    fn override_then_validate() {
        let mut config = Config::default();
        config.server.listen = "not an address".to_owned();
        let e = config.validate().expect_err("bad listen");
        assert_eq!(e.key(), Some("server.listen"));
        let named = e.given_as("server.listen", "--listen");
        assert_eq!(named.key(), Some("--listen (for server.listen)"));
        assert!(named.to_string().contains("\"not an address\""), "{named}");
        // An error about another key keeps its name.
        let other = ConfigError::invalid("api.key", "bad").given_as("server.listen", "--listen");
        assert_eq!(other.key(), Some("api.key"));
    }
}
