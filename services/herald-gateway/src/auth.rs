//! Authentication: JWTs for users (and producer-scoped JWTs), single-use WebSocket tickets for
//! browsers, API keys for producers, and dev tokens for `herald dev`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::AppError;

/// How long a WebSocket ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most unredeemed tickets held at once; beyond, the oldest expire first.
pub const MAX_TICKETS: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    /// `produce` marks a producer-scoped token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Where keys come from.
#[derive(Debug, Clone, Default)]
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
    /// `herald dev`: allow `POST /v1/dev/token` to mint tokens for demo users.
    pub dev_login: bool,
    /// `herald dev`: accept notifications without producer credentials (producer `dev`).
    pub open_producers: bool,
}

pub struct Auth {
    /// (algorithm, key id if any, key).
    keys: Vec<(Algorithm, Option<String>, DecodingKey)>,
    signing: Option<EncodingKey>,
    producer_keys: HashMap<String, String>,
    dev_login: bool,
    open_producers: bool,
    tickets: Mutex<HashMap<String, (String, Instant)>>,
}

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    /// Token expiry, Unix seconds (tickets carry the issuing token's expiry).
    pub exp: u64,
}

fn unauthorized(why: &str) -> AppError {
    AppError::Unauthorized(why.to_owned())
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Result<Auth, String> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            keys.push((Algorithm::HS256, None, DecodingKey::from_secret(secret)));
        }
        for pem in &config.rs256_public_pems {
            keys.push((
                Algorithm::RS256,
                None,
                DecodingKey::from_rsa_pem(pem).map_err(|e| format!("RS256 public key: {e}"))?,
            ));
        }
        for pem in &config.es256_public_pems {
            keys.push((
                Algorithm::ES256,
                None,
                DecodingKey::from_ec_pem(pem).map_err(|e| format!("ES256 public key: {e}"))?,
            ));
        }
        for doc in &config.jwks {
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_slice(doc).map_err(|e| format!("JWKS: {e}"))?;
            for jwk in &set.keys {
                use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
                let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                    (Some(a), _) => Algorithm::from_str(&a.to_string())
                        .map_err(|e| format!("JWKS key algorithm {a}: {e}"))?,
                    (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                    (None, AlgorithmParameters::EllipticCurve(p))
                        if p.curve == EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    (None, _) => {
                        return Err("JWKS: a key without alg of an unsupported type".into());
                    }
                };
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return Err("JWKS: symmetric keys are not accepted from a key set".into());
                }
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key: {e}"))?;
                keys.push((alg, jwk.common.key_id.clone(), key));
            }
        }
        Ok(Auth {
            keys,
            signing: config.hs256_secret.as_deref().map(EncodingKey::from_secret),
            producer_keys: config.producer_keys.clone(),
            dev_login: config.dev_login,
            open_producers: config.open_producers,
            tickets: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies a JWT against every configured key of its algorithm. `alg: none`, unknown
    /// algorithms, bad signatures and expired tokens are refused.
    pub fn verify(&self, token: &str) -> Result<Claims, AppError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthorized("malformed token"))?;
        let mut last = "no key accepts this token's algorithm";
        for (alg, kid, key) in &self.keys {
            if *alg != header.alg {
                continue;
            }
            // A token naming its key is only tried against that key (or keys without an id).
            if let (Some(want), Some(have)) = (&header.kid, kid)
                && want != have
            {
                continue;
            }
            let mut v = Validation::new(*alg);
            v.set_required_spec_claims(&["exp", "sub"]);
            v.leeway = 5;
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) => {
                    crate::api::validate_user(&data.claims.sub)?;
                    return Ok(data.claims);
                }
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature",
                        _ => "invalid token",
                    }
                }
            }
        }
        Err(unauthorized(last))
    }

    /// The user of `Authorization: Bearer <jwt>`.
    pub fn user_from_headers(&self, headers: &HeaderMap) -> Result<User, AppError> {
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
        if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            return self
                .producer_keys
                .get(key)
                .cloned()
                .ok_or_else(|| unauthorized("unknown API key"));
        }
        if let Some(token) = bearer(headers) {
            if let Some(p) = self.producer_keys.get(token) {
                return Ok(p.clone());
            }
            let claims = self.verify(token)?;
            if claims.scope.as_deref() != Some("produce") {
                return Err(AppError::Forbidden("this token may not produce".into()));
            }
            return Ok(claims.sub);
        }
        if self.open_producers {
            return Ok(open_as.to_owned());
        }
        Err(unauthorized("send X-Api-Key or a producer token"))
    }

    /// A single-use ticket for `GET /v1/ws?ticket=…`.
    pub fn issue_ticket(&self, user: &User) -> String {
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut tickets = self.tickets.lock().expect("tickets lock");
        if tickets.len() >= MAX_TICKETS {
            tickets.retain(|_, (_, at)| now.duration_since(*at) < TICKET_TTL);
            if tickets.len() >= MAX_TICKETS {
                // Still full of live tickets: drop an arbitrary one rather than grow.
                if let Some(k) = tickets.keys().next().cloned() {
                    tickets.remove(&k);
                }
            }
        }
        tickets.insert(ticket.clone(), (format!("{}\n{}", user.id, user.exp), now));
        ticket
    }

    /// Redeems a ticket once.
    pub fn redeem_ticket(&self, ticket: &str) -> Result<User, AppError> {
        let entry = self.tickets.lock().expect("tickets lock").remove(ticket);
        match entry {
            Some((who, at)) if at.elapsed() < TICKET_TTL => {
                let (id, exp) = who.split_once('\n').expect("ticket entry");
                Ok(User {
                    id: id.to_owned(),
                    exp: exp.parse().unwrap_or(0),
                })
            }
            Some(_) => Err(unauthorized("ticket expired")),
            None => Err(unauthorized("unknown or already used ticket")),
        }
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
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}
