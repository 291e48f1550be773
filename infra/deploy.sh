#!/usr/bin/env bash
# Build and deploy blepay to AWS with SAM.
#
#   infra/deploy.sh [--stack NAME] [--region REGION] [--currency EUR] [--alarm-topic ARN]
#                   [--stripe-file stripe.json] [--wechatpay-file wechatpay.json]
#
# --stripe-file / --wechatpay-file: a payment provider's JSON document (docs/topups.md), stored as
# the secret `<stack>/stripe` / `<stack>/wechatpay` (created, or a new version put) and passed as
# StripeSecretArn / WechatPaySecretArn. Without them, an existing `<stack>/stripe` /
# `<stack>/wechatpay` secret (an earlier deploy's) is passed as it is; no secret = not offered.
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
STRIPE_FILE=""
WECHATPAY_FILE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stack) STACK="$2"; shift 2 ;;
    --region) REGION="$2"; shift 2 ;;
    --currency) CURRENCY="$2"; shift 2 ;;
    --alarm-topic) ALARM_TOPIC="$2"; shift 2 ;;
    --stripe-file) STRIPE_FILE="$2"; shift 2 ;;
    --wechatpay-file) WECHATPAY_FILE="$2"; shift 2 ;;
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

# A provider's document as the secret <stack>/<name>: its ARN on stdout. The document goes in by
# file (never on argv, never printed).
provider_secret() {
  local name="$STACK/$1" file="$2" arn
  [[ -r "$file" ]] || { echo "cannot read $file" >&2; exit 2; }
  if arn="$(aws secretsmanager describe-secret --secret-id "$name" --query ARN --output text 2>/dev/null)"; then
    aws secretsmanager put-secret-value --secret-id "$arn" --secret-string "file://$file" >/dev/null
  else
    arn="$(aws secretsmanager create-secret --name "$name" \
      --description "blepay $1 provider document (docs/topups.md) for stack $STACK" \
      --secret-string "file://$file" --query ARN --output text)"
  fi
  echo "$arn"
}
existing_secret() {
  aws secretsmanager describe-secret --secret-id "$STACK/$1" --query ARN --output text 2>/dev/null || true
}
PROVIDERS=()
for p in stripe:StripeSecretArn:"$STRIPE_FILE" wechatpay:WechatPaySecretArn:"$WECHATPAY_FILE"; do
  IFS=: read -r name param file <<<"$p"
  if [[ -n "$file" ]]; then
    arn="$(provider_secret "$name" "$file")"
  else
    arn="$(existing_secret "$name")"
  fi
  if [[ -n "$arn" ]]; then
    PROVIDERS+=("$param=$arn")
  fi
done

cd "$ROOT/infra"
sam build --template-file template.yaml --beta-features
sam deploy --stack-name "$STACK" --region "$REGION" \
  --parameter-overrides "MasterKeysSecretArn=$SECRET_ARN" "Currency=$CURRENCY" "AlarmTopicArn=$ALARM_TOPIC" \
  ${PROVIDERS[@]+"${PROVIDERS[@]}"}

aws cloudformation describe-stacks --stack-name "$STACK" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output table
