#!/usr/bin/env bash
# The operator console (/ops/) end to end in headless Chromium (tests/tests/api/console.rs, the
# harness in tests/src/browser.rs): installs Debian's chromium and chromium-driver with apt when
# chromedriver is not on PATH yet (apt-get update first; sudo only when not root), then runs the
# console tests, #[ignore]d elsewhere, with --include-ignored. Debug profile, like .ci/run.
#
#   .ci/browser.sh                      # install if needed, run the console tests
#   .ci/browser.sh --install-only       # only install
#   BLEPAY_SCREENSHOTS=1 .ci/browser.sh # also write docs/dashboard/*.png from the demo fleet
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromedriver >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1; then
  echo "installing Debian's chromium, chromium-driver and jq (apt)" >&2
  SUDO=()
  if [[ "$(id -u)" -ne 0 ]]; then SUDO=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q >&2
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver jq >&2
fi
echo "== browser: $(chromium --version 2>/dev/null || echo 'chromium: not on PATH'); $(chromedriver --version)"

if [[ "${1:-}" == "--install-only" ]]; then
  exit 0
fi

# `--workspace`: the feature resolution of the README's test command, so this reuses its build.
cargo test --locked --workspace --test api console:: -- --include-ignored
