use blepay_e2e::{Answer, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_200() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();

    // Assert
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_route_is_a_404_with_a_json_code() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let r = Answer::of(
        app.client
            .get(app.url("/v1/nothing-here"))
            .send()
            .await
            .unwrap(),
    )
    .await;

    // Assert
    r.assert_error(404, "NOT_FOUND");
}
