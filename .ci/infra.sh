#!/usr/bin/env bash
# CI for infra/ and the Lambda functions:
#   1. the SAM template passes cfn-lint and `sam validate --lint` (offline, no credentials);
#   2. its permissions are least-privilege (infra/test_template.py: each function's DynamoDB
#      actions are the ones its code sends, the operator role is the only way to the ops routes);
#   3. the Lambda binaries answer the HTTP contract under the cargo-lambda emulator, on DynamoDB
#      Local (infra/local-stack.sh --detach, then the emulator tests, #[ignore]d elsewhere).
# The recorded-event tests (functions/blepay-lambda/tests/events.rs) run with `cargo test`.
# Uses the debug profile only, like the rest of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 CARGO_TERM_COLOR=never

eval "$(infra/tools.sh --export)"

echo "== infra: cfn-lint $(cfn-lint --version | awk '{print $2}')"
cfn-lint infra/template.yaml

echo "== infra: sam validate --lint ($(sam --version))"
sam validate --lint -t infra/template.yaml --region us-east-1

echo "== infra: permissions (infra/test_template.py)"
"$BLEPAY_TOOLS_BIN/python3" infra/test_template.py

if command -v checkov >/dev/null 2>&1; then
  echo "== infra: checkov (advisory)"
  checkov --skip-download --quiet --compact -f infra/template.yaml --framework cloudformation || true
fi

echo "== lambda: the functions under cargo lambda watch, on DynamoDB Local"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export BLEPAY_LOCAL_STATE="$PWD/target/ci-local-stack"
export BLEPAY_LOCAL_PORT="${BLEPAY_LOCAL_PORT:-$(free_port)}"
export BLEPAY_DYNAMODB_PORT="${BLEPAY_DYNAMODB_PORT:-$(free_port)}"
trap 'infra/local-stack.sh --stop >/dev/null 2>&1 || true' EXIT
infra/local-stack.sh --detach
# shellcheck disable=SC1091
source "$BLEPAY_LOCAL_STATE/local.env"
# `--workspace` resolves features as .ci/run's `cargo test --workspace` did, so the emulator test
# links what that step built instead of rebuilding the AWS SDK with `-p blepay-lambda`'s features.
cargo test --locked --workspace --test emulator -- --include-ignored
