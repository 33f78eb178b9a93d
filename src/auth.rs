//! Who may call what: bearer tokens bound to tenants and a role, checked at the edge of every
//! gRPC handler and console endpoint before anything else happens.
//!
//! ```text
//! authorization: Bearer kg_…  ──▶ AccessInterceptor (server layer): token → Principal in the
//!                                  request's extensions; a wrong token is UNAUTHENTICATED here
//! handler ──▶ auth::authorize(&request, Role::Supervisor, tenant) ──▶ Principal or
//!             UNAUTHENTICATED (no token) / PERMISSION_DENIED (wrong role or tenant)
//! ```
//!
//! A new handler needs one line at its top (see [`authorize`]). Requests without a token are
//! let through the layer so that health checks and reflection stay open; the screening and
//! alert handlers refuse them, because [`authorize`] finds no principal.
//!
//! Tokens are stored as SHA-256 hashes (see [`TokenHash`]). With no tokens file configured,
//! authentication is off: every request acts as an unrestricted [`Principal`], which the
//! server allows only when every listener is on loopback ([`check_exposure`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::error::ScreenError;

/// Prefix of minted tokens, so a leaked one is recognisable in a secret scanner's rules.
pub const TOKEN_PREFIX: &str = "kg_";
/// Random bytes in a minted token: 256 bits, far beyond guessing or brute-forcing its hash.
const TOKEN_RANDOM_BYTES: usize = 32;

/// What a token may do. Each role reaches its own RPCs for its own tenants; `Admin` reaches
/// everything, including the admin RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Streams conversations in: `Screen` and `ScreenText`.
    Producer,
    /// Reads and acknowledges alerts: `Subscribe`, `Acknowledge`, `EntryStats`, the console.
    Supervisor,
    /// Everything, plus administration (lexicon reload, stats).
    Admin,
}

impl Role {
    /// The role's name in the tokens file and on the command line.
    pub fn code(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may do what `required` allows.
    pub fn permits(self, required: Role) -> bool {
        self == Role::Admin || self == required
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "producer" => Ok(Role::Producer),
            "supervisor" => Ok(Role::Supervisor),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (producer, supervisor or admin)")),
        }
    }
}

/// The tenants a token acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// Every tenant (`tenants = ["*"]`, or authentication off).
    All,
    /// Only these.
    Only(BTreeSet<String>),
}

impl Tenants {
    /// Whether `tenant` is among them.
    pub fn contains(&self, tenant: &str) -> bool {
        match self {
            Tenants::All => true,
            Tenants::Only(set) => set.contains(tenant),
        }
    }
}

/// The caller a request was authenticated as; handlers read it through [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name from the tokens file (never the secret), for logs.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// For whom.
    pub tenants: Tenants,
}

impl Principal {
    /// The caller when authentication is off (loopback only): anyone may do anything.
    pub fn unrestricted() -> Self {
        Principal { name: "anonymous (auth off)".into(), role: Role::Admin, tenants: Tenants::All }
    }

    /// Checks that this caller may act with `role` for `tenant`. An empty tenant is left to
    /// the handler's validation, which reports it as a missing field.
    ///
    /// # Errors
    /// [`ScreenError::PermissionDenied`] naming what is missing; the message names neither
    /// the token nor the tenant, so it is safe to log.
    pub fn check(&self, role: Role, tenant: &str) -> Result<(), ScreenError> {
        if !self.role.permits(role) {
            return Err(ScreenError::PermissionDenied(format!(
                "this token's role ({}) may not call this method",
                self.role.code()
            )));
        }
        if !tenant.is_empty() && !self.tenants.contains(tenant) {
            return Err(ScreenError::PermissionDenied(
                "this token may not act for the requested tenant".into(),
            ));
        }
        Ok(())
    }
}

/// Checks that the caller of `request` may act with `role` for `tenant`: the one call every
/// handler makes first.
///
/// ```ignore
/// async fn reload_lexicon(&self, request: Request<pb::ReloadRequest>) -> Result<.., Status> {
///     auth::authorize(&request, Role::Admin, "")?;
///     ...
/// }
/// ```
///
/// Pass `""` as the tenant for methods that are not about one tenant (admin RPCs), or when the
/// tenant comes later in a stream (then call [`Principal::check`] when it arrives).
///
/// # Errors
/// UNAUTHENTICATED when the request carries no token (the server's [`AccessInterceptor`]
/// already refused wrong ones); PERMISSION_DENIED for the wrong role or tenant.
pub fn authorize<T>(request: &Request<T>, role: Role, tenant: &str) -> Result<Principal, Status> {
    let principal = request
        .extensions()
        .get::<Principal>()
        .ok_or(ScreenError::Unauthenticated("a bearer token is required"))?;
    principal.check(role, tenant)?;
    Ok(principal.clone())
}

/// The SHA-256 of a token, which is all the tokens file keeps.
///
/// A plain hash (no salt, no slow KDF) is enough because minted tokens carry 256 random bits:
/// unlike passwords there is no dictionary to try, so a stolen tokens file does not reveal
/// them, and a fast hash keeps every request's check in microseconds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token`.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// Anything else.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(format!("sha256 must be 64 hex digits, not {}", bytes.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| "sha256 must be hex".to_owned())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| "sha256 must be hex".to_owned())?;
        }
        Ok(TokenHash(out))
    }

    /// Lower-case hex, as the tokens file holds it.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not secret, but a short form keeps logs and test output readable.
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// One entry of the tokens file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// A name for people and logs (`bank-ivr-2026`), never the secret.
    pub name: String,
    /// The token's hash.
    pub hash: TokenHash,
    /// Its role.
    pub role: Role,
    /// Its tenants.
    pub tenants: Tenants,
}

/// The tokens the server accepts, loaded from the tokens file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStore {
    entries: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSection {
    name: String,
    sha256: String,
    role: String,
    tenants: Vec<String>,
}

impl TokenStore {
    /// A store of these entries.
    pub fn new(entries: Vec<TokenEntry>) -> Self {
        TokenStore { entries }
    }

    /// Reads a tokens file (see `examples/tokens.toml`).
    ///
    /// # Errors
    /// An unreadable file, bad TOML, or bad entries: every problem, each naming its entry.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    /// Parses tokens-file TOML.
    ///
    /// # Errors
    /// Every problem, one per line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.message().trim().to_owned())?;
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        for (i, section) in file.token.into_iter().enumerate() {
            let at = format!("token {} ({:?})", i + 1, section.name);
            let hash = TokenHash::from_hex(&section.sha256).map_err(|e| format!("{at}: {e}"));
            let role = section.role.parse::<Role>().map_err(|e| format!("{at}: {e}"));
            let tenants = if section.tenants.iter().any(|t| t == "*") {
                Ok(Tenants::All)
            } else if section.tenants.is_empty() || section.tenants.iter().any(String::is_empty) {
                Err(format!("{at}: tenants must name at least one tenant, or \"*\""))
            } else {
                Ok(Tenants::Only(section.tenants.into_iter().collect()))
            };
            match (hash, role, tenants) {
                (Ok(hash), Ok(role), Ok(tenants)) => {
                    entries.push(TokenEntry { name: section.name, hash, role, tenants })
                }
                (hash, role, tenants) => {
                    errors.extend([hash.err(), role.err(), tenants.err()].into_iter().flatten())
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for entry in &entries {
            if !seen.insert(entry.hash.0) {
                errors.push(format!("token {:?}: the same sha256 appears twice", entry.name));
            }
        }
        if entries.is_empty() && errors.is_empty() {
            errors.push("no [[token]] entries: nobody could call the server".into());
        }
        if errors.is_empty() { Ok(TokenStore { entries }) } else { Err(errors.join("\n")) }
    }

    /// The entry for `token`, if any.
    ///
    /// Every entry is compared, in constant time, whatever matches: the time taken says
    /// nothing about how close a guess came (hashing first already hides that; this keeps it
    /// true if the hash ever goes).
    pub fn find(&self, token: &str) -> Option<&TokenEntry> {
        let hash = TokenHash::of(token);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.0.ct_eq(&hash.0)) {
                found = Some(entry);
            }
        }
        found
    }

    /// How many tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No tokens.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The server's authentication: a token store, or off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    tokens: Option<Arc<TokenStore>>,
}

impl Access {
    /// Authentication off: every caller is unrestricted (loopback only).
    pub fn off() -> Self {
        Access { tokens: None }
    }

    /// Authentication with these tokens.
    pub fn tokens(store: TokenStore) -> Self {
        Access { tokens: Some(Arc::new(store)) }
    }

    /// Whether callers must present a token.
    pub fn is_on(&self) -> bool {
        self.tokens.is_some()
    }

    /// The caller presenting `token` (`None` when no token was presented).
    ///
    /// # Errors
    /// UNAUTHENTICATED for a token the store does not hold; `Ok(None)` for none presented with
    /// authentication on, which [`authorize`] then refuses.
    pub fn principal(&self, token: Option<&str>) -> Result<Option<Principal>, ScreenError> {
        let Some(store) = &self.tokens else {
            return Ok(Some(Principal::unrestricted()));
        };
        let Some(token) = token else { return Ok(None) };
        let entry = store
            .find(token)
            .ok_or(ScreenError::Unauthenticated("the bearer token is not valid"))?;
        Ok(Some(Principal {
            name: entry.name.clone(),
            role: entry.role,
            tenants: entry.tenants.clone(),
        }))
    }

    /// The caller of a console request: the token from its `Authorization: Bearer` header or,
    /// for `EventSource` (which cannot set headers), its `access_token` query parameter.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing or wrong token.
    pub fn http_principal(
        &self,
        authorization: Option<&str>,
        query_token: Option<&str>,
    ) -> Result<Principal, ScreenError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .or(query_token.filter(|t| !t.is_empty()));
        self.principal(token)?.ok_or(ScreenError::Unauthenticated("a bearer token is required"))
    }
}

/// The server layer that authenticates every gRPC request: it puts the caller's [`Principal`]
/// into the request's extensions for [`authorize`], refuses a wrong token, and lets a request
/// without one through (health checks), for the handlers to refuse.
#[derive(Debug, Clone)]
pub struct AccessInterceptor(pub Access);

impl tonic::service::Interceptor for AccessInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = bearer(request.metadata())?;
        if let Some(principal) = self.0.principal(token)? {
            request.extensions_mut().insert(principal);
        }
        Ok(request)
    }
}

/// The `authorization` header value a client sends with `token`: `Bearer <token>`, the form
/// [`AccessInterceptor`] reads back.
///
/// # Errors
/// A token that is not printable ASCII cannot be a header value.
pub fn bearer_header(
    token: &str,
) -> Result<
    tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    tonic::metadata::errors::InvalidMetadataValue,
> {
    format!("Bearer {token}").parse()
}

/// The token in an `authorization: Bearer …` header, if any.
fn bearer(metadata: &MetadataMap) -> Result<Option<&str>, ScreenError> {
    let Some(value) = metadata.get("authorization") else { return Ok(None) };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(Some)
        .ok_or(ScreenError::Unauthenticated("the authorization header must be \"Bearer <token>\""))
}

/// Mints a new token: `kg_` and 64 hex digits from the OS's random source.
///
/// # Errors
/// The OS has no random source.
pub fn mint_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{TOKEN_PREFIX}{hex}"))
}

/// The tokens-file entry for a freshly minted token, ready to append.
pub fn token_entry_toml(name: &str, token: &str, role: Role, tenants: &[String]) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let tenants: Vec<String> = tenants.iter().map(|t| q(t)).collect();
    format!(
        "[[token]]\nname = {}\nsha256 = {}\nrole = {}\ntenants = [{}]\n",
        q(name),
        q(&TokenHash::of(token).to_hex()),
        q(role.code()),
        tenants.join(", ")
    )
}

/// The server's TLS identity and, for mutual TLS, the CA its clients' certificates must chain
/// to. PEM bytes, read from the files named in `[tls]`.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// Certificate chain, leaf first.
    pub cert: Vec<u8>,
    /// The private key.
    pub key: Vec<u8>,
    /// When set, every client must present a certificate signed by this CA.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key, not even in a debug dump of the config.
        f.debug_struct("TlsPem")
            .field("cert_bytes", &self.cert.len())
            .field("key", &"<redacted>")
            .field("client_ca", &self.client_ca.as_ref().map(Vec::len))
            .finish()
    }
}

impl TlsPem {
    /// tonic's server TLS configuration (rustls) for this identity.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert, &self.key);
        let config = tonic::transport::ServerTlsConfig::new().identity(identity);
        match &self.client_ca {
            // With a client CA, tonic (rustls's WebPkiClientVerifier) requires a client
            // certificate unless `client_auth_optional` is set, which we never set.
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// Why the server refuses to start with this exposure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} is not a loopback address and authentication is off: set [auth] tokens_file in the \
     config file (mint tokens with `kasuhara-guard token new`), or listen on 127.0.0.1"
)]
pub struct ExposureError(pub SocketAddr);

/// Checks that authentication is on unless every listener is on loopback, and says loudly
/// (WARN) when it is off.
///
/// # Errors
/// The first non-loopback listener when authentication is off.
pub fn check_exposure(access: &Access, listeners: &[SocketAddr]) -> Result<(), ExposureError> {
    if access.is_on() {
        return Ok(());
    }
    if let Some(exposed) = listeners.iter().find(|a| !a.ip().is_loopback()) {
        return Err(ExposureError(*exposed));
    }
    tracing::warn!(
        ?listeners,
        "AUTHENTICATION IS OFF: any local process may screen, subscribe and acknowledge for \
         every tenant; allowed only because every listener is on loopback"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (TokenStore, String, String) {
        let producer = mint_token().expect("random");
        let admin = mint_token().expect("random");
        let text = format!(
            "{}{}",
            token_entry_toml("p", &producer, Role::Producer, &["a".into()]),
            token_entry_toml("root", &admin, Role::Admin, &["*".into()])
        );
        (TokenStore::parse(&text).unwrap_or_else(|e| panic!("{e}")), producer, admin)
    }

    /// A minted token's printed entry reads back and finds the token; others find nothing.
    #[test]
    fn minted_entries_round_trip() {
        let (store, producer, admin) = store();
        assert_eq!(store.len(), 2);
        let entry = store.find(&producer).expect("producer token");
        assert_eq!((entry.name.as_str(), entry.role), ("p", Role::Producer));
        assert_eq!(store.find(&admin).map(|e| e.tenants.clone()), Some(Tenants::All));
        assert!(store.find("kg_0000").is_none());
        assert!(producer.starts_with(TOKEN_PREFIX) && producer.len() == 3 + 64);
        assert_ne!(producer, admin, "help: tokens are random");
    }

    /// Role and tenant checks: admin reaches everything, others only their own.
    #[test]
    fn roles_and_tenants() {
        let only_a = Tenants::Only(["a".to_owned()].into());
        let p = Principal { name: "p".into(), role: Role::Producer, tenants: only_a.clone() };
        assert!(p.check(Role::Producer, "a").is_ok());
        assert!(p.check(Role::Producer, "").is_ok(), "help: a missing tenant is validation's");
        assert!(matches!(p.check(Role::Producer, "b"), Err(ScreenError::PermissionDenied(_))));
        assert!(matches!(p.check(Role::Supervisor, "a"), Err(ScreenError::PermissionDenied(_))));
        let admin = Principal { role: Role::Admin, ..p };
        assert!(admin.check(Role::Supervisor, "a").is_ok());
        assert!(admin.check(Role::Admin, "b").is_err(), "help: admin is still tenant-bound");
    }

    /// Bad entries are all reported, each naming its entry.
    #[test]
    fn bad_tokens_file() {
        let err = TokenStore::parse(
            "[[token]]\nname = \"x\"\nsha256 = \"abc\"\nrole = \"boss\"\ntenants = []\n",
        )
        .expect_err("invalid");
        assert!(err.contains("64 hex") && err.contains("boss") && err.contains("tenants"), "{err}");
        assert!(TokenStore::parse("").is_err(), "help: an empty store would lock everyone out");
        let entry = token_entry_toml("x", "kg_1", Role::Admin, &["*".into()]);
        let twice = format!("{entry}{}", entry.replace("\"x\"", "\"y\""));
        assert!(TokenStore::parse(&twice).expect_err("dup").contains("twice"));
    }

    /// The shipped sample tokens file parses, and its entries accept no token we know.
    #[test]
    fn example_tokens_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tokens.toml");
        let store = TokenStore::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.len(), 3);
        assert!(store.find("").is_none() && store.find("kg_").is_none());
    }

    /// Auth off needs loopback listeners; auth on allows any.
    #[test]
    fn exposure() {
        let local: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let public: SocketAddr = "0.0.0.0:1".parse().expect("addr");
        assert!(check_exposure(&Access::off(), &[local]).is_ok());
        let err = check_exposure(&Access::off(), &[local, public]).expect_err("exposed");
        assert!(err.to_string().contains("tokens_file"), "help: the error names the fix");
        assert!(check_exposure(&Access::tokens(store().0), &[public]).is_ok());
    }

    /// Console tokens come from the header or the query; a wrong one is refused.
    #[test]
    fn http_tokens() {
        let (store, producer, _) = store();
        let access = Access::tokens(store);
        let header = format!("Bearer {producer}");
        assert_eq!(access.http_principal(Some(&header), None).expect("header").name, "p");
        assert_eq!(access.http_principal(None, Some(&producer)).expect("query").name, "p");
        assert!(access.http_principal(None, None).is_err());
        assert!(access.http_principal(Some("Bearer kg_wrong"), None).is_err());
        assert!(Access::off().http_principal(None, None).is_ok());
    }
}
