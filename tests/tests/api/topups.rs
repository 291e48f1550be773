//! Users fund their wallets through Stripe and WeChat Pay (issue 12), end to end: the real
//! server with both providers configured, their APIs faked on loopback
//! ([`blepay_e2e::providers`]), and the providers' notifications signed for real with keys the
//! harness generates. Each scenario ends with the ledger reconciled; a refused notification
//! changes nothing (wallet, top-up, audit) and is answered as its provider expects: Stripe with
//! a 4xx (it retries), WeChat Pay with a 4xx `{"code":"FAIL","message":…}`; an accepted one with
//! a 2xx (WeChat Pay: an empty body).

use blepay_core::SessionId;
use blepay_e2e::providers::{
    ProviderApp, ProviderSetup, Sign, WECHAT_APPID, WECHAT_MCHID, WECHAT_NOTIFY_URL, WECHAT_SCHEME,
    rsa_verifies, spawn_app_with_providers, stripe, test_keys, wechat,
    wechat_authorization_verifies,
};
use blepay_e2e::{Answer, TestApp, random_key, spawn_app, unix_now};
use serde_json::{Value, json};

async fn reconciled(app: &TestApp) -> blepay_store::Audit {
    let audit = app.audit().await;
    assert!(
        audit.reconciles(),
        "the ledger does not reconcile: {audit:?}"
    );
    audit
}

/// An int64 field of a JSON answer (proto3 JSON writes them as strings, omits zeros).
fn money(v: &Value, field: &str) -> i64 {
    match &v[field] {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_i64().unwrap(),
        Value::Null => 0,
        other => panic!("{field} is not a number: {other}"),
    }
}

fn available(wallet: &Value) -> i64 {
    money(wallet, "available")
}

/// Everything a refused notification must leave unchanged: the wallet, the top-up as its user
/// and as operators see it, the audit.
async fn everything(
    app: &ProviderApp,
    user: &str,
    id: &str,
) -> (Value, Value, Value, blepay_store::Audit) {
    (
        app.wallet(user).await,
        app.user_topup(user, id).await.ok(),
        app.ops_topup(user, id).await,
        app.audit().await,
    )
}

/// `blepay_provider_notifications_total{provider, outcome}` from `GET /metrics` (0 when absent).
async fn notifications(app: &ProviderApp, provider: &str, outcome: &str) -> u64 {
    let metrics = app.get("/metrics", &app.ops_token).await;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    text.lines()
        .filter(|l| l.starts_with("blepay_provider_notifications_total{"))
        .filter(|l| {
            l.contains(&format!("provider=\"{provider}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A WeChat Pay acknowledgement: 200 or 204 and no body.
#[track_caller]
fn assert_wechat_ack(a: &Answer) {
    assert!(
        matches!(a.status, 200 | 204) && a.body == json!(""),
        "WeChat Pay expects 200/204 with an empty body, got {} {}",
        a.status,
        a.body
    );
}

/// A WeChat Pay refusal: 4xx with `{"code":"FAIL","message":…}`.
#[track_caller]
fn assert_wechat_fail(a: &Answer) {
    assert!(
        (400..500).contains(&a.status)
            && a.body["code"] == "FAIL"
            && a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "WeChat Pay expects a 4xx with {{\"code\":\"FAIL\",\"message\":…}}, got {} {}",
        a.status,
        a.body
    );
}

/// A Stripe top-up of `amount` started by `user` → (top-up id, PaymentIntent id).
async fn stripe_topup(app: &ProviderApp, user: &str, amount: i64) -> (String, String) {
    let t = app
        .start_topup(user, "stripe", amount, &random_key())
        .await
        .ok();
    assert_eq!(t["status"], "PENDING", "{t}");
    (
        t["topUpId"].as_str().unwrap().to_owned(),
        t["stripe"]["paymentIntentId"].as_str().unwrap().to_owned(),
    )
}

/// ... and Stripe says it succeeded: credited.
async fn stripe_credited(app: &ProviderApp, user: &str, amount: i64) -> (String, String) {
    let (id, pi) = stripe_topup(app, user, amount).await;
    let (a, _) = app
        .stripe_notify(
            "payment_intent.succeeded",
            stripe::payment_intent(&pi, &id, amount, app.currency),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(app.user_topup(user, &id).await.ok()["status"], "SUCCEEDED");
    (id, pi)
}

/// A WeChat Pay (App) top-up of `amount` started by `user` → its id.
async fn wechat_topup(app: &ProviderApp, user: &str, amount: i64) -> String {
    let t = app
        .start_topup(user, "wechatpay", amount, &random_key())
        .await
        .ok();
    assert_eq!(t["status"], "PENDING", "{t}");
    t["topUpId"].as_str().unwrap().to_owned()
}

/// ... and WeChat Pay says it was paid: credited.
async fn wechat_credited(app: &ProviderApp, user: &str, amount: i64) -> String {
    let id = wechat_topup(app, user, amount).await;
    let (a, _) = app
        .wechat_notify(
            "TRANSACTION.SUCCESS",
            &wechat::transaction(&id, &wechat::transaction_id(), amount, "CNY"),
        )
        .await;
    assert_wechat_ack(&a);
    assert_eq!(app.user_topup(user, &id).await.ok()["status"], "SUCCEEDED");
    id
}

/// `user` spends `amount` (a multiple of 25) on a machine at 25 a unit.
async fn spend(app: &ProviderApp, user: &str, amount: i64) {
    let m = app.online_machine(25).await;
    let paid = app.pay(user, &m.advert(), amount, &random_key()).await.ok();
    m.machine.press().await.unwrap();
    let sid = SessionId::parse(paid["sessionId"].as_str().unwrap()).unwrap();
    m.machine
        .report(sid, u64::try_from(amount / 25).unwrap(), true)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Stripe
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_top_up_creates_one_payment_intent_and_its_success_credits_the_wallet_exactly_once()
 {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::default()).await;

    // Act: the phone starts a top-up, then retries it with the same key.
    let started = app.start_topup("sam", "stripe", 1250, "topup-1").await.ok();
    let retried = app.start_topup("sam", "stripe", 1250, "topup-1").await.ok();

    // Assert: a PENDING top-up and what Stripe's SDK confirms it with.
    let id = started["topUpId"].as_str().unwrap().to_owned();
    let pi = started["stripe"]["paymentIntentId"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = started["stripe"]["clientSecret"].as_str().unwrap();
    assert_eq!(
        (
            started["status"].as_str(),
            started["provider"].as_str(),
            money(&started, "amount"),
            started["currency"].as_str()
        ),
        (Some("PENDING"), Some("stripe"), 1250, Some("EUR")),
        "{started}"
    );
    assert!(
        pi.starts_with("pi_") && secret.starts_with(&format!("{pi}_secret_")),
        "{started}"
    );
    assert_eq!(retried["topUpId"], started["topUpId"]);
    assert_eq!(retried["stripe"], started["stripe"]);
    // Stripe got one PaymentIntent request, shaped as its API takes it.
    let requests = app.stripe.received("/v1/payment_intents");
    assert_eq!(requests.len(), 1, "the retry asks Stripe nothing");
    let r = &requests[0];
    let form = r.form();
    assert_eq!(form["amount"], "1250");
    assert_eq!(form["currency"], "eur");
    assert_eq!(form["metadata[blepay_topup_id]"], id);
    assert_eq!(form["metadata[blepay_user]"], "sam");
    assert_eq!(
        r.header("authorization"),
        format!("Bearer {}", blepay_e2e::providers::STRIPE_SECRET_KEY)
    );
    assert!(
        r.header("content-type")
            .starts_with("application/x-www-form-urlencoded"),
        "{}",
        r.header("content-type")
    );
    assert!(
        r.header("idempotency-key").contains(&id),
        "the Idempotency-Key is derived from the top-up: {}",
        r.header("idempotency-key")
    );
    assert_eq!(
        available(&app.wallet("sam").await),
        0,
        "nothing before Stripe says so"
    );
    assert_eq!(app.user_topup("sam", &id).await.ok()["status"], "PENDING");

    // Act: Stripe's payment_intent.succeeded, then the same event again.
    let (first, event) = app
        .stripe_notify(
            "payment_intent.succeeded",
            stripe::payment_intent(&pi, &id, 1250, "EUR"),
        )
        .await;
    let again = app.post_stripe(&event, &Sign::Valid).await;

    // Assert
    assert_eq!(
        (first.status, again.status),
        (200, 200),
        "{} {}",
        first.body,
        again.body
    );
    let t = app.user_topup("sam", &id).await.ok();
    assert_eq!(
        (t["status"].as_str(), money(&t, "credited")),
        (Some("SUCCEEDED"), 1250),
        "{t}"
    );
    assert_eq!(available(&app.wallet("sam").await), 1250, "credited once");
    assert_eq!(
        app.ops_topup("sam", &id).await["transactionId"].as_str(),
        Some(pi.as_str())
    );
    let audit = reconciled(&app).await;
    assert_eq!((audit.provider_credits, audit.provider_debits), (1250, 0));
    // The same key for another amount is another request: refused.
    app.start_topup("sam", "stripe", 1300, "topup-1")
        .await
        .assert_error(409, "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deliveries_of_a_stripe_success_credit_the_wallet_once() {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, pi) = stripe_topup(&app, "cora", 2000).await;
    let object = stripe::payment_intent(&pi, &id, 2000, "EUR");
    let event = stripe::event("payment_intent.succeeded", object.clone());
    // Eight deliveries of one event, and four other events saying the same success.
    let mut deliveries: Vec<_> = (0..8)
        .map(|_| app.stripe_delivery(&event, &Sign::Valid))
        .collect();
    for _ in 0..4 {
        let other = stripe::event("payment_intent.succeeded", object.clone());
        deliveries.push(app.stripe_delivery(&other, &Sign::Valid));
    }

    // Act
    let answers = app.all_at_once(deliveries).await;

    // Assert
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(available(&app.wallet("cora").await), 2000);
    assert_eq!(
        notifications(&app, "stripe", "applied").await,
        1,
        "exactly one delivery was applied"
    );
    let t = app.ops_topup("cora", &id).await;
    assert_eq!(
        (money(&t, "credited"), t["status"].as_str()),
        (2000, Some("SUCCEEDED"))
    );
    let audit = reconciled(&app).await;
    assert_eq!(audit.provider_credits, 2000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_refund_that_arrives_before_the_success_leaves_the_top_up_refunded_and_the_wallet_net_zero()
 {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, pi) = stripe_topup(&app, "olga", 1000).await;

    // Act: charge.refunded overtakes payment_intent.succeeded.
    let (refunded, _) = app
        .stripe_notify("charge.refunded", stripe::charge(&pi, 1000, 1000))
        .await;
    let before_success = app.wallet("olga").await;
    let (succeeded, _) = app
        .stripe_notify(
            "payment_intent.succeeded",
            stripe::payment_intent(&pi, &id, 1000, "EUR"),
        )
        .await;

    // Assert
    assert_eq!((refunded.status, succeeded.status), (200, 200));
    assert_eq!(available(&before_success), 0, "a refund credits nothing");
    let t = app.ops_topup("olga", &id).await;
    assert_eq!(
        (
            t["status"].as_str(),
            money(&t, "credited"),
            money(&t, "reversed"),
            money(&t, "providerRefunded"),
            money(&t, "unrecovered")
        ),
        (Some("REFUNDED"), 1000, 1000, 1000, 0),
        "{t}"
    );
    let w = app.wallet("olga").await;
    assert_eq!((available(&w), money(&w, "held")), (0, 0));
    let audit = reconciled(&app).await;
    assert_eq!(
        (audit.provider_credits, audit.provider_debits),
        (1000, 1000)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_stripe_payment_marks_the_top_up_failed_and_a_later_success_still_credits() {
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, pi) = stripe_topup(&app, "fay", 500).await;

    let (failed, _) = app
        .stripe_notify(
            "payment_intent.payment_failed",
            stripe::failed_payment_intent(&pi, &id, 500, "EUR"),
        )
        .await;

    assert_eq!(failed.status, 200);
    let t = app.user_topup("fay", &id).await.ok();
    assert_eq!(t["status"], "FAILED", "{t}");
    assert!(t["failure"].as_str().is_some_and(|f| !f.is_empty()), "{t}");
    assert_eq!(available(&app.wallet("fay").await), 0);
    // The user retries the same PaymentIntent with another card.
    app.stripe_notify(
        "payment_intent.succeeded",
        stripe::payment_intent(&pi, &id, 500, "EUR"),
    )
    .await;
    assert_eq!(app.user_topup("fay", &id).await.ok()["status"], "SUCCEEDED");
    assert_eq!(available(&app.wallet("fay").await), 500);
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_notifications_that_do_not_verify_are_refused_and_change_nothing() {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, pi) = stripe_topup(&app, "tess", 1000).await;
    let genuine = stripe::event(
        "payment_intent.succeeded",
        stripe::payment_intent(&pi, &id, 1000, "EUR"),
    );
    // The genuine event with its amount raised after Stripe signed it.
    let text = String::from_utf8(genuine.clone()).unwrap();
    let tampered = text
        .replace("\"amount_received\":1000", "\"amount_received\":100000")
        .replace("\"amount\":1000", "\"amount\":100000");
    assert_ne!(tampered, text);
    let before = everything(&app, "tess", &id).await;

    // Act + Assert
    for (what, body, sign) in [
        ("another secret", genuine.clone(), Sign::WrongKey),
        ("a stale timestamp", genuine.clone(), Sign::Stale),
        ("no signature", genuine.clone(), Sign::Missing),
        (
            "a tampered body",
            tampered.into_bytes(),
            Sign::SignedFor(genuine.clone()),
        ),
    ] {
        let a = app.post_stripe(&body, &sign).await;
        assert!(
            matches!(a.status, 400 | 401),
            "{what}: Stripe must see a refusal (and retry), got {} {}",
            a.status,
            a.body
        );
        assert_eq!(
            everything(&app, "tess", &id).await,
            before,
            "{what} changed something"
        );
    }
    // A garbage header is refused the same way.
    let r = app
        .stripe_delivery(&genuine, &Sign::Missing)
        .header("stripe-signature", "t=abc,v1=zz")
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 400 | 401));
    assert_eq!(everything(&app, "tess", &id).await, before);
    assert_eq!(notifications(&app, "stripe", "refused").await, 5);
    assert_eq!(notifications(&app, "stripe", "applied").await, 0);

    // The genuine delivery is still applied (none of the refusals used up its event id), and
    // one signed with the older of two rolled secrets verifies too.
    assert_eq!(
        app.post_stripe(&genuine, &Sign::OldSecret).await.status,
        200
    );
    assert_eq!(available(&app.wallet("tess").await), 1000);
    assert_eq!(app.post_stripe(&genuine, &Sign::Valid).await.status, 200);
    assert_eq!(available(&app.wallet("tess").await), 1000);
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_success_for_the_wrong_amount_or_currency_credits_nothing_and_is_shown_as_a_mismatch()
 {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (short, short_pi) = stripe_topup(&app, "mia", 1000).await;
    let (dollars, dollars_pi) = stripe_topup(&app, "mia", 1000).await;
    let before = app.snapshot("mia").await;

    // Act
    let (a, _) = app
        .stripe_notify(
            "payment_intent.succeeded",
            stripe::payment_intent(&short_pi, &short, 999, "EUR"),
        )
        .await;
    let (b, _) = app
        .stripe_notify(
            "payment_intent.succeeded",
            stripe::payment_intent(&dollars_pi, &dollars, 1000, "USD"),
        )
        .await;

    // Assert: acknowledged (a retry cannot fix it), nothing credited, the mismatch recorded.
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    assert_eq!(app.snapshot("mia").await, before);
    for id in [&short, &dollars] {
        assert_eq!(app.user_topup("mia", id).await.ok()["status"], "PENDING");
        let t = app.ops_topup("mia", id).await;
        assert!(
            t["mismatch"].as_str().is_some_and(|m| !m.is_empty()),
            "the operator sees the mismatch: {t}"
        );
        assert_eq!(money(&t, "credited"), 0);
    }
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_notification_for_an_unknown_top_up_is_acknowledged_and_changes_nothing() {
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    stripe_credited(&app, "uma", 700).await;
    let before = app.audit().await;
    let unknown_id = "0123456789abcdef0123456789abcdef";

    for (kind, object) in [
        (
            "payment_intent.succeeded",
            stripe::payment_intent("pi_3UnknownUnknownUnknown1", unknown_id, 700, "EUR"),
        ),
        (
            "charge.refunded",
            stripe::charge("pi_3UnknownUnknownUnknown1", 700, 700),
        ),
        (
            "charge.dispute.created",
            stripe::dispute("pi_3UnknownUnknownUnknown1", 700),
        ),
    ] {
        let (a, _) = app.stripe_notify(kind, object).await;
        assert!(
            (200..300).contains(&a.status),
            "{kind}: {} {}",
            a.status,
            a.body
        );
    }

    assert_eq!(app.audit().await, before);
    assert_eq!(available(&app.wallet("uma").await), 700);
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispute_after_the_user_spent_part_takes_back_only_what_is_left_and_records_the_rest() {
    // Arrange: 1000 credited, 600 spent at a machine.
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, pi) = stripe_credited(&app, "dora", 1000).await;
    spend(&app, "dora", 600).await;
    assert_eq!(available(&app.wallet("dora").await), 400);

    // Act: the cardholder disputes the whole 1000; Stripe delivers it twice.
    let (a, event) = app
        .stripe_notify("charge.dispute.created", stripe::dispute(&pi, 1000))
        .await;
    let again = app.post_stripe(&event, &Sign::Valid).await;

    // Assert: the 400 left is debited, the 600 spent is shown as unrecovered, never negative.
    assert_eq!((a.status, again.status), (200, 200));
    let w = app.wallet("dora").await;
    assert_eq!(
        (available(&w), money(&w, "held"), money(&w, "spent")),
        (0, 0, 600),
        "{w}"
    );
    let t = app.ops_topup("dora", &id).await;
    assert_eq!(
        (
            money(&t, "disputed"),
            money(&t, "reversed"),
            money(&t, "unrecovered")
        ),
        (1000, 400, 600),
        "{t}"
    );
    let mine = app.user_topup("dora", &id).await.ok();
    assert_eq!(money(&mine, "unrecovered"), 600, "{mine}");
    let audit = reconciled(&app).await;
    assert_eq!((audit.provider_credits, audit.provider_debits), (1000, 400));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_refund_of_a_stripe_top_up_is_taken_at_once_asked_of_stripe_and_confirmed_by_its_notification()
 {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, pi) = stripe_credited(&app, "rene", 1000).await;

    // Act
    let answer = app.refund_topup(&id, 300, "refund-1").await.ok();

    // Assert: the wallet is debited at once; Stripe was asked, keyed by the refund.
    assert_eq!(available(&app.wallet("rene").await), 700);
    let refunds = answer["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{answer}");
    let refund_id = refunds[0]["refundId"].as_str().unwrap().to_owned();
    assert_eq!(
        (money(&refunds[0], "amount"), refunds[0]["status"].as_str()),
        (300, Some("REQUESTED")),
        "{answer}"
    );
    let asked = app.stripe.received("/v1/refunds");
    assert_eq!(asked.len(), 1);
    let form = asked[0].form();
    assert_eq!(
        (
            form["payment_intent"].as_str(),
            form["amount"].as_str(),
            form["metadata[blepay_refund_id]"].as_str()
        ),
        (pi.as_str(), "300", refund_id.as_str())
    );
    assert!(
        asked[0].header("idempotency-key").contains(&refund_id),
        "{}",
        asked[0].header("idempotency-key")
    );

    // Act: Stripe confirms the refund, and charge.refunded reports its total.
    let (confirmed, _) = app
        .stripe_notify(
            "refund.updated",
            stripe::refund(&pi, &refund_id, 300, "succeeded"),
        )
        .await;
    let (total, _) = app
        .stripe_notify("charge.refunded", stripe::charge(&pi, 1000, 300))
        .await;
    // The operator's retry with the key answers the same refund.
    let replay = app.refund_topup(&id, 300, "refund-1").await.ok();

    // Assert: confirmed, and nothing taken twice.
    assert_eq!((confirmed.status, total.status), (200, 200));
    let t = app.ops_topup("rene", &id).await;
    assert_eq!(t["refunds"][0]["status"], "SUCCEEDED", "{t}");
    assert_eq!(
        (
            money(&t, "reversed"),
            money(&t, "providerRefunded"),
            t["status"].as_str()
        ),
        (300, 300, Some("SUCCEEDED")),
        "{t}"
    );
    assert_eq!(replay["refunds"][0]["refundId"], refund_id.as_str());
    assert_eq!(
        app.stripe.received("/v1/refunds").len(),
        1,
        "a confirmed refund is not asked again"
    );
    assert_eq!(available(&app.wallet("rene").await), 700);
    let audit = reconciled(&app).await;
    assert_eq!((audit.provider_credits, audit.provider_debits), (1000, 300));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_stripe_refuses_is_given_back_to_the_wallet() {
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, _) = stripe_credited(&app, "gus", 1000).await;
    app.stripe.refuse_refunds(true);

    let refused = app.refund_topup(&id, 400, "refund-1").await;

    refused.assert_error(502, "PROVIDER_ERROR");
    assert_eq!(app.stripe.received("/v1/refunds").len(), 1);
    assert_eq!(available(&app.wallet("gus").await), 1000, "given back");
    let t = app.ops_topup("gus", &id).await;
    assert_eq!(
        (
            t["refunds"][0]["status"].as_str(),
            money(&t, "reversed"),
            t["status"].as_str()
        ),
        (Some("FAILED"), 0, Some("SUCCEEDED")),
        "{t}"
    );
    assert!(
        t["refunds"][0]["failure"]
            .as_str()
            .is_some_and(|f| !f.is_empty()),
        "{t}"
    );
    let audit = reconciled(&app).await;
    assert_eq!(audit.provider_credits - audit.provider_debits, 1000);
    // Stripe accepts the next one.
    app.stripe.refuse_refunds(false);
    app.refund_topup(&id, 400, "refund-2").await.ok();
    assert_eq!(available(&app.wallet("gus").await), 600);
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_that_fails_at_stripe_later_is_given_back_once_when_its_notification_says_so() {
    // Arrange: Stripe accepted the refund (pending), then it fails (the card was closed).
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, pi) = stripe_credited(&app, "noor", 1000).await;
    let answer = app.refund_topup(&id, 300, "refund-1").await.ok();
    let refund_id = answer["refunds"][0]["refundId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(available(&app.wallet("noor").await), 700);
    let mut failed = stripe::refund(&pi, &refund_id, 300, "failed");
    failed["failure_reason"] = json!("expired_or_canceled_card");

    // Act: refund.failed, delivered twice.
    let (a, event) = app.stripe_notify("refund.failed", failed).await;
    let again = app.post_stripe(&event, &Sign::Valid).await;

    // Assert
    assert_eq!((a.status, again.status), (200, 200));
    assert_eq!(
        available(&app.wallet("noor").await),
        1000,
        "given back once"
    );
    let t = app.ops_topup("noor", &id).await;
    assert_eq!(
        (
            t["refunds"][0]["status"].as_str(),
            money(&t, "reversed"),
            t["status"].as_str()
        ),
        (Some("FAILED"), 0, Some("SUCCEEDED")),
        "{t}"
    );
    let audit = reconciled(&app).await;
    assert_eq!((audit.provider_credits, audit.provider_debits), (1300, 300));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_above_the_unspent_part_or_of_an_uncredited_top_up_is_refused_and_changes_nothing()
{
    // Arrange: 1000 credited, 600 spent.
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, _) = stripe_credited(&app, "ivy", 1000).await;
    spend(&app, "ivy", 600).await;
    let (pending, _) = stripe_topup(&app, "ivy", 500).await;
    let before = (app.snapshot("ivy").await, app.ops_topup("ivy", &id).await);

    // Act + Assert
    app.refund_topup(&id, 401, "refund-1")
        .await
        .assert_error(409, "REFUND_EXCEEDS_TOPUP");
    app.refund_topup(&pending, 100, "refund-2")
        .await
        .assert_error(409, "REFUND_EXCEEDS_TOPUP");
    app.refund_topup("ab".repeat(16).as_str(), 100, "refund-3")
        .await
        .assert_error(404, "TOPUP_NOT_FOUND");
    app.refund_topup(&id, 0, "refund-4")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    assert_eq!(
        (app.snapshot("ivy").await, app.ops_topup("ivy", &id).await),
        before
    );
    assert!(
        app.stripe.received("/v1/refunds").is_empty(),
        "Stripe was never asked"
    );
    // What is unspent can be refunded.
    app.refund_topup(&id, 400, "refund-1").await.ok();
    assert_eq!(available(&app.wallet("ivy").await), 0);
    reconciled(&app).await;
}

// ---------------------------------------------------------------------------------------------
// WeChat Pay
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_wechat_pay_top_up_places_a_signed_app_order_and_answers_the_signed_app_parameters() {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;

    // Act
    let started = app
        .start_topup("wei", "wechatpay", 1800, "topup-1")
        .await
        .ok();
    let retried = app
        .start_topup("wei", "wechatpay", 1800, "topup-1")
        .await
        .ok();

    // Assert: the order WeChat Pay received ("APP下单").
    let id = started["topUpId"].as_str().unwrap().to_owned();
    let orders = app.wechat.received("/v3/pay/transactions/app");
    assert_eq!(orders.len(), 1, "the retry places no second order");
    let order = &orders[0];
    let body = order.json();
    assert_eq!(body["appid"], WECHAT_APPID);
    assert_eq!(body["mchid"], WECHAT_MCHID);
    assert_eq!(body["out_trade_no"], id.as_str());
    assert_eq!(body["notify_url"], WECHAT_NOTIFY_URL);
    assert_eq!(body["amount"], json!({"total": 1800, "currency": "CNY"}));
    assert!(
        body["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty() && d.len() <= 127)
    );
    let auth = order.header("authorization");
    assert!(auth.starts_with(&format!("{WECHAT_SCHEME} ")), "{auth}");
    for field in [
        "mchid=",
        "nonce_str=",
        "signature=",
        "timestamp=",
        "serial_no=",
    ] {
        assert!(auth.contains(field), "{field} missing: {auth}");
    }
    assert!(
        wechat_authorization_verifies(
            "POST",
            "/v3/pay/transactions/app",
            &order.headers,
            &order.body
        ),
        "signed with the merchant key over the request: {auth}"
    );
    assert!(order.header("accept").contains("application/json"));

    // Assert: the answer carries what the App SDK pays with ("APP调起支付").
    assert_eq!(started["status"], "PENDING");
    let checkout = &started["wechatpay"];
    assert_eq!(checkout["tradeType"], "APP");
    let prepay_id = checkout["prepayId"].as_str().unwrap();
    assert!(prepay_id.starts_with("wx"), "{checkout}");
    let p = &checkout["params"];
    let field = |k: &str| p[k].as_str().unwrap_or_else(|| panic!("params.{k}: {p}"));
    assert_eq!(
        (
            field("appid"),
            field("partnerid"),
            field("prepayid"),
            field("package")
        ),
        (WECHAT_APPID, WECHAT_MCHID, prepay_id, "Sign=WXPay")
    );
    let timestamp: u64 = field("timestamp").parse().unwrap();
    assert!(timestamp.abs_diff(unix_now()) < 60 && field("timestamp").len() == 10);
    assert!(!field("noncestr").is_empty() && field("noncestr").len() <= 32);
    let message = format!(
        "{}\n{}\n{}\n{}\n",
        field("appid"),
        field("timestamp"),
        field("noncestr"),
        field("prepayid")
    );
    assert!(
        rsa_verifies(&test_keys().merchant, message.as_bytes(), field("sign")),
        "sign is the merchant key's RSA-SHA256 over appid, timestamp, noncestr, prepayid: {p}"
    );
    assert_eq!(retried["topUpId"], started["topUpId"]);
    assert_eq!(retried["wechatpay"]["prepayId"], prepay_id);
    assert_eq!(available(&app.wallet("wei").await), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wechat_pay_transaction_credits_the_wallet_once_delivered_once_twice_or_concurrently() {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let id = wechat_topup(&app, "lin", 1000).await;
    let txn = wechat::transaction(&id, &wechat::transaction_id(), 1000, "CNY");

    // Act: once, the very same notification again, then eight at once (each a fresh envelope,
    // as WeChat Pay's retries are).
    let (once, body) = app.wechat_notify("TRANSACTION.SUCCESS", &txn).await;
    let twice = app.post_wechat(&body, &Sign::Valid).await;
    let at_once = app
        .all_at_once(
            (0..8)
                .map(|_| {
                    app.wechat_delivery(
                        &wechat::notification("TRANSACTION.SUCCESS", &txn),
                        &Sign::Valid,
                    )
                })
                .collect(),
        )
        .await;

    // Assert
    assert_wechat_ack(&once);
    assert_wechat_ack(&twice);
    for a in &at_once {
        assert_wechat_ack(a);
    }
    assert_eq!(available(&app.wallet("lin").await), 1000);
    let t = app.ops_topup("lin", &id).await;
    assert_eq!(
        (
            t["status"].as_str(),
            money(&t, "credited"),
            t["transactionId"].as_str()
        ),
        (Some("SUCCEEDED"), 1000, txn["transaction_id"].as_str()),
        "{t}"
    );
    let audit = reconciled(&app).await;
    assert_eq!(audit.provider_credits, 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_deliveries_of_a_wechat_pay_transaction_credit_once() {
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let id = wechat_topup(&app, "qiu", 600).await;
    let txn = wechat::transaction(&id, &wechat::transaction_id(), 600, "CNY");

    let answers = app
        .all_at_once(
            (0..8)
                .map(|_| {
                    app.wechat_delivery(
                        &wechat::notification("TRANSACTION.SUCCESS", &txn),
                        &Sign::Valid,
                    )
                })
                .collect(),
        )
        .await;

    for a in &answers {
        assert_wechat_ack(a);
    }
    assert_eq!(available(&app.wallet("qiu").await), 600);
    assert_eq!(notifications(&app, "wechatpay", "applied").await, 1);
    assert_eq!(reconciled(&app).await.provider_credits, 600);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wechat_pay_refund_that_arrives_before_the_transaction_is_applied_with_the_credit() {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let id = wechat_topup(&app, "hua", 1000).await;

    // Act: REFUND.SUCCESS (a refund the merchant made in WeChat Pay's own console) overtakes
    // TRANSACTION.SUCCESS.
    let (refund, _) = app
        .wechat_notify(
            "REFUND.SUCCESS",
            &wechat::refund(&id, "RF20261207000001", &wechat::refund_id(), 1000, 1000),
        )
        .await;
    let before_success = available(&app.wallet("hua").await);
    let (paid, _) = app
        .wechat_notify(
            "TRANSACTION.SUCCESS",
            &wechat::transaction(&id, &wechat::transaction_id(), 1000, "CNY"),
        )
        .await;

    // Assert
    assert_wechat_ack(&refund);
    assert_wechat_ack(&paid);
    assert_eq!(before_success, 0);
    let t = app.ops_topup("hua", &id).await;
    assert_eq!(
        (
            t["status"].as_str(),
            money(&t, "credited"),
            money(&t, "reversed"),
            money(&t, "providerRefunded")
        ),
        (Some("REFUNDED"), 1000, 1000, 1000),
        "{t}"
    );
    assert_eq!(available(&app.wallet("hua").await), 0);
    let audit = reconciled(&app).await;
    assert_eq!(
        (audit.provider_credits, audit.provider_debits),
        (1000, 1000)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wechat_pay_notifications_that_do_not_verify_are_refused_with_fail_and_change_nothing() {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let id = wechat_topup(&app, "mei", 1000).await;
    let txn = wechat::transaction(&id, &wechat::transaction_id(), 1000, "CNY");
    let genuine = wechat::notification("TRANSACTION.SUCCESS", &txn);
    // Another resource (for 100 000) put in place of the one WeChat Pay signed.
    let mut richer = txn.clone();
    richer["amount"]["total"] = json!(100_000);
    let mut tampered: Value = serde_json::from_slice(&genuine).unwrap();
    tampered["resource"] = wechat::encrypt(&richer, "transaction");
    let tampered = serde_json::to_vec(&tampered).unwrap();
    // Signed by WeChat Pay, but its resource encrypted under another API v3 key.
    let mut undecryptable: Value = serde_json::from_slice(&genuine).unwrap();
    let mut ct = blepay_e2e::unb64(undecryptable["resource"]["ciphertext"].as_str().unwrap());
    ct[0] ^= 0x01;
    undecryptable["resource"]["ciphertext"] = json!(blepay_e2e::b64(&ct));
    let undecryptable = serde_json::to_vec(&undecryptable).unwrap();
    let before = everything(&app, "mei", &id).await;

    // Act + Assert
    for (what, body, sign) in [
        ("another key", genuine.clone(), Sign::WrongKey),
        ("an unknown serial", genuine.clone(), Sign::UnknownSerial),
        ("a stale timestamp", genuine.clone(), Sign::Stale),
        ("no signature", genuine.clone(), Sign::Missing),
        (
            "a tampered body",
            tampered,
            Sign::SignedFor(genuine.clone()),
        ),
        (
            "a resource that does not decrypt",
            undecryptable,
            Sign::Valid,
        ),
    ] {
        let a = app.post_wechat(&body, &sign).await;
        assert_wechat_fail(&a);
        assert_eq!(
            everything(&app, "mei", &id).await,
            before,
            "{what} changed something"
        );
    }
    assert_eq!(notifications(&app, "wechatpay", "refused").await, 6);

    // The genuine notification is still applied.
    assert_wechat_ack(&app.post_wechat(&genuine, &Sign::Valid).await);
    assert_eq!(available(&app.wallet("mei").await), 1000);
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wechat_pay_transaction_for_the_wrong_amount_or_currency_or_an_unknown_top_up_credits_nothing()
 {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let short = wechat_topup(&app, "jun", 1000).await;
    let foreign = wechat_topup(&app, "jun", 1000).await;
    let before = app.snapshot("jun").await;

    // Act
    let (a, _) = app
        .wechat_notify(
            "TRANSACTION.SUCCESS",
            &wechat::transaction(&short, &wechat::transaction_id(), 1, "CNY"),
        )
        .await;
    let (b, _) = app
        .wechat_notify(
            "TRANSACTION.SUCCESS",
            &wechat::transaction(&foreign, &wechat::transaction_id(), 1000, "USD"),
        )
        .await;
    let (c, _) = app
        .wechat_notify(
            "TRANSACTION.SUCCESS",
            &wechat::transaction(
                "0123456789abcdef0123456789abcdef",
                &wechat::transaction_id(),
                1000,
                "CNY",
            ),
        )
        .await;

    // Assert: all acknowledged (no retry can fix them), nothing credited, mismatches shown.
    for answer in [&a, &b, &c] {
        assert_wechat_ack(answer);
    }
    assert_eq!(app.snapshot("jun").await, before);
    for id in [&short, &foreign] {
        assert_eq!(app.user_topup("jun", id).await.ok()["status"], "PENDING");
        let t = app.ops_topup("jun", id).await;
        assert!(t["mismatch"].as_str().is_some_and(|m| !m.is_empty()), "{t}");
    }
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_refund_of_a_wechat_pay_top_up_is_asked_of_wechat_pay_and_confirmed_by_its_notification()
 {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let id = wechat_credited(&app, "ping", 1000).await;

    // Act
    let answer = app.refund_topup(&id, 400, "refund-1").await.ok();

    // Assert: debited at once; WeChat Pay was asked ("申请退款"), keyed by the refund.
    assert_eq!(available(&app.wallet("ping").await), 600);
    let refund_id = answer["refunds"][0]["refundId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(answer["refunds"][0]["status"], "REQUESTED", "{answer}");
    let asked = app.wechat.received("/v3/refund/domestic/refunds");
    assert_eq!(asked.len(), 1);
    let body = asked[0].json();
    assert_eq!(body["out_trade_no"], id.as_str());
    assert_eq!(body["out_refund_no"], refund_id.as_str());
    assert_eq!(body["notify_url"], WECHAT_NOTIFY_URL);
    assert_eq!(
        (
            &body["amount"]["refund"],
            &body["amount"]["total"],
            &body["amount"]["currency"]
        ),
        (&json!(400), &json!(1000), &json!("CNY"))
    );
    assert!(wechat_authorization_verifies(
        "POST",
        "/v3/refund/domestic/refunds",
        &asked[0].headers,
        &asked[0].body
    ));

    // Act: WeChat Pay's REFUND.SUCCESS, twice.
    let (confirmed, again) = {
        let (a, body) = app
            .wechat_notify(
                "REFUND.SUCCESS",
                &wechat::refund(&id, &refund_id, &wechat::refund_id(), 400, 1000),
            )
            .await;
        (a, app.post_wechat(&body, &Sign::Valid).await)
    };

    // Assert
    assert_wechat_ack(&confirmed);
    assert_wechat_ack(&again);
    let t = app.ops_topup("ping", &id).await;
    assert_eq!(t["refunds"][0]["status"], "SUCCEEDED", "{t}");
    assert_eq!(
        (money(&t, "reversed"), money(&t, "providerRefunded")),
        (400, 400),
        "{t}"
    );
    assert_eq!(available(&app.wallet("ping").await), 600);
    let audit = reconciled(&app).await;
    assert_eq!((audit.provider_credits, audit.provider_debits), (1000, 400));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_wechat_pay_refuses_is_given_back_to_the_wallet() {
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let id = wechat_credited(&app, "bo", 1000).await;
    app.wechat.refuse_refunds(true);

    app.refund_topup(&id, 1000, "refund-1")
        .await
        .assert_error(502, "PROVIDER_ERROR");

    assert_eq!(available(&app.wallet("bo").await), 1000);
    let t = app.ops_topup("bo", &id).await;
    assert_eq!(
        (
            t["refunds"][0]["status"].as_str(),
            money(&t, "reversed"),
            t["status"].as_str()
        ),
        (Some("FAILED"), 0, Some("SUCCEEDED")),
        "{t}"
    );
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wechat_pay_jsapi_top_up_orders_for_the_payer_and_answers_the_signed_jsapi_parameters() {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

    // Act: a mini program starts a top-up for its user ("JSAPI下单").
    let started = app
        .post(
            "/v1/topups",
            &app.token_for("yan"),
            &json!({"amount": 800, "provider": "wechatpay", "idempotencyKey": "topup-1",
                    "wechatOpenId": openid}),
        )
        .await
        .ok();

    // Assert: the order names the payer; the answer is what wx.requestPayment takes.
    let orders = app.wechat.received("/v3/pay/transactions/jsapi");
    assert_eq!(orders.len(), 1);
    let body = orders[0].json();
    assert_eq!(body["payer"]["openid"], openid);
    assert_eq!(body["out_trade_no"], started["topUpId"]);
    assert!(wechat_authorization_verifies(
        "POST",
        "/v3/pay/transactions/jsapi",
        &orders[0].headers,
        &orders[0].body
    ));
    let checkout = &started["wechatpay"];
    assert_eq!(checkout["tradeType"], "JSAPI", "{started}");
    let p = &checkout["params"];
    let field = |k: &str| p[k].as_str().unwrap_or_else(|| panic!("params.{k}: {p}"));
    assert_eq!(
        (field("appId"), field("package"), field("signType")),
        (
            WECHAT_APPID,
            format!("prepay_id={}", checkout["prepayId"].as_str().unwrap()).as_str(),
            "RSA"
        )
    );
    let message = format!(
        "{}\n{}\n{}\n{}\n",
        field("appId"),
        field("timeStamp"),
        field("nonceStr"),
        field("package")
    );
    assert!(
        rsa_verifies(&test_keys().merchant, message.as_bytes(), field("paySign")),
        "paySign is the merchant key's RSA-SHA256 over appId, timeStamp, nonceStr, package: {p}"
    );
    // An openid with another provider is refused.
    app.post(
        "/v1/topups",
        &app.token_for("yan"),
        &json!({"amount": 800, "provider": "stripe", "idempotencyKey": "topup-2",
                "wechatOpenId": openid}),
    )
    .await
    .assert_error(400, "INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wechat_pay_refund_that_ends_abnormal_is_given_back_once() {
    // Arrange: WeChat Pay accepted the refund (PROCESSING), then it could not be paid out.
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let id = wechat_credited(&app, "tao", 1000).await;
    let answer = app.refund_topup(&id, 1000, "refund-1").await.ok();
    let refund_id = answer["refunds"][0]["refundId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(available(&app.wallet("tao").await), 0);
    let mut abnormal = wechat::refund(&id, &refund_id, &wechat::refund_id(), 1000, 1000);
    abnormal["refund_status"] = json!("ABNORMAL");

    // Act: REFUND.ABNORMAL, delivered twice.
    let (a, body) = app.wechat_notify("REFUND.ABNORMAL", &abnormal).await;
    let again = app.post_wechat(&body, &Sign::Valid).await;

    // Assert
    assert_wechat_ack(&a);
    assert_wechat_ack(&again);
    assert_eq!(available(&app.wallet("tao").await), 1000, "given back once");
    let t = app.ops_topup("tao", &id).await;
    assert_eq!(
        (t["refunds"][0]["status"].as_str(), t["status"].as_str()),
        (Some("FAILED"), Some("SUCCEEDED")),
        "{t}"
    );
    reconciled(&app).await;
}

// ---------------------------------------------------------------------------------------------
// Limits, availability, who sees what
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn top_ups_outside_the_deployments_limits_are_refused_up_front() {
    // Arrange
    let app = spawn_app_with_providers(ProviderSetup {
        topup_min: 200,
        topup_max: 5000,
        wallet_max: 8000,
        ..ProviderSetup::default()
    })
    .await;
    app.top_up("kai", 4000).await;

    // Act + Assert
    app.start_topup("kai", "stripe", 199, &random_key())
        .await
        .assert_error(400, "TOPUP_AMOUNT_OUT_OF_RANGE");
    app.start_topup("kai", "wechatpay", 5001, &random_key())
        .await
        .assert_error(400, "TOPUP_AMOUNT_OUT_OF_RANGE");
    app.start_topup("kai", "stripe", 4001, &random_key())
        .await
        .assert_error(409, "WALLET_LIMIT");
    app.start_topup("kai", "paypal", 1000, &random_key())
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    app.start_topup("kai", "stripe", 0, &random_key())
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    assert!(app.stripe.received("/v1/payment_intents").is_empty());
    assert!(app.wechat.received("/v3/pay/transactions/app").is_empty());
    assert!(app.ops_topups("userId=kai").await.is_empty());
    // Exactly up to the wallet maximum is allowed.
    app.start_topup("kai", "stripe", 4000, &random_key())
        .await
        .ok();
    assert_eq!(app.stripe.received("/v1/payment_intents").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_a_providers_configuration_does_not_offer_it() {
    // Arrange: no provider at all, and one with Stripe only.
    let none = spawn_app().await;
    let stripe_only = spawn_app_with_providers(ProviderSetup {
        wechatpay: false,
        ..ProviderSetup::default()
    })
    .await;
    let start = |provider: &str| json!({"amount": 1000, "provider": provider, "idempotencyKey": random_key()});

    // Act + Assert
    for provider in ["stripe", "wechatpay"] {
        none.post("/v1/topups", &none.token_for("nia"), &start(provider))
            .await
            .assert_error(400, "PROVIDER_UNAVAILABLE");
    }
    stripe_only
        .start_topup("nia", "wechatpay", 1000, &random_key())
        .await
        .assert_error(400, "PROVIDER_UNAVAILABLE");
    for path in ["/v1/webhooks/stripe", "/v1/webhooks/wechatpay"] {
        let r = none
            .client
            .post(none.url(path))
            .header("content-type", "application/json")
            .body(stripe::event("payment_intent.succeeded", json!({})))
            .send()
            .await
            .unwrap();
        Answer::of(r)
            .await
            .assert_error(400, "PROVIDER_UNAVAILABLE");
    }
    let r = stripe_only
        .wechat_delivery(
            &wechat::notification("TRANSACTION.SUCCESS", &json!({})),
            &Sign::Valid,
        )
        .send()
        .await
        .unwrap();
    Answer::of(r)
        .await
        .assert_error(400, "PROVIDER_UNAVAILABLE");
    reconciled(&none).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_sees_their_own_top_ups_only() {
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let (id, _) = stripe_topup(&app, "abe", 1000).await;

    let mine = app.user_topup("abe", &id).await.ok();

    assert_eq!(
        (mine["topUpId"].as_str(), mine["userId"].as_str()),
        (Some(id.as_str()), Some("abe"))
    );
    assert!(mine["stripe"].is_null(), "no checkout on a read: {mine}");
    for operators_only in ["transactionId", "mismatch"] {
        assert_eq!(
            mine[operators_only].as_str().unwrap_or_default(),
            "",
            "{operators_only} is the operators': {mine}"
        );
    }
    app.user_topup("eve", &id)
        .await
        .assert_error(404, "TOPUP_NOT_FOUND");
    app.user_topup("abe", &"cd".repeat(16))
        .await
        .assert_error(404, "TOPUP_NOT_FOUND");
    app.user_topup("abe", "not-an-id")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    // The top-up list is the operators'.
    app.get("/v1/ops/topups", &app.token_for("abe"))
        .await
        .assert_error(401, "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_list_top_ups_by_user_provider_and_status_a_page_at_a_time_and_as_csv() {
    // Arrange: two Stripe top-ups and one WeChat Pay top-up (CNY deployment), one succeeded.
    let app = spawn_app_with_providers(ProviderSetup::cny()).await;
    let (paid, _) = stripe_credited(&app, "ada", 1000).await;
    let (open, _) = stripe_topup(&app, "ada", 2000).await;
    let wx = wechat_topup(&app, "ben", 3000).await;

    // Act + Assert: filters.
    let ids = |list: &[Value]| -> Vec<String> {
        list.iter()
            .map(|t| t["topUpId"].as_str().unwrap().to_owned())
            .collect()
    };
    // Newest first: by creation time, then id, both descending (top-ups started within one
    // second are ordered by id).
    let mut all = Vec::new();
    for (user, id) in [("ada", &paid), ("ada", &open), ("ben", &wx)] {
        let t = app.user_topup(user, id).await.ok();
        all.push((money(&t, "createdAt"), id.clone()));
    }
    all.sort_by(|a, b| b.cmp(a));
    let all: Vec<String> = all.into_iter().map(|(_, id)| id).collect();
    let adas: Vec<String> = all.iter().filter(|id| **id != wx).cloned().collect();
    assert_eq!(ids(&app.ops_topups("").await), all, "newest first");
    assert_eq!(ids(&app.ops_topups("userId=ada").await), adas);
    assert_eq!(
        ids(&app.ops_topups("provider=wechatpay").await),
        [wx.as_str()]
    );
    assert_eq!(
        ids(&app.ops_topups("status=SUCCEEDED").await),
        [paid.as_str()]
    );
    assert_eq!(
        ids(&app
            .ops_topups("userId=ada&provider=stripe&status=PENDING")
            .await),
        [open.as_str()]
    );
    assert!(
        app.ops_topups(&format!("from={}", unix_now() + 3600))
            .await
            .is_empty()
    );
    app.get("/v1/ops/topups?status=DONE", &app.ops_token)
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    // Pages of one.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .get(
                &format!("/v1/ops/topups?limit=1&cursor={cursor}"),
                &app.ops_token,
            )
            .await
            .ok();
        let items = page["topUps"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 1);
        seen.extend(ids(&items));
        match page["nextCursor"].as_str() {
            Some(c) if !c.is_empty() => c.clone_into(&mut cursor),
            _ => break,
        }
    }
    assert_eq!(seen, all);
    // CSV: a header row, then one row per top-up.
    let r = app
        .client
        .get(app.url("/v1/ops/topups?status=SUCCEEDED"))
        .bearer_auth(&app.ops_token)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let body = r.bytes().await.unwrap();
    let mut reader = csv::ReaderBuilder::new().from_reader(body.as_ref());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header, blepay_service::topups::TOPUPS_CSV_HEADER);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    let col = |name: &str| header.iter().position(|c| c == name).unwrap();
    assert_eq!(&rows[0][col("top_up_id")], paid);
    assert_eq!(&rows[0][col("status")], "SUCCEEDED");
    assert_eq!(&rows[0][col("amount")], "1000");
    assert_eq!(&rows[0][col("credited")], "1000");
    assert_eq!(&rows[0][col("currency")], "CNY");
    reconciled(&app).await;
}

/// The same operations over gRPC: PhoneService/StartTopUp and GetTopUp for the caller,
/// OpsService/ListTopUps and RefundTopUp for operators — the same handlers, the same rules.
#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_top_up_starts_is_credited_listed_and_refunded_over_grpc() {
    use blepay_proto::pb::v1 as pb;
    use blepay_proto::pb::v1::ops_service_client::OpsServiceClient;
    use blepay_proto::pb::v1::phone_service_client::PhoneServiceClient;
    fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let ch = tonic::transport::Endpoint::from_shared(app.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut phone = PhoneServiceClient::new(ch.clone());
    let mut ops = OpsServiceClient::new(ch);
    let token = app.token_for("grace");
    let start = pb::StartTopUpRequest {
        amount: 1500,
        provider: "stripe".into(),
        idempotency_key: random_key(),
        wechat_open_id: String::new(),
    };
    let t = phone
        .start_top_up(authed(start.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.status, pb::TopUpStatus::Pending as i32);
    let checkout = t.stripe.clone().expect("a Stripe checkout");
    assert!(
        checkout
            .client_secret
            .starts_with(&checkout.payment_intent_id)
    );
    // The same key over gRPC is the same top-up.
    let again = phone
        .start_top_up(authed(start, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.top_up_id, t.top_up_id);

    let (a, _) = app
        .stripe_notify(
            "payment_intent.succeeded",
            stripe::payment_intent(&checkout.payment_intent_id, &t.top_up_id, 1500, "EUR"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let got = phone
        .get_top_up(authed(
            pb::GetTopUpRequest {
                top_up_id: t.top_up_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, pb::TopUpStatus::Succeeded as i32);
    assert_eq!(got.credited, 1500);
    // Another user cannot read it: NOT_FOUND, as over HTTP.
    let other = phone
        .get_top_up(authed(
            pb::GetTopUpRequest {
                top_up_id: t.top_up_id.clone(),
            },
            &app.token_for("mallory"),
        ))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::NotFound);

    let list = ops
        .list_top_ups(authed(
            pb::ListTopUpsRequest {
                user_id: "grace".into(),
                ..pb::ListTopUpsRequest::default()
            },
            &app.ops_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.top_ups.len(), 1);
    assert_eq!(list.top_ups[0].transaction_id, checkout.payment_intent_id);

    let refunded = ops
        .refund_top_up(authed(
            pb::RefundTopUpRequest {
                top_up_id: t.top_up_id.clone(),
                amount: 500,
                reason: "asked by phone".into(),
                idempotency_key: random_key(),
            },
            &app.ops_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refunded.reversed, 500);
    assert_eq!(refunded.refunds.len(), 1);
    assert_eq!(available(&app.wallet("grace").await), 1000);
    let audit = reconciled(&app).await;
    assert_eq!(audit.provider_credits - audit.provider_debits, 1000);
}
