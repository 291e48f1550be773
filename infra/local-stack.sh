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
#   BLEPAY_LOCAL_STATE     state dir: logs, pids, env files (default target/local-stack)
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

stop() {
  for name in emulator dynamodb; do
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
    if curl -s -o /dev/null "$url"; then return 0; fi
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

# --- the table --------------------------------------------------------------------------------
echo "building the functions (debug profile)"
(cd "$ROOT" && cargo build --quiet -p blepay-lambda --bins)
if (cd "$ROOT" && cargo run --quiet -p blepay --features dynamodb -- ops --help 2>/dev/null | grep -q create-table); then
  echo "creating table $TABLE with blepay ops create-table"
  (cd "$ROOT" && env BLEPAY_DYNAMODB_TABLE="$TABLE" BLEPAY_DYNAMODB_ENDPOINT="$ENDPOINT" \
    AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=blepaylocal AWS_SECRET_ACCESS_KEY=blepaylocal \
    cargo run --quiet -p blepay --features dynamodb -- ops create-table)
else
  # Fallback while `blepay ops create-table` does not exist: the same definition as template.yaml,
  # with boto3 (installed with aws-sam-cli).
  echo "creating table $TABLE with boto3"
  "$BLEPAY_TOOLS_BIN/python" - "$ENDPOINT" "$TABLE" <<'PY'
import sys, boto3
endpoint, table = sys.argv[1], sys.argv[2]
ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="blepaylocal", aws_secret_access_key="blepaylocal")
ddb.create_table(
    TableName=table, BillingMode="PAY_PER_REQUEST",
    AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in
                          [("pk", "S"), ("sk", "S"), ("due_pk", "S"), ("due_at", "N")]],
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    GlobalSecondaryIndexes=[{"IndexName": "due", "Projection": {"ProjectionType": "ALL"},
        "KeySchema": [{"AttributeName": "due_pk", "KeyType": "HASH"},
                      {"AttributeName": "due_at", "KeyType": "RANGE"}]}])
ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
PY
fi

# --- the functions under the emulator ---------------------------------------------------------
echo "starting cargo lambda watch on 127.0.0.1:$PORT"
(cd "$ROOT/functions/blepay-lambda" && exec setsid cargo lambda watch --ignore-changes -A 127.0.0.1 -P "$PORT" \
  --env-file "$STATE/functions.env") >"$STATE/emulator.log" 2>&1 &
echo $! >"$STATE/emulator.pid"
for fn in blepay-ops-fn blepay-verify-fn blepay-device-fn; do
  wait_for "http://127.0.0.1:$PORT/lambda-url/$fn/healthz" "$fn" "$STATE/emulator.log" 300
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
