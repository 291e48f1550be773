//! The store conformance suite (the same checks as SQLite's, races included) against Amazon
//! DynamoDB Local, one fresh table per test.

blepay_store::conformance_tests!(blepay_dynamodb::testing::fresh_dyn_store());
