//! The caller API Gateway already authenticated, moved from the Lambda request context into the
//! extensions the service's extractors trust ([`AuthorizedUser`], [`AuthorizedOperator`]).
//!
//! - JWT authorizer (phone routes): `requestContext.authorizer.jwt.claims.sub` is the user. The
//!   gateway checked the signature, `iss`, `aud` and `exp`; the claims still pass the service's
//!   [`TokenPolicy`] (maximum lifetime, `iat` not in the future, `nbf`, and `iss` / `aud` when
//!   `BLEPAY_JWT_ISSUER` / `BLEPAY_JWT_AUDIENCE` are set), so a gateway misconfiguration or a
//!   provider issuing week-long tokens does not widen what the service accepts.
//! - IAM authorization (ops routes): `requestContext.authorizer.iam` names the signed caller.
//! - No authorizer (`cargo lambda watch`, the machine route): nothing is inserted, and the
//!   extractors check the `Authorization` header as `blepay serve` does.
//!
//! The request context is built by API Gateway, never by the client, so it cannot be forged.
//!
//! An HTTP API has no resource policy: IAM authorization lets in any principal of the account
//! whose own policies allow `execute-api:Invoke` on the route. With [`OperatorRole::Only`]
//! (`BLEPAY_OPERATOR_ROLE_ID`, set by infra/template.yaml) only sessions of the stack's operator
//! role are operators; any other IAM caller is refused with 401 UNAUTHENTICATED before a handler
//! runs.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use blepay_core::UserId;
use blepay_service::auth::{Audience, Claims, TokenPolicy, refused};
use blepay_service::http::{AuthorizedOperator, AuthorizedUser};
use blepay_service::{ApiError, App, Operator, Role};
use lambda_http::request::RequestContext;

/// Which IAM callers are operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OperatorRole {
    /// Any IAM principal the gateway let through (when `BLEPAY_OPERATOR_ROLE_ID` is unset).
    #[default]
    AnyIamCaller,
    /// Only sessions of the IAM role with this unique id (`AROA…`): the gateway's
    /// `authorizer.iam.userId` of a role session is `<role id>:<session name>`.
    Only(String),
}

impl OperatorRole {
    /// Whether the IAM caller the gateway describes is an operator.
    fn admits(&self, user_id: Option<&str>) -> bool {
        match self {
            Self::AnyIamCaller => true,
            Self::Only(role_id) => user_id
                .and_then(|u| u.strip_prefix(role_id.as_str()))
                .is_some_and(|rest| rest.starts_with(':')),
        }
    }
}

/// Who the gateway says is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A phone user, from the JWT authorizer's `sub` claim.
    User(UserId),
    /// An IAM principal (ARN, or the caller id when the ARN is absent).
    Operator(String),
    /// No authorizer context.
    Nobody,
}

/// Read the identity out of a Lambda request context, checking the JWT authorizer's claims
/// against `policy` at `now`; IAM callers must be `operators`.
///
/// # Errors
/// UNAUTHENTICATED (the generic message) when a JWT authorizer context fails the policy: no
/// `sub` or one that is not a valid user id, no or a non-numeric `exp`, too long a lifetime, a
/// future `iat`, or the wrong issuer or audience; or when an IAM caller is not a session of the
/// operator role.
pub fn upstream(
    context: Option<&RequestContext>,
    operators: &OperatorRole,
    policy: &TokenPolicy,
    now: u64,
) -> Result<Upstream, ApiError> {
    let Some(RequestContext::ApiGatewayV2(ctx)) = context else {
        return Ok(Upstream::Nobody);
    };
    let Some(authorizer) = ctx.authorizer.as_ref() else {
        return Ok(Upstream::Nobody);
    };
    if let Some(jwt) = authorizer.jwt.as_ref() {
        let claims = gateway_claims(&jwt.claims)?;
        return Ok(Upstream::User(policy.check(&claims, now)?));
    }
    if let Some(iam) = authorizer.iam.as_ref() {
        let principal = iam
            .user_arn
            .clone()
            .or_else(|| iam.caller_id.clone())
            .unwrap_or_else(|| "unknown IAM principal".to_owned());
        if !operators.admits(iam.user_id.as_deref()) {
            tracing::warn!(%principal, "IAM caller is not the operator role: refused");
            return Err(refused(format_args!(
                "IAM caller {principal} is not the operator role"
            )));
        }
        return Ok(Upstream::Operator(principal));
    }
    Ok(Upstream::Nobody)
}

/// The registered claims out of the authorizer's string map (API Gateway passes every claim as
/// a string; a list such as `aud` as `[a b]`).
fn gateway_claims(map: &std::collections::HashMap<String, String>) -> Result<Claims, ApiError> {
    let number = |name: &str| {
        map.get(name)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| refused(format_args!("claim `{name}` is not a whole number")))
            })
            .transpose()
    };
    let aud = map.get("aud").map(|v| {
        let v = v.trim();
        match v.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            Some(list) => Audience::Many(
                list.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => Audience::One(v.to_owned()),
        }
    });
    Ok(Claims {
        sub: map.get("sub").cloned(),
        exp: number("exp")?,
        nbf: number("nbf")?,
        iat: number("iat")?,
        iss: map.get("iss").cloned(),
        aud,
    })
}

/// Middleware: insert the gateway-authenticated caller into the request's extensions.
async fn insert_identity(
    State((app, operators)): State<(App, Arc<OperatorRole>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let policy = app.config().phone_tokens.policy();
    match upstream(
        req.extensions().get::<RequestContext>(),
        &operators,
        policy,
        app.now(),
    ) {
        Ok(Upstream::User(user)) => {
            req.extensions_mut().insert(AuthorizedUser(user));
        }
        Ok(Upstream::Operator(principal)) => {
            // IAM callers admitted as operators are owners until roles map from IAM.
            req.extensions_mut().insert(AuthorizedOperator(Operator {
                principal,
                role: Role::Owner,
            }));
        }
        Ok(Upstream::Nobody) => {}
        Err(e) => return e.into_response(),
    }
    next.run(req).await
}

/// `router` with the gateway's caller identity, its claims checked against `app`'s token policy
/// on `app`'s clock, made visible to the service's extractors (any IAM caller is an operator).
pub fn with_upstream_identity(router: Router, app: App) -> Router {
    with_upstream_identity_for(router, app, OperatorRole::AnyIamCaller)
}

/// [`with_upstream_identity`], with only the IAM callers `operators` admits as operators.
pub fn with_upstream_identity_for(router: Router, app: App, operators: OperatorRole) -> Router {
    router.layer(middleware::from_fn_with_state(
        (app, Arc::new(operators)),
        insert_identity,
    ))
}

#[cfg(test)]
mod tests {
    use super::OperatorRole;

    #[test]
    fn only_sessions_of_the_operator_role_are_operators() {
        let only = OperatorRole::Only("AROAOPERATORS1234567".into());
        assert!(only.admits(Some("AROAOPERATORS1234567:alice")));
        for other in [
            None,
            Some(""),
            Some("AROAOPERATORS1234567"),
            Some("AROAOPERATORS12345678:alice"),
            Some("AROAOTHERROLE1234567:alice"),
            Some("AIDAUSER123456789012"),
            Some("x:AROAOPERATORS1234567:alice"),
        ] {
            assert!(!only.admits(other), "{other:?}");
        }
        assert!(OperatorRole::AnyIamCaller.admits(None));
    }
}
