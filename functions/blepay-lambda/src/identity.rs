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
//! (`BLEPAY_OPERATOR_ROLE_ID`) only sessions of the stack's operator role are operators (owners);
//! with [`OperatorRole::Mapped`] (`BLEPAY_OPERATOR_ROLE_MAP`, set by infra/template.yaml: one IAM
//! role per operator role) each role session is an operator with its role and the IAM ARN of
//! the session (`…:assumed-role/<role>/<session name>`) as its principal; any other IAM caller
//! is refused with 401 UNAUTHENTICATED before a handler runs.

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

/// Which IAM callers are operators, and with which role (docs: infra/README.md "Operators and
/// roles on AWS").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OperatorRole {
    /// Any IAM principal the gateway let through, as an owner (neither
    /// `BLEPAY_OPERATOR_ROLE_ID` nor `BLEPAY_OPERATOR_ROLE_MAP` set: local runs).
    #[default]
    AnyIamCaller,
    /// Only sessions of the IAM role with this unique id (`AROA…`), as owners: the gateway's
    /// `authorizer.iam.userId` of a role session is `<role id>:<session name>`.
    Only(String),
    /// `BLEPAY_OPERATOR_ROLE_MAP` (plus `BLEPAY_OPERATOR_ROLE_ID` as the owner): sessions of each
    /// listed IAM role (by unique id) are operators with that role; any other IAM caller is
    /// refused.
    Mapped(Vec<(String, Role)>),
}

/// Whether the gateway's `userId` is a session of the role with unique id `role_id`.
fn is_session_of(user_id: Option<&str>, role_id: &str) -> bool {
    user_id
        .and_then(|u| u.strip_prefix(role_id))
        .is_some_and(|rest| rest.starts_with(':'))
}

/// Whether `s` looks like an IAM role's unique id (`AROA` then capitals and digits).
pub fn is_role_id(s: &str) -> bool {
    s.starts_with("AROA")
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl OperatorRole {
    /// The role of the IAM caller the gateway describes, if it is an operator.
    pub fn role_of(&self, user_id: Option<&str>) -> Option<Role> {
        match self {
            Self::AnyIamCaller => Some(Role::Owner),
            Self::Only(role_id) => is_session_of(user_id, role_id).then_some(Role::Owner),
            Self::Mapped(map) => map
                .iter()
                .find(|(id, _)| is_session_of(user_id, id))
                .map(|(_, role)| *role),
        }
    }

    #[cfg(test)]
    fn admits(&self, user_id: Option<&str>) -> bool {
        self.role_of(user_id).is_some()
    }

    /// Parse `BLEPAY_OPERATOR_ROLE_MAP`: `<role id>=<role>` pairs separated by commas (spaces
    /// around them ignored), e.g. `AROA…1=support,AROA…2=finance`.
    ///
    /// # Errors
    /// A message naming the bad pair: not `id=role`, an id that is not a role's unique id, an
    /// unknown role, or an id listed twice.
    pub fn parse_map(s: &str) -> Result<Vec<(String, Role)>, String> {
        let mut out: Vec<(String, Role)> = Vec::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let shown: String = pair.chars().take(160).collect();
            let (id, role) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{shown}` is not <role id>=<role>"))?;
            let (id, role) = (id.trim(), role.trim());
            if !is_role_id(id) {
                return Err(format!(
                    "`{shown}`: {id:?} is not an IAM role's unique id (AROA followed by capitals and digits)"
                ));
            }
            let role = Role::parse(role).ok_or_else(|| {
                format!("`{shown}`: the role must be owner, support, finance or technician")
            })?;
            if out.iter().any(|(known, _)| known == id) {
                return Err(format!("`{shown}`: role id {id} is listed twice"));
            }
            out.push((id.to_owned(), role));
        }
        if out.is_empty() {
            return Err("names no role".into());
        }
        Ok(out)
    }
}

/// Who the gateway says is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A phone user, from the JWT authorizer's `sub` claim.
    User(UserId),
    /// An IAM principal (its ARN, or the caller id when the ARN is absent) with the role its
    /// IAM role maps to.
    Operator(Operator),
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
        let Some(role) = operators.role_of(iam.user_id.as_deref()) else {
            tracing::warn!(%principal, "IAM caller is not an operator role: refused");
            return Err(refused(format_args!(
                "IAM caller {principal} is not an operator role"
            )));
        };
        return Ok(Upstream::Operator(Operator { principal, role }));
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
        Ok(Upstream::Operator(op)) => {
            req.extensions_mut().insert(AuthorizedOperator(op));
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

    #[test]
    fn mapped_roles_give_each_role_session_its_role_and_refuse_the_rest() {
        use blepay_service::Role;
        let map =
            OperatorRole::parse_map(" AROASUPPORT1=support, AROAFINANCE1=finance,AROAOWNER1=owner")
                .unwrap();
        let roles = OperatorRole::Mapped(map);
        assert_eq!(roles.role_of(Some("AROASUPPORT1:ann")), Some(Role::Support));
        assert_eq!(roles.role_of(Some("AROAFINANCE1:bob")), Some(Role::Finance));
        assert_eq!(roles.role_of(Some("AROAOWNER1:eve")), Some(Role::Owner));
        for other in [
            None,
            Some("AROASUPPORT12:ann"),
            Some("AIDAUSER1"),
            Some("AROASUPPORT1"),
        ] {
            assert_eq!(roles.role_of(other), None, "{other:?}");
        }
        for bad in [
            "",
            "AROAX",
            "AROAX=boss",
            "arn:aws:iam::1:role/x=owner",
            "AROAX=owner,AROAX=support",
        ] {
            assert!(OperatorRole::parse_map(bad).is_err(), "{bad}");
        }
    }
}
