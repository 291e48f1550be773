#!/usr/bin/env bash
# The dependency graph is the architecture: every "must not depend on" row of ARCHITECTURE.md's
# codemap, checked with `cargo tree`. One row per line below:
#   crate | cargo tree flags | forbidden crates (extended regex over crate names)
# A row fails when a forbidden crate appears anywhere in that crate's tree for those edge kinds.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=$(cat <<'ROWS'
blepay-core           | -e normal --no-default-features | tokio|mio|hyper|axum|tonic|prost|rusqlite|aws-.*|rand
blepay-core           | -e normal --features std        | tokio|mio|hyper|axum|tonic|prost|rusqlite|aws-.*|rand
blepay-proto          | -e normal --no-default-features | tokio|mio|hyper|axum|tonic|rusqlite|aws-.*|serde_json
blepay-store          | -e normal                       | rusqlite|libsqlite3-sys|aws-.*|prost|axum|hyper|tonic|hmac|blepay-proto
blepay-sqlite         | -e normal                       | aws-.*|prost|axum|hyper|tonic|hmac|blepay-proto|blepay-service
blepay-dynamodb       | -e normal                       | rusqlite|libsqlite3-sys|prost|axum|tonic|blepay-proto|blepay-service
blepay-service        | -e normal                       | rusqlite|libsqlite3-sys|clap|aws-sdk-.*|blepay-sqlite|blepay-dynamodb
blepay-lambda         | -e normal                       | rusqlite|libsqlite3-sys|clap|blepay-sqlite
blepay                | -e normal                       | aws-sdk-.*|aws-config|aws-smithy-.*|blepay-dynamodb|blepay-lambda
blepay-device-client  | -e all --no-default-features    | tokio|mio|hyper|axum|tonic|reqwest|ureq|rusqlite|aws-.*|blepay-service|blepay-store|blepay-sqlite|blepay-dynamodb
blepay-device-client  | -e all --features std           | tokio|mio|hyper|axum|tonic|reqwest|rusqlite|aws-.*|blepay-service|blepay-store|blepay-sqlite|blepay-dynamodb
ROWS
)

tree() { # crate, flags...
  local crate=$1; shift
  # shellcheck disable=SC2068
  local out
  if ! out=$(cargo tree --locked -p "$crate" $@ --prefix none --format '{p}'); then
    echo "deps.sh: cargo tree failed for $crate $*" >&2
    return 1
  fi
  awk '{print $1}' <<< "$out" | sort -u
}

# The check must be able to see what it forbids: the CLI links SQLite and the service axum.
if ! tree blepay -e normal | grep -qx rusqlite || ! tree blepay-service -e normal | grep -qx axum; then
  echo "deps.sh: cargo tree did not show rusqlite under blepay: the check is blind" >&2
  exit 1
fi

fail=0
while IFS='|' read -r crate flags forbidden; do
  trim() { sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' <<< "$1"; }
  crate=$(trim "$crate"); flags=$(trim "$flags"); forbidden=$(trim "$forbidden")
  [ -z "$crate" ] && continue
  # shellcheck disable=SC2086
  names=$(tree "$crate" $flags) || { fail=1; continue; }
  found=$(grep -Ex "($forbidden)" <<< "$names" || true)
  if [ -n "$found" ]; then
    echo "FAIL $crate ($flags) depends on: $(echo "$found" | tr '\n' ' ')" >&2
    fail=1
  else
    echo "ok   $crate ($flags) has none of: $forbidden"
  fi
done <<< "$rows"

# One simulated machine: frames are sealed and opened by blepay-proto and the device client only
# (plus three byte-level tests, listed here by path: answer bytes, a Lambda fixture, and frames
# whose operation does not decode, which the device client cannot build).
allowed='^(proto/|device-client/src/|tests/tests/api/device_link\.rs:|functions/blepay-lambda/tests/support/mod\.rs:|functions/blepay-service/tests/frames\.rs:)'
stray=$(git grep -nE '\b(seal_request|open_response)\(' -- '*.rs' | grep -Ev "$allowed" || true)
if [ -n "$stray" ]; then
  echo "FAIL frames sealed/opened outside the device client (build the machine on blepay-device-client):" >&2
  echo "$stray" >&2
  fail=1
else
  echo "ok   frames are sealed/opened only by blepay-proto and blepay-device-client"
fi
exit $fail
