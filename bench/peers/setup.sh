#!/usr/bin/env bash
# Idempotently create the two peer virtualenvs next to this script:
#   .venv-browsergym  (requirements-browsergym.txt: browsergym-miniwob + playwright 1.44 + miniwob pages)
#   .venv-miniwob     (requirements-miniwob.txt: miniwob 1.1.0 + selenium)
# A venv is rebuilt only when its stamp (requirements hash + python version) changes.
# Browsers are NOT downloaded ('playwright install' is never run): both peers use
# Debian's /usr/bin/chromium (+ /usr/bin/chromedriver for miniwob).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY="${PYTHON:-python3}"

if [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup.sh: installing Debian chromium-driver" >&2
    apt-get install -y -qq chromium-driver >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium-driver >/dev/null; }
  else
    echo "setup.sh: WARNING: /usr/bin/chromedriver missing (apt-get install chromium-driver)" >&2
  fi
fi
[ -x /usr/bin/chromium ] || echo "setup.sh: WARNING: /usr/bin/chromium missing (apt-get install chromium)" >&2

pyver="$("$PY" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')"
for peer in browsergym miniwob; do
  venv=".venv-$peer"
  req="requirements-$peer.txt"
  stamp="$venv/.asyncwebrl-stamp"
  want="$(sha256sum "$req" | cut -d' ' -f1) python-$pyver"
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup.sh: $venv up to date"
    continue
  fi
  echo "setup.sh: building $venv" >&2
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
done
