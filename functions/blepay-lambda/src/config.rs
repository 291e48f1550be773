//! Typed configuration of the Lambda functions, read once from the environment at cold start.
//! A missing or malformed value fails the init with a message naming the variable. The service's
//! own settings are checked where `blepay serve`'s are, by
//! [`blepay_service::config::Settings::validate`]; this loader only reads the variables and adds
//! what only Lambda has (the table, the master key source).

use crate::identity::{OperatorRole, is_role_id};
use blepay_service::Role;
use blepay_service::config::{
    ConfigError, DEFAULT_ACTIVE_TIMEOUT_SECS, DEFAULT_JWT_MAX_LIFETIME_SECS,
    DEFAULT_MAX_UNSTARTED_PER_USER, DEFAULT_OFFLINE_AFTER_SECS, DEFAULT_PAY_RATE_MAX,
    DEFAULT_PAY_RATE_WINDOW_SECS, DEFAULT_START_TIMEOUT_SECS, DEFAULT_SUPPORT_REFUND_MAX,
    JwtSettings, PayLimits, ProviderSettings, SecretString, Settings, ValidSettings,
    cfg_err as err,
};

/// Where the master keys (`version:hex64[,...]`, as `BLEPAY_MASTER_KEYS`) come from.
#[derive(Debug, Clone)]
pub enum MasterKeySource {
    /// `BLEPAY_MASTER_KEYS_SECRET_ID`: an AWS Secrets Manager secret (name or ARN) whose
    /// `SecretString` is the keyring.
    SecretsManager(String),
    /// `BLEPAY_MASTER_KEYS_PARAMETER`: an SSM Parameter Store SecureString holding the keyring.
    Parameter(String),
    /// `BLEPAY_MASTER_KEYS`: the keyring itself (local runs only).
    Inline(SecretString),
}

/// The environment variables naming the master key source; exactly one must be set.
pub const MASTER_KEY_VARS: [&str; 3] = [
    "BLEPAY_MASTER_KEYS_SECRET_ID",
    "BLEPAY_MASTER_KEYS_PARAMETER",
    "BLEPAY_MASTER_KEYS",
];

/// Everything the functions read from the environment.
#[derive(Debug, Clone)]
pub struct LambdaConfig {
    /// `BLEPAY_DYNAMODB_TABLE` (required).
    pub table: String,
    /// `BLEPAY_DYNAMODB_ENDPOINT`: a local DynamoDB-API server (DynamoDB Local); unset in AWS.
    pub dynamodb_endpoint: Option<String>,
    /// One of [`MASTER_KEY_VARS`] (not needed by the sweeper).
    pub master_keys: Option<MasterKeySource>,
    /// The service settings, validated: `BLEPAY_JWT_SECRET` is the HS256 secret for phone JWTs
    /// when there is no authorizer context (local runs) — unset when deployed: then a random
    /// secret nobody knows is used, so only the gateway's JWT authorizer can let a phone in;
    /// `BLEPAY_JWT_JWKS_FILE` / `BLEPAY_JWT_JWKS_URL` an identity provider's keys instead (with
    /// `BLEPAY_JWT_ISSUER` and `BLEPAY_JWT_AUDIENCE`); `BLEPAY_JWT_ISSUER`,
    /// `BLEPAY_JWT_AUDIENCE` and `BLEPAY_JWT_MAX_LIFETIME_SECS` (default 86400) are also checked
    /// against the claims of the gateway's JWT authorizer;
    /// `BLEPAY_OPS_TOKEN` the operator bearer token when there is no IAM context (local runs) —
    /// unset when deployed: only IAM-signed calls reach the ops routes;
    /// `BLEPAY_START_TIMEOUT_SECS` (default 120), `BLEPAY_OFFLINE_AFTER_SECS` (default 4200:
    /// two missed 30-minute heartbeats and 10 minutes), `BLEPAY_ACTIVE_TIMEOUT_SECS` (default
    /// 14400: 4 h; the sweeper settles ACTIVE sessions silent that long), `BLEPAY_CURRENCY`
    /// (default EUR).
    pub service: ValidSettings,
    /// `BLEPAY_OPERATOR_ROLE_ID`: the unique id (`AROA…`) of the only IAM role whose sessions the
    /// ops routes accept (infra/template.yaml sets it); unset, any IAM caller the gateway let
    /// through is an operator.
    pub operator_role: OperatorRole,
    /// `BLEPAY_STRIPE_SECRET_ID`, `BLEPAY_WECHATPAY_SECRET_ID`: Secrets Manager secrets holding
    /// the providers' JSON documents (docs/topups.md), read at cold start like the master keys.
    /// (`BLEPAY_STRIPE` / `BLEPAY_WECHATPAY` inline are for local runs.)
    pub provider_secrets: ProviderSecretIds,
    /// The top-up limits (`BLEPAY_TOPUP_MIN`, `BLEPAY_TOPUP_MAX`, `BLEPAY_WALLET_MAX`) and any
    /// inline documents, as read: what the fetched documents are built with.
    pub provider_settings: ProviderSettings,
}

/// Where the providers' documents are on AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderSecretIds {
    pub stripe: Option<String>,
    pub wechatpay: Option<String>,
}

impl LambdaConfig {
    /// Read the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable at fault.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read the configuration through `lookup` (the environment, or a map in tests). Empty values
    /// count as unset.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable at fault.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let table = get("BLEPAY_DYNAMODB_TABLE")
            .ok_or_else(|| err("BLEPAY_DYNAMODB_TABLE", "must be set"))?;
        let dynamodb_endpoint = get("BLEPAY_DYNAMODB_ENDPOINT");

        let sources: Vec<MasterKeySource> = [
            get(MASTER_KEY_VARS[0]).map(MasterKeySource::SecretsManager),
            get(MASTER_KEY_VARS[1]).map(MasterKeySource::Parameter),
            get(MASTER_KEY_VARS[2]).map(|v| MasterKeySource::Inline(SecretString::new(v))),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() > 1 {
            return Err(err(
                MASTER_KEY_VARS[0],
                format!("set only one of {}", MASTER_KEY_VARS.join(", ")),
            ));
        }
        let master_keys = sources.into_iter().next();

        let provider_settings = ProviderSettings::from_env(&get, &|_, var| {
            Err(err(
                var,
                "files are not read on Lambda: use the *_SECRET_ID variable",
            ))
        })?;
        let service = Settings {
            jwt_secret: get("BLEPAY_JWT_SECRET").map(SecretString::new),
            jwt: JwtSettings {
                jwks_file: get("BLEPAY_JWT_JWKS_FILE").map(Into::into),
                jwks_url: get("BLEPAY_JWT_JWKS_URL"),
                jwks_ca_file: get("BLEPAY_JWT_JWKS_CA_FILE").map(Into::into),
                issuer: get("BLEPAY_JWT_ISSUER"),
                audience: get("BLEPAY_JWT_AUDIENCE"),
                max_lifetime_secs: number(
                    get("BLEPAY_JWT_MAX_LIFETIME_SECS"),
                    "BLEPAY_JWT_MAX_LIFETIME_SECS",
                    DEFAULT_JWT_MAX_LIFETIME_SECS,
                )?,
            },
            ops_token: get("BLEPAY_OPS_TOKEN").map(SecretString::new),
            start_timeout_secs: number(
                get("BLEPAY_START_TIMEOUT_SECS"),
                "BLEPAY_START_TIMEOUT_SECS",
                DEFAULT_START_TIMEOUT_SECS,
            )?,
            offline_after_secs: number(
                get("BLEPAY_OFFLINE_AFTER_SECS"),
                "BLEPAY_OFFLINE_AFTER_SECS",
                DEFAULT_OFFLINE_AFTER_SECS,
            )?,
            active_timeout_secs: number(
                get("BLEPAY_ACTIVE_TIMEOUT_SECS"),
                "BLEPAY_ACTIVE_TIMEOUT_SECS",
                DEFAULT_ACTIVE_TIMEOUT_SECS,
            )?,
            currency: get("BLEPAY_CURRENCY").unwrap_or_else(|| Settings::default().currency),
            pay_limits: pay_limits(&get)?,
            support_refund_max: minor_units(
                get("BLEPAY_SUPPORT_REFUND_MAX"),
                "BLEPAY_SUPPORT_REFUND_MAX",
                DEFAULT_SUPPORT_REFUND_MAX,
            )?,
            providers: provider_settings.clone(),
        }
        .validate()?;
        let provider_secrets = ProviderSecretIds {
            stripe: get("BLEPAY_STRIPE_SECRET_ID"),
            wechatpay: get("BLEPAY_WECHATPAY_SECRET_ID"),
        };

        let operator_role = operator_roles(
            get("BLEPAY_OPERATOR_ROLE_ID"),
            get("BLEPAY_OPERATOR_ROLE_MAP"),
        )?;

        Ok(Self {
            table,
            dynamodb_endpoint,
            master_keys,
            service,
            operator_role,
            provider_secrets,
            provider_settings,
        })
    }

    /// The master key source, required by the HTTP functions.
    ///
    /// # Errors
    /// When none of [`MASTER_KEY_VARS`] is set.
    pub fn master_key_source(&self) -> Result<&MasterKeySource, ConfigError> {
        self.master_keys.as_ref().ok_or_else(|| {
            err(
                MASTER_KEY_VARS[0],
                format!("one of {} must be set", MASTER_KEY_VARS.join(", ")),
            )
        })
    }
}

/// `BLEPAY_OPERATOR_ROLE_ID` (the owner role) and `BLEPAY_OPERATOR_ROLE_MAP` (`<role id>=<role>`
/// pairs) → which IAM callers are operators, with which role.
fn operator_roles(owner: Option<String>, map: Option<String>) -> Result<OperatorRole, ConfigError> {
    if let Some(id) = owner.as_deref() {
        if !is_role_id(id) {
            return Err(err(
                "BLEPAY_OPERATOR_ROLE_ID",
                "must be an IAM role's unique id (AROA followed by capitals and digits)",
            ));
        }
    }
    let Some(map) = map else {
        return Ok(owner.map_or(OperatorRole::AnyIamCaller, OperatorRole::Only));
    };
    let mut pairs =
        OperatorRole::parse_map(&map).map_err(|e| err("BLEPAY_OPERATOR_ROLE_MAP", e))?;
    if let Some(id) = owner {
        if !pairs.iter().any(|(known, _)| *known == id) {
            pairs.push((id, Role::Owner));
        }
    }
    Ok(OperatorRole::Mapped(pairs))
}

fn minor_units(value: Option<String>, var: &'static str, default: i64) -> Result<i64, ConfigError> {
    value.map_or(Ok(default), |v| {
        v.parse().map_err(|_| {
            err(
                var,
                format!("must be a whole number of minor units, not {v:?}"),
            )
        })
    })
}

fn count(value: Option<String>, var: &'static str, default: u32) -> Result<u32, ConfigError> {
    value.map_or(Ok(default), |v| {
        v.parse()
            .map_err(|_| err(var, format!("must be a whole number, not {v:?}")))
    })
}

/// The per-user pay limits' variables.
fn pay_limits(get: &dyn Fn(&str) -> Option<String>) -> Result<PayLimits, ConfigError> {
    Ok(PayLimits {
        max_unstarted_per_user: count(
            get("BLEPAY_MAX_UNSTARTED_PER_USER"),
            "BLEPAY_MAX_UNSTARTED_PER_USER",
            DEFAULT_MAX_UNSTARTED_PER_USER,
        )?,
        rate_max: count(
            get("BLEPAY_PAY_RATE_MAX"),
            "BLEPAY_PAY_RATE_MAX",
            DEFAULT_PAY_RATE_MAX,
        )?,
        rate_window_secs: number(
            get("BLEPAY_PAY_RATE_WINDOW_SECS"),
            "BLEPAY_PAY_RATE_WINDOW_SECS",
            DEFAULT_PAY_RATE_WINDOW_SECS,
        )?,
        daily_spending_limit: number(
            get("BLEPAY_DAILY_SPENDING_LIMIT"),
            "BLEPAY_DAILY_SPENDING_LIMIT",
            0,
        )?,
    })
}

fn number(value: Option<String>, var: &'static str, default: u64) -> Result<u64, ConfigError> {
    value.map_or(Ok(default), |v| {
        v.parse().map_err(|_| {
            err(
                var,
                format!(
                    "must be a whole number (seconds, or minor units for an amount), not {v:?}"
                ),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<LambdaConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        LambdaConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn a_deployed_environment_parses_with_defaults() {
        let c = config(&[
            ("BLEPAY_DYNAMODB_TABLE", "blepay"),
            ("BLEPAY_MASTER_KEYS_SECRET_ID", "blepay/master-keys"),
        ])
        .unwrap();
        assert_eq!(c.table, "blepay");
        assert!(
            matches!(c.master_keys, Some(MasterKeySource::SecretsManager(ref s)) if s == "blepay/master-keys")
        );
        assert_eq!(
            (
                c.service.start_timeout_secs,
                c.service.offline_after_secs,
                c.service.active_timeout_secs
            ),
            (120, 4200, 14_400)
        );
        assert!(
            c.service.phone_tokens.is_none()
                && c.service.ops_token.is_none()
                && c.dynamodb_endpoint.is_none()
        );
    }

    #[test]
    fn the_operator_role_id_restricts_the_operators() {
        let base = ("BLEPAY_DYNAMODB_TABLE", "t");
        assert_eq!(
            config(&[base]).unwrap().operator_role,
            OperatorRole::AnyIamCaller
        );
        assert_eq!(
            config(&[base, ("BLEPAY_OPERATOR_ROLE_ID", "AROAOPERATORS1234567")])
                .unwrap()
                .operator_role,
            OperatorRole::Only("AROAOPERATORS1234567".into())
        );
    }

    #[test]
    fn the_operator_role_map_names_a_role_per_iam_role_and_the_role_id_is_its_owner() {
        use blepay_service::Role;
        let base = ("BLEPAY_DYNAMODB_TABLE", "t");
        let c = config(&[
            base,
            ("BLEPAY_OPERATOR_ROLE_ID", "AROAOWNER1"),
            (
                "BLEPAY_OPERATOR_ROLE_MAP",
                "AROASUPPORT1=support,AROATECH1=technician",
            ),
            ("BLEPAY_SUPPORT_REFUND_MAX", "1500"),
        ])
        .unwrap();
        assert_eq!(
            c.operator_role,
            OperatorRole::Mapped(vec![
                ("AROASUPPORT1".into(), Role::Support),
                ("AROATECH1".into(), Role::Technician),
                ("AROAOWNER1".into(), Role::Owner),
            ])
        );
        assert_eq!(c.service.support_refund_max.minor(), 1500);
        for (var, bad) in [
            ("BLEPAY_OPERATOR_ROLE_MAP", "AROASUPPORT1=boss"),
            ("BLEPAY_OPERATOR_ROLE_MAP", "support"),
            ("BLEPAY_SUPPORT_REFUND_MAX", "-1"),
            ("BLEPAY_SUPPORT_REFUND_MAX", "12.50"),
        ] {
            let e = config(&[base, (var, bad)]).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn a_missing_table_names_its_variable() {
        let e = config(&[("BLEPAY_MASTER_KEYS_PARAMETER", "/blepay/keys")]).unwrap_err();
        assert_eq!(e.var, "BLEPAY_DYNAMODB_TABLE");
    }

    #[test]
    fn two_master_key_sources_are_refused() {
        let e = config(&[
            ("BLEPAY_DYNAMODB_TABLE", "t"),
            ("BLEPAY_MASTER_KEYS_SECRET_ID", "a"),
            ("BLEPAY_MASTER_KEYS_PARAMETER", "b"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "BLEPAY_MASTER_KEYS_SECRET_ID");
    }

    #[test]
    fn no_master_key_source_is_an_error_only_when_asked_for() {
        let c = config(&[("BLEPAY_DYNAMODB_TABLE", "t")]).unwrap();
        assert_eq!(
            c.master_key_source().unwrap_err().var,
            "BLEPAY_MASTER_KEYS_SECRET_ID"
        );
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let base = [("BLEPAY_DYNAMODB_TABLE", "t")];
        for (var, value) in [
            ("BLEPAY_START_TIMEOUT_SECS", "soon"),
            ("BLEPAY_START_TIMEOUT_SECS", "0"),
            ("BLEPAY_OFFLINE_AFTER_SECS", "-1"),
            ("BLEPAY_OFFLINE_AFTER_SECS", "0"),
            ("BLEPAY_ACTIVE_TIMEOUT_SECS", "4h"),
            ("BLEPAY_ACTIVE_TIMEOUT_SECS", "0"),
            ("BLEPAY_ACTIVE_TIMEOUT_SECS", "99999999"),
            ("BLEPAY_CURRENCY", "euro"),
            ("BLEPAY_JWT_SECRET", "short"),
            // 31 bytes: HS256 needs 32.
            ("BLEPAY_JWT_SECRET", "0123456789abcdef0123456789abcde"),
            ("BLEPAY_JWT_MAX_LIFETIME_SECS", "0"),
            ("BLEPAY_JWT_MAX_LIFETIME_SECS", "1d"),
            ("BLEPAY_OPS_TOKEN", "short"),
            (
                "BLEPAY_OPERATOR_ROLE_ID",
                "arn:aws:iam::123456789012:role/ops",
            ),
            ("BLEPAY_OPERATOR_ROLE_ID", "AIDAUSER123456789012"),
        ] {
            let e = config(&[base[0], (var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={value}");
        }
    }

    #[test]
    fn an_identity_provider_s_keys_need_issuer_and_audience() {
        let url = (
            "BLEPAY_JWT_JWKS_URL",
            "https://id.example/.well-known/jwks.json",
        );
        let table = ("BLEPAY_DYNAMODB_TABLE", "t");
        let e = config(&[table, url]).unwrap_err();
        assert_eq!(e.var, "BLEPAY_JWT_ISSUER");
        let e = config(&[table, url, ("BLEPAY_JWT_ISSUER", "https://id.example")]).unwrap_err();
        assert_eq!(e.var, "BLEPAY_JWT_AUDIENCE");
        let c = config(&[
            table,
            url,
            ("BLEPAY_JWT_ISSUER", "https://id.example"),
            ("BLEPAY_JWT_AUDIENCE", "blepay"),
            ("BLEPAY_JWT_MAX_LIFETIME_SECS", "3600"),
        ])
        .unwrap();
        assert!(c.service.phone_tokens.is_some());
        assert_eq!(c.service.token_policy.max_lifetime_secs, 3600);
        assert_eq!(c.service.token_policy.audience.as_deref(), Some("blepay"));
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let c = config(&[
            ("BLEPAY_DYNAMODB_TABLE", "t"),
            (
                "BLEPAY_MASTER_KEYS",
                "0:abababababababababababababababababababababababababababababababab",
            ),
            ("BLEPAY_JWT_SECRET", "hunter2hunter2hunter2hunter2hunter2"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("abab") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
