#!/usr/bin/env bash
# Build and deploy blepay to AWS with SAM.
#
#   infra/deploy.sh [--stack NAME] [--region REGION] [--currency EUR] [--alarm-topic ARN]
#
# First run: creates the master-key secret `<stack>/master-keys` in Secrets Manager with a random
# 32-byte key version 0 (`0:<hex64>`), unless it exists. The key never appears on screen or in the
# template; the functions read it once per cold start. Needs AWS credentials (the usual chain),
# the AWS CLI, cargo, and the pinned tools (infra/tools.sh: aws-sam-cli, cargo-lambda with zig).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK=blepay
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
CURRENCY=EUR
ALARM_TOPIC=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stack) STACK="$2"; shift 2 ;;
    --region) REGION="$2"; shift 2 ;;
    --currency) CURRENCY="$2"; shift 2 ;;
    --alarm-topic) ALARM_TOPIC="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$REGION" ]]; then
  echo "set --region (or AWS_REGION)" >&2
  exit 2
fi
export AWS_REGION="$REGION" SAM_CLI_TELEMETRY=0
command -v aws >/dev/null || { echo "the AWS CLI is needed (aws)" >&2; exit 1; }
eval "$("$ROOT/infra/tools.sh" --export)"

SECRET_NAME="$STACK/master-keys"
if ! SECRET_ARN="$(aws secretsmanager describe-secret --secret-id "$SECRET_NAME" --query ARN --output text 2>/dev/null)"; then
  echo "creating the master-key secret $SECRET_NAME (random key version 0)"
  KEY="0:$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  # Passed through a file descriptor, not argv, so it never shows in the process list.
  SECRET_ARN="$(aws secretsmanager create-secret --name "$SECRET_NAME" \
    --description "blepay master keys (version:hex64[,...]) for stack $STACK" \
    --secret-string "file:///dev/stdin" --query ARN --output text <<<"$KEY")"
  unset KEY
fi

cd "$ROOT/infra"
sam build --template-file template.yaml --beta-features
sam deploy --stack-name "$STACK" --region "$REGION" \
  --parameter-overrides "MasterKeysSecretArn=$SECRET_ARN" "Currency=$CURRENCY" "AlarmTopicArn=$ALARM_TOPIC"

aws cloudformation describe-stacks --stack-name "$STACK" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output table
