#!/usr/bin/env bash
# Delete a blepay stack.
#
#   infra/teardown.sh [--stack NAME] [--region REGION] [--delete-data]
#
# The DynamoDB table has deletion protection and DeletionPolicy Retain, and the master-key secret
# is not part of the stack: by default both survive (money and keys are not deleted by accident).
# --delete-data also removes them: the table (protection turned off first) and the secret (after
# Secrets Manager's 7-day recovery window).
set -euo pipefail

STACK=blepay
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
DELETE_DATA=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stack) STACK="$2"; shift 2 ;;
    --region) REGION="$2"; shift 2 ;;
    --delete-data) DELETE_DATA=true; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$REGION" ]]; then
  echo "set --region (or AWS_REGION)" >&2
  exit 2
fi
export AWS_REGION="$REGION"

TABLE="$(aws cloudformation describe-stacks --stack-name "$STACK" \
  --query "Stacks[0].Outputs[?OutputKey=='TableName'].OutputValue" --output text)"

aws cloudformation delete-stack --stack-name "$STACK"
aws cloudformation wait stack-delete-complete --stack-name "$STACK"
echo "stack $STACK deleted"

if [[ "$DELETE_DATA" == true ]]; then
  aws dynamodb update-table --table-name "$TABLE" --no-deletion-protection-enabled >/dev/null
  aws dynamodb delete-table --table-name "$TABLE" >/dev/null
  aws secretsmanager delete-secret --secret-id "$STACK/master-keys" --recovery-window-in-days 7 >/dev/null
  echo "table $TABLE deleted; secret $STACK/master-keys scheduled for deletion in 7 days"
else
  echo "kept: table $TABLE (deletion protection on) and secret $STACK/master-keys"
fi
