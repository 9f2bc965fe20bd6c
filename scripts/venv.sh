#!/usr/bin/env bash
# Make (or repair) the virtualenv `make install` installs into: scripts/venv.sh PYTHON VENV.
# A .venv whose python or pip does not run (a half-made one, from an interrupted run or a Python upgrade)
# is removed and made again. Debian ships `venv` without ensurepip unless python3-venv is installed: as
# root with apt this installs it, otherwise it says in one line what to install.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if ! command -v "$python" >/dev/null; then
    echo "tradebus needs Python 3.11+: install it (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tradebus needs Python 3.11+")'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    exit 0
fi
if [ -e "$venv" ]; then
    echo "$venv is incomplete (no working python or pip): making it again" >&2
    rm -rf "$venv"
fi

if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing python$version-venv (Python's venv needs it on Debian)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python$version-venv" >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python$version-venv" >/dev/null; }
    else
        echo "Python's venv module is missing: install it (Debian: sudo apt-get install python$version-venv)" >&2
        exit 1
    fi
fi

if ! "$python" -m venv "$venv"; then
    rm -rf "$venv"
    echo "could not make $venv with $python -m venv (see above)" >&2
    exit 1
fi
