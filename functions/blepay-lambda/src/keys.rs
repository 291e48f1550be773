//! The master keyring, loaded once at cold start from where [`MasterKeySource`] says.
//!
//! The stored value has the format of `BLEPAY_MASTER_KEYS`: `version:hex64[,version:hex64...]`.
//! Rotation: add a version to the secret (new devices get the highest) and let the functions
//! cold-start again (a new deployment, or a configuration change).

use aws_config::SdkConfig;
use blepay_service::config::{ConfigError, Keyring, SecretString, cfg_err as fail};

use crate::config::MasterKeySource;

/// Fetch and parse the keyring.
///
/// # Errors
/// A [`ConfigError`] naming the variable of the source: the secret or parameter cannot be read
/// (missing, no permission, network), is empty, or does not parse.
pub async fn load(source: &MasterKeySource, sdk: &SdkConfig) -> Result<Keyring, ConfigError> {
    let (var, text) = match source {
        MasterKeySource::Inline(keys) => (
            "BLEPAY_MASTER_KEYS",
            zeroize_on_drop(keys.expose().to_owned()),
        ),
        MasterKeySource::SecretsManager(id) => {
            let var = "BLEPAY_MASTER_KEYS_SECRET_ID";
            let out = aws_sdk_secretsmanager::Client::new(sdk)
                .get_secret_value()
                .secret_id(id)
                .send()
                .await
                .map_err(|e| fail(var, format!("cannot read secret {id}: {}", error_chain(&e))))?;
            let text = out
                .secret_string()
                .ok_or_else(|| fail(var, format!("secret {id} has no SecretString")))?;
            (var, zeroize_on_drop(text.to_owned()))
        }
        MasterKeySource::Parameter(name) => {
            let var = "BLEPAY_MASTER_KEYS_PARAMETER";
            let out = aws_sdk_ssm::Client::new(sdk)
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| {
                    fail(
                        var,
                        format!("cannot read parameter {name}: {}", error_chain(&e)),
                    )
                })?;
            let text = out
                .parameter()
                .and_then(|p| p.value())
                .ok_or_else(|| fail(var, format!("parameter {name} has no value")))?;
            (var, zeroize_on_drop(text.to_owned()))
        }
    };
    Keyring::parse(text.expose()).map_err(|e| fail(var, e))
}

/// The providers' JSON documents from their Secrets Manager secrets (when named), built into
/// the service's providers with the limits already read from the environment.
///
/// # Errors
/// A [`ConfigError`] naming `BLEPAY_STRIPE_SECRET_ID` / `BLEPAY_WECHATPAY_SECRET_ID`: the secret
/// cannot be read, or its document does not parse (the error never shows the value).
pub async fn load_providers(
    ids: &crate::config::ProviderSecretIds,
    base: &blepay_service::config::ProviderSettings,
    sdk: &SdkConfig,
) -> Result<Option<blepay_service::config::Providers>, ConfigError> {
    if ids.stripe.is_none() && ids.wechatpay.is_none() {
        return Ok(None);
    }
    let mut settings = base.clone();
    if let Some(id) = &ids.stripe {
        settings.stripe = Some(secret_string(sdk, id, "BLEPAY_STRIPE_SECRET_ID").await?);
    }
    if let Some(id) = &ids.wechatpay {
        settings.wechatpay = Some(secret_string(sdk, id, "BLEPAY_WECHATPAY_SECRET_ID").await?);
    }
    settings.build().map(Some)
}

async fn secret_string(
    sdk: &SdkConfig,
    id: &str,
    var: &'static str,
) -> Result<SecretString, ConfigError> {
    let out = aws_sdk_secretsmanager::Client::new(sdk)
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| fail(var, format!("cannot read secret {id}: {}", error_chain(&e))))?;
    let text = out
        .secret_string()
        .ok_or_else(|| fail(var, format!("secret {id} has no SecretString")))?;
    Ok(zeroize_on_drop(text.to_owned()))
}

/// Keep the fetched text in a type that zeroes its memory on drop.
fn zeroize_on_drop(s: String) -> SecretString {
    SecretString::new(s)
}

/// An SDK error with its sources (the top-level `Display` of an SDK error is only "service error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
