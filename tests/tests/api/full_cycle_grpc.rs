use blepay_core::SessionStatus;
use blepay_device_client::{Request, Status, heartbeat, machine, press, report};
use blepay_e2e::{Link, TestApp, spawn_app, unb64};
use blepay_proto::pb::v1 as pb;
use blepay_proto::pb::v1::device_service_client::DeviceServiceClient;
use blepay_proto::pb::v1::ops_service_client::OpsServiceClient;
use blepay_proto::pb::v1::phone_service_client::PhoneServiceClient;
use prost::Message;
use tonic::transport::Channel;

async fn channel(app: &TestApp) -> Channel {
    tonic::transport::Endpoint::from_shared(app.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A machine speaking DeviceService/Exchange with its own sequence numbers.
struct GrpcMachine {
    link: Link,
    client: DeviceServiceClient<Channel>,
}

impl GrpcMachine {
    async fn exchange(&mut self, body: &Request) -> machine::Answer {
        let pending = self.link.seal(body);
        let answer = self
            .client
            .exchange(pb::DeviceFrame {
                frame: pending.frame.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let opened = self.link.identity.open(&pending, &answer.frame).unwrap();
        assert!(opened.server_time.abs_diff(blepay_e2e::unix_now()) <= 2);
        opened.body
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_pays_a_machine_and_the_money_settles_over_grpc() {
    // Arrange
    let app = spawn_app().await;
    let ch = channel(&app).await;
    let mut ops = OpsServiceClient::new(ch.clone());
    let mut phone = PhoneServiceClient::new(ch.clone());
    let device_id = blepay_e2e::random_device_id();
    let alice = app.token_for("alice");

    // Act + Assert: register and top up over OpsService.
    let reg = ops
        .register_device(authed(
            pb::RegisterDeviceRequest {
                device_id: device_id.clone(),
                name: "Water dispenser".into(),
                price_per_unit: 25,
                unit_name: "litre".into(),
                currency: "EUR".into(),
            },
            &app.ops_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            reg.device_id.as_str(),
            reg.key_version,
            reg.device_key.len()
        ),
        (device_id.as_str(), 0, 64)
    );
    let w = ops
        .top_up(authed(
            pb::TopUpRequest {
                user_id: "alice".into(),
                amount: 1000,
                idempotency_key: "t1".into(),
            },
            &app.ops_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (w.available, w.held, w.spent, w.currency.as_str()),
        (1000, 0, 0, "EUR")
    );

    // The machine's heartbeat over DeviceService brings it online.
    let mut machine = GrpcMachine {
        link: Link::new(blepay_e2e::identity(&device_id, &reg.device_key)),
        client: DeviceServiceClient::new(ch.clone()),
    };
    assert_eq!(
        machine
            .exchange(&heartbeat(blepay_e2e::test_telemetry()))
            .await,
        machine::Answer::Ack
    );
    let advert = unb64(&blepay_e2e::signed_advert(
        &device_id,
        &machine.link.identity.key,
        0,
        0,
    ));

    let v = phone
        .verify(authed(
            pb::VerifyRequest {
                advert: advert.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v,
        pb::VerifyResponse {
            device_id: device_id.clone(),
            name: "Water dispenser".into(),
            price_per_unit: 25,
            unit_name: "litre".into(),
            currency: "EUR".into(),
            state: pb::DeviceState::Idle as i32,
            service_state: pb::ServiceState::InService as i32,
        }
    );
    let paid = phone
        .pay(authed(
            pb::PayRequest {
                advert: advert.clone(),
                max_amount: 200,
                idempotency_key: "p1".into(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (paid.status, paid.hold_amount),
        (pb::SessionStatus::Authorized as i32, 200)
    );
    let w = phone
        .get_wallet(authed(pb::GetWalletRequest {}, &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.available, w.held, w.spent), (800, 200, 0));

    // The press: one exchange starts the session and carries its terms.
    let pressed = machine.exchange(&press()).await;
    let grants: Vec<_> = pressed.usable_grants().collect();
    assert_eq!(grants.len(), 1, "{pressed:?}");
    assert_eq!(grants[0].session.to_string(), paid.session_id);
    assert_eq!(
        (grants[0].hold.minor(), grants[0].price_per_unit.minor()),
        (200, 25)
    );
    let sid = grants[0].session;
    machine
        .exchange(&report(sid, blepay_core::Units::new(1), false))
        .await;
    let done = machine
        .exchange(&report(sid, blepay_core::Units::new(4), true))
        .await;
    assert_eq!(
        done,
        machine::Answer::Session {
            status: Status::Known(SessionStatus::Settled),
            amount: 100
        }
    );

    // Assert: the wallet and the session, via phone and ops.
    let w = phone
        .get_wallet(authed(pb::GetWalletRequest {}, &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (w.user_id.as_str(), w.available, w.held, w.spent),
        ("alice", 900, 0, 100)
    );
    let s = phone
        .get_session(authed(
            pb::GetSessionRequest {
                session_id: paid.session_id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.status, s.units, s.amount, s.hold_amount),
        (pb::SessionStatus::Settled as i32, 4, 100, 200)
    );
    let s_ops = ops
        .get_session(authed(
            pb::GetSessionRequest {
                session_id: paid.session_id.clone(),
            },
            &app.ops_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s_ops, s);
    let w_ops = ops
        .get_wallet(authed(
            pb::OpsGetWalletRequest {
                user_id: "alice".into(),
            },
            &app.ops_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w_ops, w);
    assert!(app.audit().await.reconciles());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_over_grpc_carries_its_code_and_x_blepay_code() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let mut phone = PhoneServiceClient::new(channel(&app).await);
    let advert = unb64(&m.advert());
    let bob = app.token_for("bob");

    // Act: bob has no money.
    let err = phone
        .pay(authed(
            pb::PayRequest {
                advert: advert.clone(),
                max_amount: 100,
                idempotency_key: "p".into(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    // ...and no token at all.
    let unauth = phone
        .get_wallet(tonic::Request::new(pb::GetWalletRequest {}))
        .await
        .unwrap_err();
    // ...and someone else's (unknown) session.
    let missing = phone
        .get_session(authed(
            pb::GetSessionRequest {
                session_id: "00".repeat(16),
            },
            &bob,
        ))
        .await
        .unwrap_err();

    // Assert
    let code = |s: &tonic::Status| {
        s.metadata()
            .get("x-blepay-code")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (err.code(), code(&err).as_str()),
        (tonic::Code::FailedPrecondition, "INSUFFICIENT_FUNDS")
    );
    assert_eq!(
        (unauth.code(), code(&unauth).as_str()),
        (tonic::Code::Unauthenticated, "UNAUTHENTICATED")
    );
    assert_eq!(
        (missing.code(), code(&missing).as_str()),
        (tonic::Code::NotFound, "SESSION_NOT_FOUND")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pay_and_reads_speak_protobuf_over_http_when_asked() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("carol", 500).await;
    let carol = app.token_for("carol");
    let req = pb::PayRequest {
        advert: unb64(&m.advert()),
        max_amount: 150,
        idempotency_key: "pb-1".into(),
    };

    // Act
    let r = app
        .client
        .post(app.url("/v1/pay"))
        .bearer_auth(&carol)
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    let paid = pb::PayResponse::decode(r.bytes().await.unwrap()).unwrap();
    let w = app
        .client
        .get(app.url("/v1/wallet"))
        .bearer_auth(&carol)
        .header("accept", "application/x-protobuf")
        .send()
        .await
        .unwrap();
    let w_ct = w.headers()["content-type"].to_str().unwrap().to_owned();
    let wallet = pb::Wallet::decode(w.bytes().await.unwrap()).unwrap();

    // Assert
    assert_eq!((status, ct.as_str()), (200, "application/x-protobuf"));
    assert_eq!(
        (paid.status, paid.hold_amount, paid.device_id.as_str()),
        (1, 150, m.device_id.as_str())
    );
    assert_eq!(w_ct, "application/x-protobuf");
    assert_eq!(
        wallet,
        pb::Wallet {
            user_id: "carol".into(),
            available: 350,
            held: 150,
            spent: 0,
            currency: "EUR".into(),
            // No cap configured; the held 150 counts as today's spending.
            daily_limit: 0,
            spent_today: 150,
            daily_limit_overridden: false,
            refunded: 0,
        }
    );
}
