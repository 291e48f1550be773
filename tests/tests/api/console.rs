//! The operator console (`/ops/`, docs/dashboard.md) end to end in headless Chromium: sign
//! in with an operator token, the fleet's live states, a refund that moves a wallet exactly, the
//! roles' forms, CSRF refusals that change nothing, sign-out ending the session, and every page
//! of a realistic demo fleet screenshot into `docs/dashboard/` (with `BLEPAY_SCREENSHOTS=1`).
//!
//! They are `#[ignore]`d (plain `cargo test` has no browser): `.ci/browser.sh` installs Debian's
//! `chromium` and `chromium-driver` and runs them with `--include-ignored`:
//!
//! ```text
//! cargo test -p blepay-e2e --test api console:: -- --include-ignored
//! BLEPAY_SCREENSHOTS=1 cargo test -p blepay-e2e --test api console::screenshots -- --include-ignored
//! ```

use blepay_e2e::browser::{Browser, ConsoleHttp};
use blepay_e2e::seed::{complete_session, create_operator, register_named, seed_demo_fleet};
use blepay_e2e::{TestApp, spawn_app, test_telemetry, unix_now};
use blepay_service::reports::format_day;
use serde_json::Value;

/// The fleet row of `device_id`'s state cell, as the page shows it now.
async fn fleet_state(b: &Browser, device_id: &str) -> String {
    b.wait_for("table#fleet").await;
    b.text(&format!(
        "table#fleet tr[data-device-id='{device_id}'] td.state"
    ))
    .await
}

/// The user's wallet as their phone sees it: (available, held, spent, refunded), minor units.
async fn phone_wallet(app: &TestApp, user: &str) -> (i64, i64, i64, i64) {
    let w = app.get("/v1/wallet", &app.token_for(user)).await.ok();
    let n = |f: &str| -> i64 {
        w[f].as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{f} in {w}"))
    };
    (n("available"), n("held"), n("spent"), n("refunded"))
}

/// The path `form_css` posts to (its `action`, relative to the server; `page` when it has none).
async fn form_action(b: &Browser, form_css: &str, page: &str) -> String {
    // The `action` property is the absolute URL the browser would post to.
    let action = b
        .execute(
            "const f = document.querySelector(arguments[0]); \
             return f ? new URL(f.action, location.href).pathname : null;",
            vec![Value::from(form_css)],
        )
        .await;
    action.as_str().unwrap_or(page).to_owned()
}

/// A PNG's (width, height), from its IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let be = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// The device's field `field` by the ops API.
async fn device_field(app: &TestApp, device_id: &str, field: &str) -> Value {
    app.ops_device(device_id).await[field].clone()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium-driver; .ci/run runs with --include-ignored"]
async fn the_harness_drives_headless_chromium_against_the_server() {
    // The harness itself, independent of the console: pages of the API load in the browser.
    let app = spawn_app().await;
    let b = Browser::start(&app).await;
    b.goto("/healthz").await;
    assert!(!b.body_text().await.is_empty(), "/healthz shows something");
    b.goto("/openapi.json").await;
    assert!(
        b.body_text().await.contains("openapi"),
        "the OpenAPI document loads"
    );
    assert_eq!(b.path().await, "/openapi.json");
    let locale = b
        .execute(
            "return Intl.DateTimeFormat().resolvedOptions().locale;",
            vec![],
        )
        .await;
    assert_eq!(locale, "en-GB", "the browser's locale");
    // A whole page is captured, beyond the window: a 2000 px page in a 900 px window.
    b.client
        .goto("data:text/html,<meta name=viewport content='width=device-width'><div style='height:2000px'>tall</div>")
        .await
        .unwrap();
    let (w, h) = png_size(&b.capture_png().await);
    assert_eq!(w, 1280);
    assert!(h >= 2000, "the full page's height: {h}");

    // The phone: 390 CSS px wide, twice as many device pixels.
    let phone = Browser::phone(&app).await;
    phone
        .client
        .goto("data:text/html,<meta name=viewport content='width=device-width'><p>phone</p>")
        .await
        .unwrap();
    let width = phone.execute("return window.innerWidth;", vec![]).await;
    assert_eq!(width, 390, "the phone viewport is 390 px wide");
    let (w, h) = png_size(&phone.capture_png().await);
    assert_eq!((w, h), (780, 1688));
    phone.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium-driver; .ci/run runs with --include-ignored"]
async fn an_operator_signs_in_and_the_fleet_shows_a_machine_offline_then_idle_after_its_heartbeat()
{
    // Arrange: a machine registered, never heard from.
    let app = spawn_app().await;
    let (id, key) = register_named(&app, "Water dispenser, Lobby", 25, "litre").await;
    let b = Browser::start(&app).await;

    // Unsigned: the console sends you to sign in; a wrong token is refused.
    b.goto("/ops/fleet").await;
    assert_eq!(b.pathname().await, "/ops/sign-in");
    b.find("form#sign-in input#token")
        .await
        .send_keys("not-a-token")
        .await
        .unwrap();
    b.find("#sign-in-button").await.click().await.unwrap();
    assert!(!b.text("p#error").await.is_empty());
    assert!(
        b.console_cookie().await.is_none(),
        "no session for a wrong token"
    );

    // Act: sign in with the bootstrap token.
    b.sign_in(&app.ops_token).await;

    // Assert: on the fleet, the machine is OFFLINE, with its name linking to its page.
    assert_eq!(b.pathname().await, "/ops/fleet");
    assert!(
        b.text("#whoami").await.contains("owner"),
        "{}",
        b.text("#whoami").await
    );
    assert_eq!(fleet_state(&b, &id).await, "OFFLINE");
    let link = b
        .find(&format!("tr[data-device-id='{id}'] td.name a"))
        .await;
    assert_eq!(link.text().await.unwrap().trim(), "Water dispenser, Lobby");
    assert!(
        link.attr("href")
            .await
            .unwrap()
            .unwrap_or_default()
            .ends_with(&format!("/ops/machines/{id}"))
    );

    // Its heartbeat over the device protocol; a reload shows it IDLE.
    let m = app.machine(&id, &key);
    m.machine.heartbeat(test_telemetry()).await.unwrap();
    b.reload().await;
    assert_eq!(fleet_state(&b, &id).await, "IDLE");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium-driver; .ci/run runs with --include-ignored"]
async fn a_refund_in_the_console_moves_the_users_wallet_exactly() {
    // Arrange: Rosa paid 200 on a machine at 25 a litre and got 4 litres: 100 captured.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("rosa", 1000).await;
    let s = complete_session(&app, &m, "rosa", 200, 4).await;
    assert_eq!(s.amount, 100);
    assert_eq!(phone_wallet(&app, "rosa").await, (900, 0, 100, 0));
    let b = Browser::start(&app).await;
    b.sign_in(&app.ops_token).await;

    // Act: refund €0.40 on the session's page.
    b.goto(&format!("/ops/sessions/{}", s.session_id)).await;
    b.wait_for("ol#story").await;
    b.fill("form#refund", "amount", "0.40").await;
    b.fill("form#refund", "reason", "no water came out").await;
    b.submit("form#refund").await;

    // Assert: a flash on the page it came from; the wallet moved by exactly 40.
    assert!(
        !b.wait_for("p#flash").await.text().await.unwrap().is_empty(),
        "a flash says what happened"
    );
    assert_eq!(
        b.pathname().await,
        format!("/ops/sessions/{}", s.session_id)
    );
    // Spent is net of refunds, as the API reports it.
    assert_eq!(phone_wallet(&app, "rosa").await, (940, 0, 60, 40));
    let session = app.ops_session(&s.session_id).await;
    assert_eq!(session["refunded"], "40", "{session}");
    let audit = app.audit().await;
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!((audit.revenue, audit.refunded), (60, 40));
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium-driver; .ci/run runs with --include-ignored"]
async fn a_support_operator_sees_no_revoke_form_and_a_forced_revoke_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let (_, support) = create_operator(&app, "Sam Support", "support").await;
    let page = format!("/ops/machines/{}", m.device_id);

    // The owner has the forms (the control: the page does show them to roles that may).
    let owner = Browser::start(&app).await;
    owner.sign_in(&app.ops_token).await;
    owner.goto(&page).await;
    owner.wait_for("table#machine-sessions").await;
    assert!(owner.exists("form#revoke").await, "the owner may revoke");
    assert!(
        owner.exists("form#rotate-key").await,
        "the owner may rotate"
    );
    owner.close().await;

    // Act: support signs in and opens the machine.
    let b = Browser::start(&app).await;
    b.sign_in(&support).await;
    assert!(b.text("#whoami").await.contains("support"));
    b.goto(&page).await;
    b.wait_for("table#machine-sessions").await;

    // Assert: no revoke form; a forced POST with a valid _csrf is refused 403.
    assert!(!b.exists("form#revoke").await, "support may not revoke");
    assert!(!b.exists("form#rotate-key").await, "support may not rotate");
    let csrf = b.csrf().await;
    assert!(!csrf.is_empty(), "the sign-out form carries a _csrf");
    let http = b.http().await;
    let forced = http
        .post_form(
            &format!("/ops/machines/{}/revoke", m.device_id),
            &[("_csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(forced.status, 403, "{}", forced.body);
    assert!(forced.body.contains("id=\"error\""), "{}", forced.body);

    // The key still works: the machine is heard and idle; nothing was revoked.
    m.machine.heartbeat(test_telemetry()).await.unwrap();
    assert_eq!(device_field(&app, &m.device_id, "state").await, "IDLE");
    let verified = app.verify("vic", &m.advert()).await.ok();
    assert_eq!(verified["state"], "IDLE", "{verified}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium-driver; .ci/run runs with --include-ignored"]
async fn a_post_without_its_csrf_token_is_refused_and_changes_nothing() {
    // Arrange: the owner on a machine's page.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let b = Browser::start(&app).await;
    b.sign_in(&app.ops_token).await;
    let page = format!("/ops/machines/{}", m.device_id);
    b.goto(&page).await;
    b.wait_for("form#tariff").await;
    let before = app.ops_device(&m.device_id).await;

    // Act 1: the tariff form, its _csrf input removed, submitted by the browser.
    b.fill("form#tariff", "price", "9.99").await;
    let removed = b
        .execute(
            "const i = document.querySelectorAll('form#tariff input[name=\"_csrf\"]'); \
             i.forEach(e => e.remove()); return i.length;",
            vec![],
        )
        .await;
    assert_eq!(removed, 1, "form#tariff carries one _csrf input");
    b.submit("form#tariff").await;

    // Assert 1: a 403 page saying CSRF; the tariff unchanged.
    let error = b.wait_for("p#error").await.text().await.unwrap();
    assert!(error.contains("CSRF"), "{error}");
    assert_eq!(device_field(&app, &m.device_id, "pricePerUnit").await, "25");

    // Act 2: forced POSTs with the console cookie: no _csrf, then a wrong one.
    b.goto(&page).await;
    let http = b.http().await;
    let revoke = format!("/ops/machines/{}/revoke", m.device_id);
    let none = http.post_form(&revoke, &[]).await;
    let wrong = http.post_form(&revoke, &[("_csrf", "not-the-token")]).await;
    let tariff_action = form_action(&b, "form#tariff", &page).await;
    let tariff_none = http
        .post_form(
            &tariff_action,
            &[
                ("price", "9.99"),
                ("unit_name", "litre"),
                ("name", "Renamed"),
            ],
        )
        .await;

    // Assert 2: 403 CSRF each; the machine's key still works and nothing changed.
    for (what, p) in [("no _csrf", &none), ("a wrong _csrf", &wrong)] {
        assert_eq!(p.status, 403, "{what}: {}", p.body);
        assert!(p.body.contains("CSRF"), "{what}: {}", p.body);
    }
    assert_eq!(
        tariff_none.status, 403,
        "a tariff change without _csrf: {}",
        tariff_none.body
    );
    m.machine.heartbeat(test_telemetry()).await.unwrap();
    let after = app.ops_device(&m.device_id).await;
    for field in ["name", "pricePerUnit", "unitName", "serviceState", "state"] {
        assert_eq!(after[field], before[field], "{field}: {after}");
    }
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium-driver; .ci/run runs with --include-ignored"]
async fn sign_out_ends_the_session_and_the_old_cookie_is_refused() {
    // Arrange: signed in; the cookie works outside the browser too.
    let app = spawn_app().await;
    let b = Browser::start(&app).await;
    b.sign_in(&app.ops_token).await;
    let http: ConsoleHttp = b.http().await;
    let signed_in = http.get("/ops/fleet").await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let csrf = b.csrf().await;

    // Act
    b.submit("form#sign-out").await;

    // Assert: the browser is at sign-in; the old cookie is refused, for reads and writes.
    b.wait_for("form#sign-in").await;
    assert_eq!(b.pathname().await, "/ops/sign-in");
    let replay = http.get("/ops/fleet").await;
    assert!(
        replay.is_signed_out(),
        "the old cookie after sign-out: {} {:?}",
        replay.status,
        replay.location
    );
    let replay_post = http
        .post_form("/ops/sign-out", &[("_csrf", csrf.as_str())])
        .await;
    assert!(
        replay_post.is_signed_out() || replay_post.status == 403,
        "{} {:?}",
        replay_post.status,
        replay_post.location
    );
    b.goto("/ops/fleet").await;
    assert_eq!(b.pathname().await, "/ops/sign-in");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium-driver; .ci/run runs with --include-ignored"]
async fn screenshots_of_every_page_with_the_demo_fleet() {
    // Arrange: the demo fleet.
    let app = spawn_app().await;
    let fleet = seed_demo_fleet(&app).await;
    let b = Browser::start(&app).await;
    b.goto("/ops/sign-in").await;
    b.wait_for("form#sign-in").await;
    b.screenshot("sign-in").await;
    b.sign_in(&app.ops_token).await;

    // The fleet: every machine in the state the seed gave it.
    b.goto("/ops/fleet").await;
    b.wait_for("table#fleet").await;
    for m in &fleet.machines {
        assert_eq!(
            fleet_state(&b, &m.device_id).await,
            m.expected_state,
            "{}",
            m.name
        );
    }
    b.screenshot("fleet").await;

    let water = fleet.machine("Water dispenser, Lobby");
    b.goto(&format!("/ops/machines/{}", water.device_id)).await;
    b.wait_for("svg#telemetry-chart").await;
    b.wait_for("table#machine-sessions").await;
    b.screenshot("machine").await;

    let fault = fleet.in_state("FAULT");
    b.goto(&format!("/ops/machines/{}", fault.device_id)).await;
    b.wait_for("svg#telemetry-chart").await;
    b.screenshot("machine-fault").await;

    b.goto("/ops/sessions").await;
    b.wait_for("table#sessions").await;
    assert!(
        b.find_all("table#sessions tr[data-session-id]").await.len() >= fleet.sessions.len(),
        "every session is listed"
    );
    b.screenshot("sessions").await;

    b.goto(&format!("/ops/sessions/{}", fleet.problem_session))
        .await;
    b.wait_for("ol#story").await;
    b.wait_for("form#refund").await;
    b.screenshot("session").await;

    b.goto("/ops/problems").await;
    b.wait_for(&format!(
        "table#problems tr[data-problem-id='{}']",
        fleet.problem_id
    ))
    .await;
    b.screenshot("problems").await;

    let (user, _) = &fleet.users[0];
    b.goto(&format!("/ops/wallets?user={user}")).await;
    b.wait_for("span#balance").await;
    b.wait_for("table#statement").await;
    b.screenshot("wallet").await;

    let today = unix_now() / 86_400;
    b.goto(&format!(
        "/ops/sales?from={}&to={}",
        format_day(today - 6),
        format_day(today)
    ))
    .await;
    b.wait_for("svg#sales-chart").await;
    b.wait_for("table#sales-by-machine").await;
    b.wait_for("a#sales-csv").await;
    b.screenshot("sales").await;

    b.goto("/ops/audit").await;
    b.wait_for("table#audit").await;
    b.screenshot("audit").await;
    b.close().await;

    // The fleet and a machine on a phone, as the finance operator.
    let phone = Browser::phone(&app).await;
    phone.sign_in(&fleet.finance.1).await;
    phone.goto("/ops/fleet").await;
    phone.wait_for("table#fleet").await;
    phone.screenshot("fleet-phone").await;
    phone
        .goto(&format!("/ops/machines/{}", water.device_id))
        .await;
    phone.wait_for("svg#telemetry-chart").await;
    phone.screenshot("machine-phone").await;
    phone.close().await;
}
