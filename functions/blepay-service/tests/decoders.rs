//! Every decoder on the request path rejects malformed input with a stable code and never panics:
//! JSON and protobuf bodies, adverts inside them, and machine frames.

#![allow(clippy::unwrap_used)] // a test file: helpers outside #[test] fns unwrap too

use std::sync::Arc;

use blepay_proto::pb::v1 as pb;
use blepay_service::config::{Config, Keyring, SecretString};
use blepay_service::{App, ErrorCode};
use blepay_sqlite::SqliteStore;
use proptest::prelude::*;
use prost::Message;

fn app(dir: &tempfile::TempDir) -> App {
    let config = Config {
        keyring: Keyring::parse(&format!("0:{}", "00".repeat(32))).unwrap(),
        phone_tokens: blepay_service::config::TokenVerifier::unguessable(
            blepay_service::config::TokenPolicy::default(),
        ),
        ops_token: SecretString::new("ops-token-0123456789".into()),
        start_timeout_secs: 120,
        offline_after_secs: 300,
        active_timeout_secs: 14_400,
        currency: blepay_core::Currency::parse("EUR").unwrap(),
        pay_limits: blepay_service::config::PayLimits::default(),
        support_refund_max: blepay_core::Amount::new(5_000).unwrap(),
        providers: blepay_service::config::Providers::none(),
    };
    let store = SqliteStore::open(&dir.path().join("blepay.db")).unwrap();
    App::new(config, Arc::new(store), Arc::new(|| 1_770_000_000))
}

/// One server for every case: since nothing may ever change, sharing it makes the check stronger.
fn shared() -> &'static (tokio::runtime::Runtime, App, tempfile::TempDir) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, App, tempfile::TempDir)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (rt, app(&dir), dir)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn json_bodies_of_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<pb::PayRequest>(&bytes);
        let _ = serde_json::from_slice::<pb::VerifyRequest>(&bytes);
        let _ = serde_json::from_slice::<pb::RegisterDeviceRequest>(&bytes);
        let _ = serde_json::from_slice::<pb::TopUpRequest>(&bytes);
    }

    #[test]
    fn json_lookalikes_never_panic(s in r#"\{("(advert|maxAmount|idempotencyKey)":("[A-Za-z0-9+/=]{0,40}"|-?[0-9]{0,25}|null|true|\[\]),?){0,4}\}"#) {
        let _ = serde_json::from_str::<pb::PayRequest>(&s);
    }

    #[test]
    fn protobuf_bodies_of_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = pb::PayRequest::decode(bytes.as_slice());
        let _ = pb::RegisterDeviceRequest::decode(bytes.as_slice());
        let _ = pb::DeviceRequest::decode(bytes.as_slice());
        let _ = pb::DeviceFrame::decode(bytes.as_slice());
    }

    #[test]
    fn random_adverts_are_refused_with_a_stable_code(advert in proptest::collection::vec(any::<u8>(), 0..40)) {
        let (rt, app, _) = shared();
        let err = rt.block_on(app.verify(pb::VerifyRequest { advert })).unwrap_err();
        prop_assert!(matches!(err.code, ErrorCode::InvalidArgument | ErrorCode::AdvertInvalid), "{err:?}");
    }

    #[test]
    fn random_machine_frames_are_refused_and_change_nothing(frame in proptest::collection::vec(any::<u8>(), 0..1100)) {
        let (rt, app, _) = shared();
        let err = rt.block_on(app.device_exchange(&frame)).unwrap_err();
        prop_assert!(matches!(err.code, ErrorCode::FrameInvalid | ErrorCode::DeviceAuthFailed), "{err:?}");
        let audit = rt.block_on(app.store().audit()).unwrap();
        prop_assert_eq!(audit, blepay_store::Audit::default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Operator credentials (issue 11, item 8): anything that is not the ops token or a stored
    /// operator's token is the one generic refusal, token lookalikes included.
    #[test]
    fn random_operator_tokens_are_the_generic_refusal(
        token in prop_oneof![".{0,120}", "bpo_[0-9a-f]{16}_[0-9a-f]{64}", "bpo_[0-9a-fA-F_]{0,90}"],
    ) {
        let (rt, app, _) = shared();
        let header = format!("Bearer {token}");
        let err = rt.block_on(app.authenticate_operator(Some(&header))).unwrap_err();
        prop_assert_eq!(err.code, ErrorCode::Unauthenticated);
        prop_assert_eq!(err.message.as_str(), blepay_service::auth::REFUSED);
    }

    #[test]
    fn random_audit_query_strings_decode_or_are_invalid_argument(q in "[a-z%=&+0-9A-F.:]{0,80}") {
        if let Err(e) = blepay_service::operators::audit_query(Some(&q)) {
            prop_assert_eq!(e.code, ErrorCode::InvalidArgument);
        }
    }

    /// The back office's requests (issue 11) on random ids, amounts, reasons, keys and cursors:
    /// each is refused with a stable code (or, for the list, answered) and nothing changes.
    #[test]
    fn random_back_office_requests_are_refused_with_a_stable_code_and_change_nothing(
        id in "[0-9a-fA-Fxz]{0,40}",
        amount in any::<i64>(),
        reason in "\\PC{0,20}|[ \t\n]{0,3}",
        key in "[A-Za-z0-9 ._:@-]{0,20}",
        limit in any::<u32>(),
        cursor in "\\PC{0,40}",
    ) {
        let (rt, app, _) = shared();
        let op = blepay_service::Operator::bootstrap();
        let user = blepay_core::UserId::parse("alice").unwrap();
        let expected = [
            ErrorCode::InvalidArgument,
            ErrorCode::SessionNotFound,
            ErrorCode::ProblemNotFound,
        ];
        rt.block_on(async {
            let before = app.store().audit().await.unwrap();
            let refund = app.refund_session(&op, pb::RefundRequest {
                session_id: id.clone(), amount, reason: reason.clone(), idempotency_key: key,
            }).await;
            let close = app.close_session(&op, pb::CloseSessionRequest {
                session_id: id.clone(), reason: reason.clone(),
            }).await;
            let problem = app.report_problem(&user, pb::ReportProblemRequest {
                session_id: id.clone(), reason: reason.clone(),
            }).await;
            let dismiss = app.dismiss_problem(&op, pb::DismissProblemRequest {
                problem_id: id, reason,
            }).await;
            for e in [refund.err(), close.err(), problem.err(), dismiss.err()] {
                let e = e.expect("refused: nothing exists");
                assert!(expected.contains(&e.code), "{e:?}");
            }
            match app.list_problems(&op, pb::ListProblemsRequest { limit, cursor }).await {
                Ok(list) => assert!(list.problems.is_empty()),
                Err(e) => assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}"),
            }
            assert_eq!(app.store().audit().await.unwrap(), before);
        });
    }
}
