//! The caller API Gateway already authenticated, moved from the Lambda request context into the
//! extensions the service's extractors trust ([`AuthorizedUser`], [`AuthorizedOperator`]).
//!
//! - JWT authorizer (phone routes): `requestContext.authorizer.jwt.claims.sub` is the user.
//! - IAM authorization (ops routes): `requestContext.authorizer.iam` names the signed caller.
//! - No authorizer (`cargo lambda watch`, the machine route): nothing is inserted, and the
//!   extractors check the `Authorization` header as `blepay serve` does.
//!
//! The request context is built by API Gateway, never by the client, so it cannot be forged.

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use blepay_core::UserId;
use blepay_service::ApiError;
use blepay_service::http::{AuthorizedOperator, AuthorizedUser};
use lambda_http::request::RequestContext;

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

/// Read the identity out of a Lambda request context.
///
/// # Errors
/// UNAUTHENTICATED when a JWT authorizer context has no `sub`, or one that is not a valid user id.
pub fn upstream(context: Option<&RequestContext>) -> Result<Upstream, ApiError> {
    let Some(RequestContext::ApiGatewayV2(ctx)) = context else {
        return Ok(Upstream::Nobody);
    };
    let Some(authorizer) = ctx.authorizer.as_ref() else {
        return Ok(Upstream::Nobody);
    };
    if let Some(jwt) = authorizer.jwt.as_ref() {
        let sub = jwt
            .claims
            .get("sub")
            .ok_or_else(|| ApiError::unauthenticated("token has no `sub` claim"))?;
        let user = UserId::parse(sub)
            .map_err(|e| ApiError::unauthenticated(format!("token subject: {e}")))?;
        return Ok(Upstream::User(user));
    }
    if let Some(iam) = authorizer.iam.as_ref() {
        let principal = iam
            .user_arn
            .clone()
            .or_else(|| iam.caller_id.clone())
            .unwrap_or_else(|| "unknown IAM principal".to_owned());
        return Ok(Upstream::Operator(principal));
    }
    Ok(Upstream::Nobody)
}

/// Middleware: insert the gateway-authenticated caller into the request's extensions.
async fn insert_identity(mut req: Request, next: Next) -> Response {
    match upstream(req.extensions().get::<RequestContext>()) {
        Ok(Upstream::User(user)) => {
            req.extensions_mut().insert(AuthorizedUser(user));
        }
        Ok(Upstream::Operator(principal)) => {
            req.extensions_mut()
                .insert(AuthorizedOperator { principal });
        }
        Ok(Upstream::Nobody) => {}
        Err(e) => return e.into_response(),
    }
    next.run(req).await
}

/// `router` with the gateway's caller identity made visible to the service's extractors.
pub fn with_upstream_identity(router: Router) -> Router {
    router.layer(middleware::from_fn(insert_identity))
}
