//! Verification keys for user and producer JWTs: an HS256 secret, RS256/ES256 public keys (PEM)
//! and JWKS documents (an identity provider's key set).

use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey};

/// A key that can verify tokens of one algorithm, with its key id if the key set gave one.
pub struct VerifyingKey {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub key: DecodingKey,
}

/// A key that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("RS256 public key: {0}")]
    Rs256(jsonwebtoken::errors::Error),
    #[error("ES256 public key: {0}")]
    Es256(jsonwebtoken::errors::Error),
    #[error("JWKS: {0}")]
    JwksDocument(serde_json::Error),
    #[error("JWKS key algorithm {alg}: {error}")]
    JwksAlgorithm {
        alg: String,
        error: jsonwebtoken::errors::Error,
    },
    #[error("JWKS: a key without alg of an unsupported type")]
    JwksUnsupported,
    #[error("JWKS: symmetric keys are not accepted from a key set")]
    JwksSymmetric,
    #[error("JWKS key: {0}")]
    JwksKey(jsonwebtoken::errors::Error),
}

pub fn hs256(secret: &[u8]) -> VerifyingKey {
    VerifyingKey {
        alg: Algorithm::HS256,
        kid: None,
        key: DecodingKey::from_secret(secret),
    }
}

pub fn rs256(pem: &[u8]) -> Result<VerifyingKey, KeyError> {
    Ok(VerifyingKey {
        alg: Algorithm::RS256,
        kid: None,
        key: DecodingKey::from_rsa_pem(pem).map_err(KeyError::Rs256)?,
    })
}

pub fn es256(pem: &[u8]) -> Result<VerifyingKey, KeyError> {
    Ok(VerifyingKey {
        alg: Algorithm::ES256,
        kid: None,
        key: DecodingKey::from_ec_pem(pem).map_err(KeyError::Es256)?,
    })
}

/// Every key of a JWKS document. Symmetric keys are refused: a key set is public.
pub fn jwks(doc: &[u8]) -> Result<Vec<VerifyingKey>, KeyError> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(doc).map_err(KeyError::JwksDocument)?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(a), _) => {
                Algorithm::from_str(&a.to_string()).map_err(|error| KeyError::JwksAlgorithm {
                    alg: a.to_string(),
                    error,
                })?
            }
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            (None, _) => return Err(KeyError::JwksUnsupported),
        };
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(KeyError::JwksSymmetric);
        }
        let key = DecodingKey::from_jwk(jwk).map_err(KeyError::JwksKey)?;
        keys.push(VerifyingKey {
            alg,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    Ok(keys)
}
