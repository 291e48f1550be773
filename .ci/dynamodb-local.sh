#!/usr/bin/env bash
# Install Amazon DynamoDB Local (1.25.1, from the npm package amplify-dynamodb-simulator, pinned) into
# the tools cache, if it is not there yet, and print the directory holding DynamoDBLocal.jar.
#
#   eval "$(.ci/dynamodb-local.sh --export)"   # sets DYNAMODB_LOCAL_DIR
#   .ci/dynamodb-local.sh                      # prints the directory
#
# The tests (blepay_dynamodb::testing) start it themselves, on loopback, with -disableTelemetry.
# Needs node/npm (install) and Java 17+ (run).
set -euo pipefail

VERSION=2.9.30
TOOLS_DIR="${BLEPAY_TOOLS_DIR:-$HOME/.cache/blepay-tools}"
PREFIX="$TOOLS_DIR/dynamodb-local"
JAR_DIR="$PREFIX/node_modules/amplify-dynamodb-simulator/emulator"
STAMP="$PREFIX/.installed-$VERSION"

if [[ ! -f "$STAMP" || ! -f "$JAR_DIR/DynamoDBLocal.jar" ]]; then
  echo "installing amplify-dynamodb-simulator@$VERSION (DynamoDB Local) into $PREFIX" >&2
  mkdir -p "$PREFIX"
  # --ignore-scripts: we only need the jar it ships; no install hook may reach the network.
  npm install --prefix "$PREFIX" --no-save --no-audit --no-fund --ignore-scripts \
    "amplify-dynamodb-simulator@$VERSION" >&2
  if [[ ! -f "$JAR_DIR/DynamoDBLocal.jar" || ! -d "$JAR_DIR/DynamoDBLocal_lib" ]]; then
    echo "amplify-dynamodb-simulator@$VERSION did not ship emulator/DynamoDBLocal.jar" >&2
    exit 1
  fi
  touch "$STAMP"
fi

if ! command -v java >/dev/null 2>&1; then
  echo "warning: java is not on PATH; DynamoDB Local needs Java 17+" >&2
fi

if [[ "${1:-}" == "--export" ]]; then
  printf 'export DYNAMODB_LOCAL_DIR=%q\n' "$JAR_DIR"
else
  echo "$JAR_DIR"
fi
