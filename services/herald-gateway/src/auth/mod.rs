//! Authentication: JWTs for users (and producer- or admin-scoped JWTs), single-use WebSocket
//! tickets for browsers, API keys for producers and operators, and dev tokens for `herald dev`.
//!
//! Who may call what is decided by the route groups (see `routes`): each group carries the
//! check of its callers as a layer.

pub mod keys;
pub mod tickets;

use std::collections::HashMap;
use std::time::Duration;

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::AppError;
pub use crate::clock::now_secs;
pub use keys::KeyError;
use keys::VerifyingKey;
pub use tickets::{MAX_TICKETS, MAX_TICKETS_PER_USER, TICKET_TTL, TicketRefused, Tickets};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    /// `produce` marks a producer-scoped token, `admin` an operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Where keys come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<Vec<u8>>,
    /// RS256 public keys (PEM).
    pub rs256_public_pems: Vec<Vec<u8>>,
    /// ES256 public keys (PEM).
    pub es256_public_pems: Vec<Vec<u8>>,
    /// JWKS documents (RFC 7517 key sets, e.g. an identity provider's `jwks.json`).
    pub jwks: Vec<Vec<u8>>,
    /// Producer API keys: key → producer name. Empty means producers are not authenticated
    /// (`herald dev` only).
    pub producer_keys: HashMap<String, String>,
    /// Operator API keys: key → operator name.
    pub admin_keys: HashMap<String, String>,
    /// When set, a token's `aud` must name one of these (and must be present).
    pub audiences: Vec<String>,
    /// When set, a token's `iss` must be one of these (and must be present).
    pub issuers: Vec<String>,
    /// `herald dev`: allow `POST /v1/dev/token` to mint tokens for demo users.
    pub dev_login: bool,
    /// `herald dev`: accept notifications without producer credentials (producer `dev`).
    pub open_producers: bool,
    /// Operator endpoints (audit, presence, status, metrics) without credentials.
    pub open_operators: bool,
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// Token expiry, Unix seconds (tickets carry the issuing token's expiry).
    pub exp: u64,
}

pub struct Auth {
    keys: Vec<VerifyingKey>,
    audiences: Vec<String>,
    issuers: Vec<String>,
    signing: Option<EncodingKey>,
    producer_keys: HashMap<String, String>,
    admin_keys: HashMap<String, String>,
    dev_login: bool,
    open_producers: bool,
    open_operators: bool,
    tickets: Tickets,
}

/// Clock skew allowed on `exp` and `nbf`, seconds.
pub const JWT_LEEWAY_SECS: u64 = 5;

fn unauthorized(why: &str) -> AppError {
    AppError::Unauthorized(why.to_owned())
}

/// A user id from a token: the same rules as every id.
pub fn validate_user(user: &str) -> Result<(), AppError> {
    herald_core::ids::validate_id("user_id", user)
        .map_err(|e| AppError::Unauthorized(e.to_string()))
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Result<Auth, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            keys.push(keys::hs256(secret));
        }
        for pem in &config.rs256_public_pems {
            keys.push(keys::rs256(pem)?);
        }
        for pem in &config.es256_public_pems {
            keys.push(keys::es256(pem)?);
        }
        for doc in &config.jwks {
            keys.extend(keys::jwks(doc)?);
        }
        Ok(Auth {
            keys,
            audiences: config.audiences.clone(),
            issuers: config.issuers.clone(),
            signing: config.hs256_secret.as_deref().map(EncodingKey::from_secret),
            producer_keys: config.producer_keys.clone(),
            admin_keys: config.admin_keys.clone(),
            dev_login: config.dev_login,
            open_producers: config.open_producers,
            open_operators: config.open_operators,
            tickets: Tickets::default(),
        })
    }

    /// Verifies a JWT against every configured key of its algorithm. `alg: none`, unknown
    /// algorithms, bad signatures and expired tokens are refused.
    pub fn verify(&self, token: &str) -> Result<Claims, AppError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthorized("malformed token"))?;
        // RFC 7515 4.1.11: a `crit` header names extensions the token must not be taken
        // without; this server understands none (an empty list is invalid too).
        if header.crit.is_some() {
            return Err(unauthorized(
                "the token's crit header names extensions this server does not support",
            ));
        }
        let mut last = "no key accepts this token's algorithm";
        for k in &self.keys {
            if k.alg != header.alg {
                continue;
            }
            // A token naming its key is only tried against that key (or keys without an id).
            if let (Some(want), Some(have)) = (&header.kid, &k.kid)
                && want != have
            {
                continue;
            }
            let mut v = Validation::new(k.alg);
            let mut required = vec!["exp", "sub"];
            // `nbf` (RFC 7519 4.1.5) is checked when present, with the same leeway as `exp`.
            v.validate_nbf = true;
            v.leeway = JWT_LEEWAY_SECS;
            if self.audiences.is_empty() {
                // No audience configured: a token's `aud` (identity providers set one) is not
                // checked. Configure --jwt-audience to require one.
                v.validate_aud = false;
            } else {
                v.set_audience(&self.audiences);
                required.push("aud");
            }
            if !self.issuers.is_empty() {
                v.set_issuer(&self.issuers);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(data) => {
                    validate_user(&data.claims.sub)?;
                    return Ok(data.claims);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => "token expired",
                        ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                        ErrorKind::InvalidSignature => "bad signature",
                        ErrorKind::InvalidAudience => "token audience not accepted",
                        ErrorKind::InvalidIssuer => "token issuer not accepted",
                        ErrorKind::MissingRequiredClaim(c) if c == "aud" => "token has no aud",
                        ErrorKind::MissingRequiredClaim(c) if c == "iss" => "token has no iss",
                        _ => "invalid token",
                    }
                }
            }
        }
        Err(unauthorized(last))
    }

    /// The user of `Authorization: Bearer <jwt>`.
    pub fn user(&self, headers: &HeaderMap) -> Result<User, AppError> {
        let token =
            bearer(headers).ok_or_else(|| unauthorized("send Authorization: Bearer <token>"))?;
        let claims = self.verify(token)?;
        Ok(User {
            id: claims.sub,
            exp: claims.exp,
        })
    }

    /// The producer name for a request: an API key (`X-Api-Key` or Bearer), or a JWT with
    /// `scope: produce`; without credentials, `open_as` when producers are open (`herald dev`).
    pub fn producer(&self, headers: &HeaderMap, open_as: &str) -> Result<String, AppError> {
        self.scoped(headers, &self.producer_keys, "produce")
            .unwrap_or_else(|| {
                if self.open_producers {
                    Ok(open_as.to_owned())
                } else {
                    Err(unauthorized("send X-Api-Key or a producer token"))
                }
            })
    }

    /// The operator name for a request: an admin API key (`X-Api-Key` or Bearer), or a JWT
    /// with `scope: admin`; without credentials, `operator` when operator endpoints are open.
    pub fn operator(&self, headers: &HeaderMap) -> Result<String, AppError> {
        self.scoped(headers, &self.admin_keys, "admin")
            .unwrap_or_else(|| {
                if self.open_operators {
                    Ok("operator".to_owned())
                } else {
                    Err(unauthorized(
                        "send an admin X-Api-Key or a token with scope admin",
                    ))
                }
            })
    }

    /// A caller named by one of `keys`, or by a JWT of `scope`; `None` without credentials.
    fn scoped(
        &self,
        headers: &HeaderMap,
        keys: &HashMap<String, String>,
        scope: &str,
    ) -> Option<Result<String, AppError>> {
        if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            return Some(
                keys.get(key)
                    .cloned()
                    .ok_or_else(|| unauthorized("unknown API key")),
            );
        }
        let token = bearer(headers)?;
        if let Some(name) = keys.get(token) {
            return Some(Ok(name.clone()));
        }
        Some(self.verify(token).and_then(|claims| {
            if claims.scope.as_deref() == Some(scope) {
                Ok(claims.sub)
            } else {
                Err(AppError::Forbidden(format!(
                    "this token lacks scope {scope}"
                )))
            }
        }))
    }

    /// A single-use ticket for `GET /v1/ws?ticket=…`.
    pub fn issue_ticket(&self, user: &User) -> Result<String, AppError> {
        self.tickets.issue(user).map_err(|_| {
            AppError::Unavailable("too many unredeemed tickets; retry in a few seconds".into())
        })
    }

    /// Redeems a ticket once; [`Auth::put_back_ticket`] undoes it.
    pub fn claim_ticket(&self, ticket: &str) -> Result<tickets::Claimed, AppError> {
        self.tickets.claim(ticket).map_err(|r| match r {
            TicketRefused::Expired => unauthorized("ticket expired"),
            TicketRefused::Unknown => unauthorized("unknown or already used ticket"),
        })
    }

    /// Makes a ticket redeemed for a connection the limits refused valid again.
    pub fn put_back_ticket(&self, claimed: tickets::Claimed) {
        self.tickets.put_back(claimed);
    }

    /// Mints a token for a demo user (`herald dev` only).
    pub fn dev_token(&self, user_id: &str, ttl: Duration) -> Result<String, AppError> {
        if !self.dev_login {
            return Err(AppError::NotFound);
        }
        let key = self.signing.as_ref().ok_or(AppError::NotFound)?;
        let claims = Claims {
            sub: user_id.to_owned(),
            exp: now_secs() + ttl.as_secs(),
            scope: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| AppError::Invalid(e.to_string()))
    }

    pub fn dev_login(&self) -> bool {
        self.dev_login
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .split_once(' ')?;
    // The scheme is case-insensitive (RFC 9110 11.1): `bearer` and `BEARER` are Bearer.
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}
