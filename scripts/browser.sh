#!/usr/bin/env bash
# Make sure Debian's headless browser for the Flower browser test is installed (chromium, chromium-driver).
# Idempotent: does nothing when both are there. Used by `make test`.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "browser: chromium and chromedriver are installed"
  exit 0
fi
echo "browser: installing chromium and chromium-driver"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
echo "browser: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
