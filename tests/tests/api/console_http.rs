//! The operator console's security, over plain HTTP (no browser: console.rs drives Chromium):
//! the session cookie's attributes, sign-in refusals, CSRF on every state-changing form, the
//! role enforced by the server whatever the page shows, sign-out and operator revocation ending
//! sessions, and money typed in major units arriving as exact minor units.

use blepay_e2e::{TestApp, random_user, spawn_app, test_telemetry};
use serde_json::json;

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

struct Console {
    base: String,
    cookie: String,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    location: String,
    set_cookie: String,
    body: String,
}

async fn reply(r: reqwest::Response) -> Reply {
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (location, set_cookie) = (header("location"), header("set-cookie"));
    Reply {
        status: r.status().as_u16(),
        location,
        set_cookie,
        body: r.text().await.expect("body"),
    }
}

async fn sign_in_raw(app: &TestApp, token: &str) -> Reply {
    let r = client()
        .post(app.url("/ops/sign-in"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("sign in");
    reply(r).await
}

/// Sign in with `token` → a console with the session cookie.
async fn sign_in(app: &TestApp, token: &str) -> Console {
    let r = sign_in_raw(app, token).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location, "/ops/fleet");
    let cookie = r
        .set_cookie
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned();
    Console {
        base: app.address.clone(),
        cookie,
        http: client(),
    }
}

impl Console {
    async fn get(&self, path: &str) -> Reply {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("GET");
        reply(r).await
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(fields)
            .send()
            .await
            .expect("POST");
        reply(r).await
    }

    /// The CSRF token the signed-in pages put in every form.
    async fn csrf(&self) -> String {
        let page = self.get("/ops/fleet").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let at = page
            .body
            .find(r#"name="_csrf" value=""#)
            .expect("a _csrf input")
            + 20;
        page.body[at..at + 64].to_owned()
    }
}

async fn available(app: &TestApp, user: &str) -> i64 {
    // proto3 JSON: int64 is a string.
    let w = app.wallet(user).await;
    w["available"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn sign_in_opens_a_strict_http_only_session_and_a_wrong_token_is_refused() {
    let app = spawn_app().await;
    // Unsigned, a page sends the browser to sign in; the sign-in page needs nothing.
    let r = reply(
        client()
            .get(app.url("/ops/fleet"))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!((r.status, r.location.as_str()), (303, "/ops/sign-in"));
    let r = reply(
        client()
            .get(app.url("/ops/sign-in"))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains(r#"id="sign-in""#));

    let wrong = sign_in_raw(&app, "not-a-token").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookie.is_empty());
    assert!(wrong.body.contains(r#"id="error""#));

    let ok = sign_in_raw(&app, &app.ops_token).await;
    assert_eq!(ok.status, 303);
    for attr in [
        "blepay_console=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/ops",
        "Max-Age=28800",
    ] {
        assert!(ok.set_cookie.contains(attr), "{}", ok.set_cookie);
    }
    // Plain HTTP: not Secure (the browser would drop it); over TLS it is (console::is_tls).
    assert!(!ok.set_cookie.contains("Secure"), "{}", ok.set_cookie);

    let console = sign_in(&app, &app.ops_token).await;
    let fleet = console.get("/ops/fleet").await;
    assert_eq!(fleet.status, 200);
    assert!(fleet.body.contains(r#"id="whoami""#) && fleet.body.contains("ops token (owner)"));
    // A session cookie that is not one the store knows is no session.
    let forged = Console {
        cookie: format!("blepay_console={}", "ab".repeat(32)),
        ..console
    };
    assert_eq!(forged.get("/ops/fleet").await.status, 303);
}

#[tokio::test]
async fn every_page_renders_for_an_owner_and_answers_with_a_strict_csp() {
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let user = random_user();
    app.top_up(&user, 1_000).await;
    let console = sign_in(&app, &app.ops_token).await;
    let r = console
        .http
        .get(app.url("/ops/fleet"))
        .header("cookie", &console.cookie)
        .send()
        .await
        .expect("GET");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    for (path, marker) in [
        ("/ops/fleet".to_owned(), r#"id="fleet""#),
        (
            format!("/ops/machines/{}", m.device_id),
            r#"id="telemetry-chart""#,
        ),
        ("/ops/sessions".to_owned(), r#"id="sessions""#),
        ("/ops/problems".to_owned(), r#"id="problems""#),
        (format!("/ops/wallets?user={user}"), r#"id="balance""#),
        ("/ops/sales".to_owned(), r#"id="sales-chart""#),
        ("/ops/audit".to_owned(), r#"id="audit""#),
        ("/ops/assets/console.js".to_owned(), "DOMContentLoaded"),
        ("/ops/assets/console.css".to_owned(), "table.list"),
    ] {
        let r = console.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.body.contains(marker), "{path} lacks {marker}");
    }
    // The wallet shows money in the deployment's currency; the machine its heartbeat's signal.
    let wallet = console.get(&format!("/ops/wallets?user={user}")).await;
    assert!(wallet.body.contains("10.00 EUR"), "{}", wallet.body);
    let machine = console.get(&format!("/ops/machines/{}", m.device_id)).await;
    let csq = test_telemetry().signal_quality;
    assert!(
        machine.body.contains(&format!("CSQ {csq}")),
        "{}",
        machine.body
    );
    // The sales CSV is the API's: its header, as a download.
    let r = console
        .http
        .get(app.url("/ops/sales.csv"))
        .header("cookie", &console.cookie)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/csv")
    );
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap_or_default()
            .starts_with("attachment")
    );
    let csv = r.text().await.expect("csv");
    assert!(
        csv.starts_with("day,device_id,sessions,units,captured,refunded,net,currency"),
        "{csv}"
    );
    // Bad input is a clear page, not a panic: an unknown machine, a malformed date.
    let r = console.get("/ops/machines/zz").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("INVALID_ARGUMENT"));
    let r = console.get("/ops/sales?from=2026-13-01").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_form_without_the_right_csrf_token_or_from_another_site_changes_nothing() {
    let app = spawn_app().await;
    let user = random_user();
    app.top_up(&user, 100).await;
    let console = sign_in(&app, &app.ops_token).await;
    let csrf = console.csrf().await;
    let path = format!("/ops/wallets/{user}/topup");
    let before = app.snapshot(&user).await;

    for fields in [
        vec![("amount", "5.00"), ("idempotency_key", "k1")],
        vec![
            ("amount", "5.00"),
            ("idempotency_key", "k1"),
            ("_csrf", "00"),
        ],
        vec![
            ("amount", "5.00"),
            ("idempotency_key", "k1"),
            ("_csrf", &"0".repeat(64)),
        ],
    ] {
        let r = console.post(&path, &fields).await;
        assert_eq!(r.status, 403, "{fields:?}");
        assert!(r.body.contains("CSRF_FAILED"), "{}", r.body);
    }
    // The right token from another site's page is refused too.
    let r = console
        .http
        .post(app.url(&path))
        .header("cookie", &console.cookie)
        .header("origin", "https://evil.example")
        .form(&[
            ("amount", "5.00"),
            ("idempotency_key", "k1"),
            ("_csrf", csrf.as_str()),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        app.snapshot(&user).await,
        before,
        "a refused form changed something"
    );

    // With it: 5.00 EUR arrives as exactly 500 minor units, once, however often it is sent.
    for _ in 0..2 {
        let r = console
            .post(
                &path,
                &[
                    ("amount", "5.00"),
                    ("idempotency_key", "k1"),
                    ("_csrf", &csrf),
                ],
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(
            r.location,
            format!("/ops/wallets?user={user}&done=topped-up")
        );
    }
    assert_eq!(available(&app, &user).await, 600);
    // An amount the currency cannot hold is refused, nothing changes.
    let r = console
        .post(
            &path,
            &[
                ("amount", "1.005"),
                ("idempotency_key", "k2"),
                ("_csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("decimal places"));
    assert_eq!(available(&app, &user).await, 600);
    let audit = app.audit().await;
    assert!(audit.reconciles(), "{audit:?}");
}

#[tokio::test]
async fn the_server_refuses_what_a_role_may_not_do_whatever_the_page_shows() {
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let support = app
        .post(
            "/v1/ops/operators",
            &app.ops_token,
            &json!({"name": "Ana", "role": "support", "idempotencyKey": "support-1"}),
        )
        .await
        .ok();
    let token = support["token"].as_str().expect("token");
    let console = sign_in(&app, token).await;
    let page = console.get(&format!("/ops/machines/{}", m.device_id)).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("(support)"));
    assert!(
        !page.body.contains(r#"id="revoke""#),
        "support is shown the revoke form"
    );
    assert!(
        !page.body.contains(r#"id="tariff""#),
        "support is shown the tariff form"
    );
    let csrf = console.csrf().await;
    let r = console
        .post(
            &format!("/ops/machines/{}/revoke", m.device_id),
            &[("reason", "stolen"), ("_csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("FORBIDDEN"));
    assert_eq!(app.ops_device(&m.device_id).await["revokedAt"], "0");
    // Its key still works: the machine's heartbeat is answered.
    m.machine
        .heartbeat(test_telemetry())
        .await
        .expect("heartbeat after the refusal");
    let r = console.get("/ops/audit").await;
    assert_eq!(r.status, 403, "support may not read the audit trail");
}

#[tokio::test]
async fn sign_out_and_revoking_the_operator_end_sessions() {
    let app = spawn_app().await;
    let console = sign_in(&app, &app.ops_token).await;
    let csrf = console.csrf().await;
    // Sign-out needs the token too (a forged sign-out is a nuisance, refused all the same).
    assert_eq!(console.post("/ops/sign-out", &[]).await.status, 403);
    let out = console.post("/ops/sign-out", &[("_csrf", &csrf)]).await;
    assert_eq!((out.status, out.location.as_str()), (303, "/ops/sign-in"));
    assert!(out.set_cookie.contains("Max-Age=0"), "{}", out.set_cookie);
    // The old cookie, replayed, is no session any more.
    let r = console.get("/ops/fleet").await;
    assert_eq!((r.status, r.location.as_str()), (303, "/ops/sign-in"));

    let op = app
        .post(
            "/v1/ops/operators",
            &app.ops_token,
            &json!({"name": "Tom", "role": "technician", "idempotencyKey": "tech-1"}),
        )
        .await
        .ok();
    let tech = sign_in(&app, op["token"].as_str().expect("token")).await;
    assert_eq!(tech.get("/ops/fleet").await.status, 200);
    let id = op["operator"]["operatorId"].as_str().expect("operatorId");
    app.post(
        &format!("/v1/ops/operators/{id}/revoke"),
        &app.ops_token,
        &json!({}),
    )
    .await
    .ok();
    assert_eq!(
        tech.get("/ops/fleet").await.status,
        303,
        "a revoked operator's session lives on"
    );
    assert_eq!(
        sign_in_raw(&app, op["token"].as_str().expect("token"))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn the_fleet_shows_a_machine_offline_until_its_heartbeat() {
    let app = spawn_app().await;
    let (id, key) = app.register_device(25).await;
    let console = sign_in(&app, &app.ops_token).await;
    let row = |body: &str| {
        let at = body
            .find(&format!(r#"data-device-id="{id}""#))
            .expect("the machine's row");
        let rest = &body[at..];
        let state = rest.find(r#"class="state""#).expect("state cell");
        rest[state..]
            .split('>')
            .nth(1)
            .unwrap_or_default()
            .split('<')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(row(&console.get("/ops/fleet").await.body), "OFFLINE");
    app.machine(&id, &key)
        .machine
        .heartbeat(test_telemetry())
        .await
        .expect("heartbeat");
    assert_eq!(row(&console.get("/ops/fleet").await.body), "IDLE");
    // The filter finds it by state.
    let idle = console.get("/ops/fleet?state=IDLE").await.body;
    assert!(idle.contains(&id));
    let offline = console.get("/ops/fleet?state=OFFLINE").await.body;
    assert!(!offline.contains(&format!(r#"data-device-id="{id}""#)));
}

#[tokio::test]
async fn a_session_closed_in_the_console_releases_its_hold_and_tells_its_story() {
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let user = random_user();
    app.top_up(&user, 1_000).await;
    let paid = app
        .pay(&user, &m.advert(), 200, &blepay_e2e::random_key())
        .await
        .ok();
    let session = paid["sessionId"].as_str().expect("sessionId").to_owned();
    assert_eq!(available(&app, &user).await, 800);
    let console = sign_in(&app, &app.ops_token).await;
    let page = console.get(&format!("/ops/sessions/{session}")).await;
    assert!(
        page.body.contains(r#"id="close""#),
        "an open session offers close"
    );
    let csrf = console.csrf().await;
    let r = console
        .post(
            &format!("/ops/sessions/{session}/close"),
            &[("reason", "stuck"), ("_csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(available(&app, &user).await, 1_000, "the hold is released");
    let page = console
        .get(&format!("/ops/sessions/{session}?done=closed"))
        .await;
    assert!(page.body.contains(r#"id="flash""#) && page.body.contains("Session closed."));
    assert!(
        page.body.contains("by an operator, by hand"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains(r#"id="close""#),
        "a closed session offers no close"
    );
    assert!(app.audit().await.reconciles());
}
