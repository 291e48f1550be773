//! The `sessions_by_user` GSI keys on `user` + `created_at`, which problem items carry too: a
//! user's session list must still list (only) their sessions after they reported a problem.

use blepay_dynamodb::testing::fresh_store;
use blepay_store::conformance::{T0, amount, key, online_machine, pay_cmd, problem_cmd, user};
use blepay_store::{PageRequest, PayOutcome, ProblemOutcome, SessionFilter, Store};

#[tokio::test]
async fn a_users_session_list_still_lists_after_they_report_a_problem() {
    // Arrange: alice's session, and a problem she reported on it.
    let store = fresh_store().await;
    online_machine(&store, 1, T0).await;
    store
        .top_up(&user("alice"), amount(1000), &key("t1"), "ops-test", T0)
        .await
        .unwrap();
    let PayOutcome::Created(paid) = store
        .pay(&pay_cmd("alice", "p1", 1, 7, 300, T0))
        .await
        .unwrap()
    else {
        panic!("created");
    };
    let ProblemOutcome::Opened(_) = store
        .report_problem(&problem_cmd("alice", paid.id, 1, T0 + 10))
        .await
        .unwrap()
    else {
        panic!("opened");
    };

    // Act
    let filter = SessionFilter {
        user: Some(user("alice")),
        ..SessionFilter::default()
    };
    let page = store
        .list_sessions(
            &filter,
            &PageRequest {
                limit: 10,
                after: None,
            },
            T0 + 20,
        )
        .await
        .unwrap();

    // Assert
    let ids: Vec<_> = page.items.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![paid.id]);
}
