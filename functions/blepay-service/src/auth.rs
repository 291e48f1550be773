//! Who is calling: phones by HS256 JWT (`sub` = user id, `exp` required), operators by a bearer
//! token compared in constant time. Shared by HTTP and gRPC.

use blepay_core::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::ApiError;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

fn bearer(header: Option<&str>) -> Result<&str, ApiError> {
    let value = header.ok_or_else(|| ApiError::unauthenticated("missing Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthenticated("Authorization must be `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthenticated(
            "Authorization must be `Bearer <token>`",
        ));
    }
    Ok(token.trim())
}

/// The phone user named by a valid JWT in an `Authorization` header value.
///
/// # Errors
/// UNAUTHENTICATED when missing, malformed, badly signed, expired, or `sub` is not a valid user id.
pub fn phone_user(config: &Config, header: Option<&str>) -> Result<UserId, ApiError> {
    let token = bearer(header)?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = 30;
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
        &validation,
    )
    .map_err(|e| ApiError::unauthenticated(format!("invalid token: {e}")))?;
    UserId::parse(&data.claims.sub)
        .map_err(|e| ApiError::unauthenticated(format!("token subject: {e}")))
}

/// Check an operator's bearer token.
///
/// # Errors
/// UNAUTHENTICATED unless it equals `BLEPAY_OPS_TOKEN` (constant-time comparison).
pub fn ops(config: &Config, header: Option<&str>) -> Result<(), ApiError> {
    let token = bearer(header)?;
    if bool::from(token.as_bytes().ct_eq(config.ops_token.expose().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthenticated("invalid operator token"))
    }
}

/// Mint a development phone JWT for `user`, valid `ttl_secs` from `now`.
///
/// # Errors
/// When signing fails.
pub fn mint_token(
    secret: &str,
    user: &UserId,
    now: u64,
    ttl_secs: u64,
) -> Result<String, ApiError> {
    let claims = Claims {
        sub: user.to_string(),
        exp: now.saturating_add(ttl_secs),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| {
        ApiError::new(
            crate::error::ErrorCode::Internal,
            format!("cannot sign token: {e}"),
        )
    })
}
