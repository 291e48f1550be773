//! `blepay demo`: an embedded server in a temporary directory, a simulated water dispenser and a
//! simulated phone, one full payment cycle, each step printed; with `--console`, then the operator
//! console on the same server until Ctrl-C.

use std::time::Duration;

use crate::args::ServeArgs;
use anyhow::anyhow;
use serde_json::json;

use crate::api::Api;
use crate::machine::{Machine, grant_json, response_json};

/// Run the demo, printing to stdout.
///
/// # Errors
/// When any step fails (which would be a bug).
#[allow(clippy::too_many_lines)] // a narrated script: one step after the other
pub async fn run(console: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Secrets held by code, never on a command line: a random operator token and a 32-byte
    // HS256 secret for the phone's JWT.
    let ops_token = hex::encode(rand::random::<[u8; 16]>());
    let jwt_secret = hex::encode(rand::random::<[u8; 32]>());
    let args = ServeArgs {
        ops_token: Some(ops_token.parse()?),
        jwt_secret: Some(jwt_secret.parse()?),
        offline_after_secs: 300,
        ..ServeArgs::local(dir.path().join("server"))
    };
    let bound = crate::serve::bind(&args).await?;
    let addr = bound.listener.local_addr()?;
    let base = format!("http://{addr}");
    let app = bound.app.clone();
    let server = tokio::spawn(blepay_service::server::serve(
        bound.listener,
        bound.app,
        Duration::from_secs(5),
        std::future::pending(),
    ));
    println!(
        "1. blepay is serving on {base} (SQLite in {})",
        args.data_dir.display()
    );

    let ops = Api::new(&base, &ops_token);
    let device_id = hex::encode(rand::random::<[u8; 8]>());
    let reg = ops
        .post(
            "/v1/ops/devices",
            &json!({"deviceId": device_id, "name": "Water dispenser, lobby", "pricePerUnit": 25, "unitName": "litre", "currency": "EUR"}),
        )
        .await?
        .into_result()?;
    let device_key = reg["deviceKey"]
        .as_str()
        .ok_or_else(|| anyhow!("no deviceKey"))?
        .to_owned();
    println!(
        "2. operator registered machine {device_id}: 0.25 EUR per litre; device key provisioned into it"
    );

    let w = ops
        .post(
            "/v1/ops/wallets/alice/topup",
            &json!({"amount": 1000, "idempotencyKey": "demo-topup-1"}),
        )
        .await?
        .into_result()?;
    println!("3. operator topped up alice's wallet: {w}");

    let machine = Machine::new(
        &base,
        &device_id,
        &device_key,
        0,
        &dir.path().join("machine"),
    )?;
    machine
        .heartbeat(blepay_core::Telemetry {
            firmware_version: concat!("blepay-demo/", env!("CARGO_PKG_VERSION")).into(),
            signal_quality: 18,
            ..blepay_core::Telemetry::default()
        })
        .await?;
    println!(
        "4. the machine sent its heartbeat over its own (2G) link: the server now sees it online \
         (an idle machine sends nothing else, one heartbeat every 30 minutes)"
    );

    let advert = machine.advert()?;
    println!(
        "5. the machine broadcasts BLE advertising data {}",
        advert["advertisingData"]
    );

    let user = blepay_core::UserId::parse("alice").map_err(|e| anyhow!(e))?;
    let token = blepay_service::auth::mint_token(&jwt_secret, &user, app.now(), 3600)?;
    let phone = Api::new(&base, &token);
    let v = phone
        .post("/v1/verify", &json!({"advert": advert["advert"]}))
        .await?
        .into_result()?;
    println!("6. the phone heard it and verified it with the cloud: {v}");

    let pay = phone
        .post(
            "/v1/pay",
            &json!({"advert": advert["advert"], "maxAmount": 200, "idempotencyKey": "demo-pay-1"}),
        )
        .await?
        .into_result()?;
    let session = pay["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow!("no sessionId"))?
        .to_owned();
    println!("7. the phone paid (hold up to 2.00 EUR): {pay}");

    let grant = machine.press().await?;
    if grant.session.to_string() != session {
        return Err(anyhow!(
            "the press started {}, not {session}",
            grant.session
        ));
    }
    let sid = grant.session;
    println!(
        "8. the user pressed start on the machine: one exchange started the session and brought its terms {}",
        grant_json(&grant)
    );
    println!(
        "9. the valve opens (at most {} litres)",
        grant.max_units().get()
    );
    machine.report(sid, 2, false).await?;
    println!("10. dispensing... 2 litres so far");
    let r = machine.report(sid, 3, true).await?;
    println!(
        "11. dispensing ended at 3 litres; final report: {}",
        response_json(&r)
    );

    let s = phone
        .get(&format!("/v1/sessions/{session}"))
        .await?
        .into_result()?;
    println!("12. the session as the phone sees it: {s}");
    let w = phone.get("/v1/wallet").await?.into_result()?;
    println!("13. alice's wallet: {w} (1000 - 75 spent)");
    let audit = app.store().audit().await?;
    println!(
        "14. ledger: top-ups {} = wallets {} + revenue {} -> {}",
        audit.top_ups,
        audit.available + audit.held,
        audit.revenue,
        if audit.reconciles() {
            "reconciled to the cent"
        } else {
            "DOES NOT RECONCILE"
        }
    );
    if console && audit.reconciles() {
        // The token is a throwaway of this temporary server: showing it is the point.
        println!(
            "15. the operator console: {base}/ops/ — sign in with the token {ops_token} \
             (Ctrl-C stops the server and deletes its data)"
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    server.abort();
    if audit.reconciles() {
        Ok(())
    } else {
        Err(anyhow!("ledger does not reconcile"))
    }
}
