#!/usr/bin/env bash
# Print a .env for `docker compose up`: .env.example with a fresh random secret in every empty value.
#   bash scripts/dotenv.sh > .env && chmod 600 .env
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import secrets

for line in open(".env.example", encoding="utf-8"):
    line = line.rstrip("\n")
    if line and not line.startswith("#") and line.endswith("="):
        line += secrets.token_urlsafe(32)  # URL-safe: passwords go into AMQP URLs
    print(line)
PY
