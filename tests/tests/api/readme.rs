//! README.md's "Try it" walkthrough, run as written (issue 15): the first `sh` block after
//! "## Try it" is extracted and run by `bash -euo pipefail` against a fresh `blepay serve` —
//! the real binary, started as a newcomer starts it (no secrets given: it generates them into
//! `./blepay-data`), in a temporary working directory, with `blepay` on `PATH`. Needs `jq`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blepay_e2e::blepay_binary;

/// The first ```sh block after `## Try it`.
fn walkthrough(readme: &str) -> String {
    let section = readme
        .split_once("\n## Try it")
        .expect("README.md has a \"## Try it\" section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("\"Try it\" has a ```sh block")
        .1;
    block
        .split_once("\n```")
        .expect("the block is closed")
        .0
        .to_owned()
}

/// `cmd` without any `BLEPAY_*` variable of the test's environment (a newcomer has none).
fn clean(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BLEPAY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_written() {
    assert!(
        Command::new("jq")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the walkthrough needs jq: apt-get install jq (README lists it)"
    );
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let script = walkthrough(&readme);
    assert!(script.contains("blepay device report"), "{script}");

    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let bin = blepay_binary();
    let _serve = Serve(
        clean(Command::new(bin).arg("serve"))
            .current_dir(dir.path())
            .env("BLEPAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn blepay serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{server}/healthz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "blepay serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let path = format!(
        "{}:{}",
        bin.parent().expect("the binary's directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::task::spawn_blocking(move || {
        clean(Command::new("bash").args(["-euo", "pipefail", "-c", &script]))
            .current_dir(dir.path())
            .env("PATH", path)
            .env("BLEPAY_SERVER", &server)
            .output()
            .expect("run bash")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // It did what it says: the refused press, a settled session of 3 litres at 0.25, the wallet.
    assert!(stderr.contains("NO_SESSION_WAITING"), "{stderr}");
    assert!(
        stdout.contains(r#"{"amount":75,"status":"SETTLED"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""available":"925""#) && stdout.contains(r#""spent":"75""#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""signalQuality":18"#), "{stdout}");
}
