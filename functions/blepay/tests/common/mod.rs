//! What the `blepay bench` contract tests share: run the real binary with a temporary data
//! directory and parse the last line it prints, the one JSON object of figures.

use serde_json::Value;

/// `blepay bench <args> --dir <temp>` (logging at `error`); its last stdout line, parsed. Panics
/// with the output when the command fails or the line is not JSON.
pub fn bench_last_json(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blepay"))
        .arg("bench")
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .output()
        .expect("run blepay bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {}: {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}
