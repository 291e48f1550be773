//! The real `blepay serve` binary and its secrets and files (issue 10, I1 and L4): no secret on
//! its command line, secret files refused when group or others can read them, generated
//! secrets refused off loopback, the data dir 0700 and the database files (with their `-wal`
//! and `-shm`) 0600 once it has written.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const JWT_SECRET: &str = "serve-secrets-jwt-0123456789abcdef0123456789";
const OPS_TOKEN: &str = "serve-secrets-ops-0123456789abcdef";
const MASTER_KEYS: &str = "0:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn blepay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blepay"));
    // Nothing inherited: no BLEPAY_* from the developer's shell.
    cmd.env_clear().env("RUST_LOG", "warn");
    cmd
}

fn secret_file(dir: &Path, name: &str, value: &str, mode: u32) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .unwrap();
    f.write_all(value.as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Run `blepay serve` expecting it to refuse to start → its stderr.
fn refused_start(cmd: &mut Command) -> String {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success(), "serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_running_serve_shows_no_secret_and_keeps_its_files_private() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let jwt = secret_file(&secrets, "jwt", JWT_SECRET, 0o600);
    let ops = secret_file(&secrets, "ops", OPS_TOKEN, 0o400);
    let data = dir.path().join("data");
    let port = free_port();
    let mut child = blepay()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .arg("--jwt-secret-file")
        .arg(&jwt)
        .arg("--ops-token-file")
        .arg(&ops)
        .env("BLEPAY_MASTER_KEYS", MASTER_KEYS)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "serve did not come up");
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What every local user can read about the process.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    for secret in [JWT_SECRET, OPS_TOKEN, &MASTER_KEYS[2..]] {
        assert!(!cmdline.contains(secret), "a secret in {cmdline:?}");
    }

    // A write (the WAL and its index appear), with the token from the file.
    let r = http
        .post(format!("{base}/v1/ops/wallets/alice/topup"))
        .bearer_auth(OPS_TOKEN)
        .json(&serde_json::json!({"amount": 500, "idempotencyKey": "k-modes-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    assert_eq!(mode(&data), 0o700, "data dir");
    for name in ["blepay.db", "blepay.db-wal", "blepay.db-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    // Secrets given from outside are not copied into the data dir.
    for name in ["jwt-secret", "ops-token"] {
        assert!(
            !data.join(name).exists(),
            "{name} written into the data dir"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn secrets_are_not_accepted_as_flag_values() {
    for flag in ["--jwt-secret", "--ops-token", "--master-keys"] {
        let err = refused_start(blepay().args(["serve", flag, JWT_SECRET]));
        assert!(err.contains("unexpected argument"), "{flag}: {err}");
    }
    for (sub, flag) in [("phone", "--token"), ("ops", "--ops-token")] {
        let out = blepay()
            .args([sub, flag, OPS_TOKEN, "wallet"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{sub} {flag} accepted");
    }
}

#[test]
fn a_secret_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = secret_file(dir.path(), "jwt", JWT_SECRET, 0o644);
    let err = refused_start(
        blepay()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--jwt-secret-file")
            .arg(&jwt),
    );
    assert!(
        err.contains("BLEPAY_JWT_SECRET_FILE") && err.contains("0644"),
        "{err}"
    );
}

#[test]
fn generated_secrets_are_refused_off_loopback_and_short_jwt_secrets_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = refused_start(
        blepay()
            .args(["serve", "--listen", "0.0.0.0:0"])
            .arg("--data-dir")
            .arg(&data),
    );
    assert!(err.contains("--allow-insecure"), "{err}");
    assert!(!data.join("master-keys").exists(), "a key was generated");

    let err = refused_start(
        blepay()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .env("BLEPAY_JWT_SECRET", "aaaaaaaaaaaaaaaa"),
    );
    assert!(
        err.contains("BLEPAY_JWT_SECRET") && err.contains("32"),
        "{err}"
    );
}

#[test]
fn a_provider_document_readable_by_others_or_malformed_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let doc = r#"{"secretKey":"sk_test_sekrit","webhookSecrets":["whsec_sekrit"]}"#;
    let open = secret_file(dir.path(), "stripe-open.json", doc, 0o644);
    let err = refused_start(
        blepay()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--stripe-file")
            .arg(&open),
    );
    assert!(
        err.contains("BLEPAY_STRIPE_FILE") && err.contains("0644"),
        "{err}"
    );
    // A document with a publishable key where the secret key goes: named, never shown.
    let wrong = secret_file(
        dir.path(),
        "stripe-wrong.json",
        r#"{"secretKey":"pk_test_sekrit","webhookSecrets":["whsec_sekrit"]}"#,
        0o600,
    );
    let err = refused_start(
        blepay()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--stripe-file")
            .arg(&wrong),
    );
    assert!(
        err.contains("BLEPAY_STRIPE") && err.contains("secretKey"),
        "{err}"
    );
    assert!(!err.contains("sekrit"), "the secret was shown: {err}");
}

#[test]
fn the_log_format_is_text_or_json_and_json_writes_one_object_per_line() {
    let err = refused_start(blepay().args(["serve"]).env("BLEPAY_LOG_FORMAT", "xml"));
    assert!(err.contains("BLEPAY_LOG_FORMAT"), "{err}");
    // A refused start logs nothing through tracing; a generated development secret is a
    // warning, logged once serve resolves its configuration: read that line.
    let dir = tempfile::tempdir().unwrap();
    let mut child = blepay()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("BLEPAY_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve logged nothing");
    child.kill().unwrap();
    child.wait().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert!(
        v["level"].is_string() && v["fields"]["message"].is_string(),
        "{v}"
    );
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a log file: {line}"
    );
}
