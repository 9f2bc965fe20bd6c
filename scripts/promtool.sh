#!/usr/bin/env bash
# Make sure promtool (Debian's prometheus package) is installed: tests/unit/test_monitoring.py checks the
# Prometheus config and alert rules with it and unit-tests the alerts. Idempotent. Used by `make test`.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

if command -v promtool >/dev/null; then
  echo "promtool: $(promtool --version 2>&1 | head -1)"
  exit 0
fi
echo "promtool: installing Debian's prometheus package (no recommends; its service is not started)"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "promtool: $(promtool --version 2>&1 | head -1)"
