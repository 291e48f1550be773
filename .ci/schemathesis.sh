#!/usr/bin/env bash
# schemathesis (PyPI, pinned) against a running `blepay serve`: no 5xx, every response matches the
# OpenAPI document the server serves at /openapi.json, and every status code is a documented one.
#
#   .ci/schemathesis.sh                                   # reduced run (CI): 20 examples per operation
#   BLEPAY_SCHEMATHESIS_EXAMPLES=500 .ci/schemathesis.sh  # a bigger run
#
# Installs schemathesis into a virtualenv under ${BLEPAY_TOOLS_DIR:-$HOME/.cache/blepay-tools} (needs
# python3 with venv), builds and starts the server on a free loopback port with known secrets,
# registers a machine and tops up the test user (so some requests reach real data), mints the user's
# JWT with `blepay ops token`, runs schemathesis with the phone and ops credentials bound to the
# document's two security schemes, and stops the server. The server's log is printed on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
EXAMPLES="${BLEPAY_SCHEMATHESIS_EXAMPLES:-20}"
TOOLS_DIR="${BLEPAY_TOOLS_DIR:-$HOME/.cache/blepay-tools}"
VENV="$TOOLS_DIR/schemathesis-$VERSION"
if [[ ! -x "$VENV/bin/schemathesis" ]]; then
  echo "installing schemathesis==$VERSION into $VENV" >&2
  mkdir -p "$TOOLS_DIR"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

# The CLI of the workspace's test build (what `cargo test --workspace` built; up to date after it),
# rather than `cargo build -p blepay`, whose own feature resolution would rebuild it and its deps.
cargo test --quiet --locked --workspace --no-run
BIN="${CARGO_TARGET_DIR:-target}/debug/blepay"

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
export BLEPAY_LISTEN="127.0.0.1:$PORT"
export BLEPAY_DATA_DIR="$WORK/data"
export BLEPAY_MASTER_KEYS="0:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
export BLEPAY_JWT_SECRET="schemathesis-jwt-secret-0123456789"
export BLEPAY_OPS_TOKEN="schemathesis-ops-token-0123456789"

"$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
stop() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap stop EXIT

for _ in $(seq 1 100); do
  curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$URL/healthz" >/dev/null

export BLEPAY_SERVER="$URL"
"$BIN" ops register-device --device-id 0102030405060708 --name "Schemathesis dispenser" \
  --price-per-unit 25 --unit-name litre --currency EUR >/dev/null
"$BIN" ops topup --user schemathesis-user --amount 100000 --idempotency-key st-topup >/dev/null
PHONE_TOKEN="$("$BIN" ops token --user schemathesis-user --ttl-secs 3600)"

cat >"$WORK/schemathesis.toml" <<EOF
[auth.openapi.phoneJwt]
bearer = "$PHONE_TOKEN"

[auth.openapi.opsToken]
bearer = "$BLEPAY_OPS_TOKEN"
EOF

status=0
# Run from the scratch dir: schemathesis leaves a .schemathesis/ folder in its working directory.
(cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$URL/openapi.json" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance \
  --max-examples "$EXAMPLES" --seed 1 --workers 1 --no-color --generation-database none) || status=$?

if [[ $status -ne 0 ]]; then
  echo "== schemathesis failed ($status); the server's log:" >&2
  tail -n 50 "$WORK/server.log" >&2
fi
exit "$status"
