#!/usr/bin/env bash
# Install the browser the Playwright tests drive: Debian's chromium at /usr/bin/chromium.
# Playwright never downloads a browser here (the tests pass executable_path), so this is the only
# browser install. Nothing happens when chromium is already present; without root the browser
# tests skip (or fail under ORCHESTRATOR_REQUIRE_SERVICES) rather than this script failing.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium is missing and this is not root: browser tests will not run" >&2
  echo "(install it with: sudo apt-get install chromium)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and apt-get is not available: browser tests will not run" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
