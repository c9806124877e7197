#!/usr/bin/env bash
# Everything the tests need on a fresh machine. The portal's browser tests drive Debian's Chromium
# (/usr/bin/chromium) and need a CJK font to render Chinese: whichever is missing is installed with
# apt-get (as root, or through sudo). Then a venv with govnode and its test extras (Playwright for
# Python, which uses that Chromium and downloads no browser).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
[ -x "${GOVNODE_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
fc-list :lang=zh 2>/dev/null | grep -q . || missing+=(fonts-noto-cjk)
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "setup: install ${missing[*]} with this system's package manager (or point GOVNODE_CHROMIUM at a Chromium)" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: run as root, or install sudo, to apt-get install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

python3 -m venv .venv
.venv/bin/pip install -e '.[test]'
