#!/usr/bin/env bash
# Everything the app and its tests need, on a fresh Debian machine: a venv with the pinned
# packages, and Debian's chromium for the browser tests (never `playwright install`).
#   ./install.sh                 # into .venv
#   VENV=.venv-ci ./install.sh   # into another venv (CI)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"

python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -r requirements-dev.txt

# chromium for the browser tests; fonts for speech bubbles (licences: docs/FONTS.md)
if [ ! -x /usr/bin/chromium ] || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
   || [ ! -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium chromium-driver fonts-dejavu-core fonts-noto-cjk
fi
echo "installed: $VENV (python $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')), chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}')"
