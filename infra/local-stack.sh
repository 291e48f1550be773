#!/usr/bin/env bash
# The local loop: Amazon DynamoDB Local + the Lambda functions under the cargo-lambda emulator,
# all on 127.0.0.1, nothing leaving the machine.
#
#   infra/local-stack.sh            # start, print the URLs, run until Ctrl-C
#   infra/local-stack.sh --detach   # start, print the URLs and an env file to source, return
#   infra/local-stack.sh --stop     # stop a detached stack
#
# Environment (all optional):
#   BLEPAY_LOCAL_PORT      emulator port (default 9000)
#   BLEPAY_DYNAMODB_PORT   DynamoDB Local port (default 8000)
#   BLEPAY_LOCAL_STATE     state dir: logs (one per function), pids, env files (default target/local-stack)
#   BLEPAY_TOOLS_DIR       where the pinned tools are installed (default ~/.cache/blepay-tools)
#
# Needs: cargo, python3 (venv + pip: cargo-lambda), npm and Java 17+ (DynamoDB Local).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${BLEPAY_LOCAL_STATE:-$ROOT/target/local-stack}"
PORT="${BLEPAY_LOCAL_PORT:-9000}"
DDB_PORT="${BLEPAY_DYNAMODB_PORT:-8000}"
TABLE=blepay-local
MODE="${1:-foreground}"

FUNCTIONS="blepay-ops-fn blepay-verify-fn blepay-device-fn blepay-sweeper-fn"

stop() {
  for name in $FUNCTIONS emulator dynamodb; do
    local pidfile="$STATE/$name.pid"
    if [[ -f "$pidfile" ]]; then
      local pid
      pid="$(cat "$pidfile")"
      # Each was started as its own process group (setsid): end the group, children included.
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      rm -f "$pidfile"
    fi
  done
}

case "$MODE" in
  --stop) stop; echo "local stack stopped"; exit 0 ;;
  --detach | foreground) ;;
  *) echo "usage: $0 [--detach | --stop]" >&2; exit 2 ;;
esac

mkdir -p "$STATE"
stop # a previous detached run, if any

wait_for() { # url, what, log, tries
  local url="$1" what="$2" log="$3" tries="${4:-120}"
  for _ in $(seq "$tries"); do
    if curl -s -m 5 -o /dev/null "$url"; then return 0; fi
    sleep 1
  done
  echo "$what did not come up at $url; last lines of $log:" >&2
  tail -n 40 "$log" >&2 || true
  stop
  exit 1
}

# --- tools ------------------------------------------------------------------------------------
eval "$("$ROOT/infra/tools.sh" --export)"
eval "$("$ROOT/.ci/dynamodb-local.sh" --export)"

# --- DynamoDB Local ---------------------------------------------------------------------------
# -sharedDb: one database whatever the credentials/region of the client (the CLI that creates the
# table and the functions then see the same tables). -disableTelemetry: nothing leaves the host.
echo "starting DynamoDB Local on 127.0.0.1:$DDB_PORT"
(cd "$DYNAMODB_LOCAL_DIR" && exec setsid java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
  -inMemory -sharedDb -disableTelemetry -port "$DDB_PORT") >"$STATE/dynamodb.log" 2>&1 &
echo $! >"$STATE/dynamodb.pid"
wait_for "http://127.0.0.1:$DDB_PORT" "DynamoDB Local" "$STATE/dynamodb.log" 60

# --- secrets and configuration for this run ---------------------------------------------------
rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
MASTER_KEYS="0:$(rand_hex 32)"
JWT_SECRET="$(rand_hex 24)"
OPS_TOKEN="$(rand_hex 24)"
# A Stripe test configuration (docs/topups.md): its webhook secret signs the emulator test's
# notifications; its API base is a closed loopback port (nothing leaves the machine).
STRIPE_WEBHOOK_SECRET="whsec_$(rand_hex 24)"
ENDPOINT="http://127.0.0.1:$DDB_PORT"

umask 077
cat >"$STATE/functions.env" <<ENV
BLEPAY_DYNAMODB_TABLE=$TABLE
BLEPAY_DYNAMODB_ENDPOINT=$ENDPOINT
BLEPAY_MASTER_KEYS=$MASTER_KEYS
BLEPAY_JWT_SECRET=$JWT_SECRET
BLEPAY_OPS_TOKEN=$OPS_TOKEN
BLEPAY_STRIPE='{"secretKey":"sk_test_local","webhookSecrets":["$STRIPE_WEBHOOK_SECRET"],"apiBase":"http://127.0.0.1:9"}'
AWS_REGION=us-east-1
AWS_ACCESS_KEY_ID=blepaylocal
AWS_SECRET_ACCESS_KEY=blepaylocal
AWS_EC2_METADATA_DISABLED=true
RUST_LOG=info
ENV

# --- the binaries: the workspace's test build -------------------------------------------------
# `cargo test --workspace` builds the function binaries and the CLI (with its `dynamodb` feature)
# under the one feature resolution the whole workspace shares, so after the README's test command
# (and in .ci/run) this is up to date and builds nothing. `cargo build -p blepay-lambda`, or
# letting `cargo lambda watch` build, would resolve features for that package alone and rebuild
# about 260 crates, the AWS SDK among them.
echo "building the functions and the CLI (debug profile, the workspace's test build)"
(cd "$ROOT" && cargo test --quiet --locked --workspace --no-run)
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
[[ "$BIN_DIR" = /* ]] || BIN_DIR="$ROOT/$BIN_DIR"

# --- the table --------------------------------------------------------------------------------
echo "creating table $TABLE with blepay ops create-table"
env BLEPAY_DYNAMODB_TABLE="$TABLE" BLEPAY_DYNAMODB_ENDPOINT="$ENDPOINT" \
  AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=blepaylocal AWS_SECRET_ACCESS_KEY=blepaylocal \
  "$BIN_DIR/blepay" ops create-table

# --- the functions under the emulator ---------------------------------------------------------
# `cargo lambda watch --only-lambda-apis` serves the Lambda runtime API and the function URLs and
# starts nothing; each function binary is started here with the environment cargo-lambda gives
# the functions it starts itself (its runtime API at /.rt/<function>).
echo "starting cargo lambda watch (runtime API and function URLs) on 127.0.0.1:$PORT"
(cd "$ROOT/functions/blepay-lambda" && exec setsid cargo lambda watch --only-lambda-apis \
  -A 127.0.0.1 -P "$PORT") >"$STATE/emulator.log" 2>&1 &
echo $! >"$STATE/emulator.pid"
# (The emulator's `/` waits for a default function; only its port is checked.)
for _ in $(seq 60); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 1
done
for fn in $FUNCTIONS; do
  (
    set -a
    # shellcheck disable=SC1091
    source "$STATE/functions.env"
    set +a
    export AWS_LAMBDA_FUNCTION_NAME="$fn" AWS_LAMBDA_FUNCTION_VERSION=1 \
      AWS_LAMBDA_FUNCTION_MEMORY_SIZE=4096 AWS_LAMBDA_MAX_CONCURRENCY=1 \
      AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$PORT/.rt/$fn"
    exec setsid "$BIN_DIR/$fn"
  ) >"$STATE/$fn.log" 2>&1 &
  echo $! >"$STATE/$fn.pid"
done
for fn in blepay-ops-fn blepay-verify-fn blepay-device-fn; do
  wait_for "http://127.0.0.1:$PORT/lambda-url/$fn/healthz" "$fn" "$STATE/$fn.log" 60
done

URL="http://127.0.0.1:$PORT"
cat >"$STATE/local.env" <<ENV
export BLEPAY_LAMBDA_URL=$URL
export BLEPAY_JWT_SECRET=$JWT_SECRET
export BLEPAY_OPS_TOKEN=$OPS_TOKEN
export BLEPAY_STRIPE_WEBHOOK_SECRET=$STRIPE_WEBHOOK_SECRET
export BLEPAY_DYNAMODB_ENDPOINT=$ENDPOINT
export BLEPAY_DYNAMODB_TABLE=$TABLE
ENV

cat <<MSG

blepay local stack is up (DynamoDB Local $ENDPOINT, table $TABLE; logs in $STATE).
  phone     $URL/lambda-url/blepay-verify-fn/v1/verify | /v1/pay | /v1/sessions/{id} | /v1/wallet
            (Authorization: Bearer <HS256 JWT signed with BLEPAY_JWT_SECRET>)
  operator  $URL/lambda-url/blepay-ops-fn/v1/ops/devices | /v1/ops/wallets/{user}/topup | ...
            (Authorization: Bearer \$BLEPAY_OPS_TOKEN)
  machine   $URL/lambda-url/blepay-device-fn/v1/device   (plain HTTP)
  sweeper   cargo lambda invoke -A 127.0.0.1 -P $PORT blepay-sweeper-fn --data-ascii '{}'
Secrets for this run: source $STATE/local.env
MSG

if [[ "$MODE" == "--detach" ]]; then
  echo "stop with: $0 --stop"
  exit 0
fi
trap 'stop; echo; echo "local stack stopped"' EXIT INT TERM
echo "Ctrl-C stops it."
wait
