//! The store conformance suite again, with a store that never decides from its last knowledge of
//! a device item (`DynamoStore::without_device_shadow`): every pay and machine request takes the
//! read-then-write path, as it does in a process that has not seen the machine yet (a cold Lambda
//! instance, another server) or whose knowledge turned out stale.

blepay_store::conformance_tests!(blepay_dynamodb::testing::fresh_dyn_store_reading_first());
