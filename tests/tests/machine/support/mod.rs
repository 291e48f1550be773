//! Test support: the real server in-process, a SIM800 simulator, a simulated dispenser on the
//! real engine + driver ([`dispenser`]), and a request-level harness for transport tests
//! ([`machine`]: seal, send until answered with the same bytes, open). The fault-injecting TCP
//! proxy is `blepay_e2e::proxy` (the api suite uses it too).

pub mod dispenser;
pub mod machine;
pub mod server;
pub mod sim800;
