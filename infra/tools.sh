#!/usr/bin/env bash
# Install the pinned infrastructure tools into a virtualenv (once), and print its bin directory.
#
#   eval "$(infra/tools.sh --export)"   # sets BLEPAY_TOOLS_BIN and puts it first on PATH
#   infra/tools.sh                      # prints the bin directory
#
# cfn-lint and aws-sam-cli check infra/template.yaml (offline, no credentials); cargo-lambda runs
# the functions locally (`cargo lambda watch`) and builds them for `sam build`. All from PyPI.
set -euo pipefail

CFN_LINT_VERSION=1.58.0
SAM_CLI_VERSION=1.170.0
CARGO_LAMBDA_VERSION=1.9.2

TOOLS_DIR="${BLEPAY_TOOLS_DIR:-$HOME/.cache/blepay-tools}"
VENV="$TOOLS_DIR/venv"
STAMP="$VENV/.installed-cfn-lint-$CFN_LINT_VERSION-sam-$SAM_CLI_VERSION-cargo-lambda-$CARGO_LAMBDA_VERSION"

if [[ ! -f "$STAMP" ]]; then
  echo "installing cfn-lint $CFN_LINT_VERSION, aws-sam-cli $SAM_CLI_VERSION, cargo-lambda $CARGO_LAMBDA_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "cfn-lint==$CFN_LINT_VERSION" "aws-sam-cli==$SAM_CLI_VERSION" "cargo-lambda==$CARGO_LAMBDA_VERSION" >&2
  touch "$STAMP"
fi

if [[ "${1:-}" == "--export" ]]; then
  printf 'export BLEPAY_TOOLS_BIN=%q\nexport PATH=%q:"$PATH"\n' "$VENV/bin" "$VENV/bin"
else
  echo "$VENV/bin"
fi
