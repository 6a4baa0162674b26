#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine: system packages, a
# virtualenv in .venv, and every asyncwebrl distribution installed editable.
# A second run only checks stamps and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# tests/security/test_browser_isolation.py: Chromium in a network namespace (ip), walled by nftables.
[ -x /usr/sbin/nft ] || command -v nft >/dev/null 2>&1 || missing+=(nftables)
[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# Without any font, page text renders as empty boxes in screenshots.
fc-list 2>/dev/null | grep -q . || missing+=(fonts-liberation)
# Debian's python3 ships venv separately.
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]} with apt-get"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The stamp is the hash of everything that decides what the venv holds.
want=$(cat requirements-dev.txt libs/common/pyproject.toml services/*/pyproject.toml | sha256sum | cut -c1-16)
stamp="$VENV/.asyncwebrl-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
echo "bootstrap: preparing $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip setuptools wheel
editables=(-e "libs/common[models]")
for svc in services/*/; do
  editables+=(-e "$svc")
done
"$VENV/bin/pip" install -q -r requirements-dev.txt "${editables[@]}"
echo "$want" > "$stamp"
echo "bootstrap: ready"
