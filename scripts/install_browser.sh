#!/usr/bin/env bash
# Installs Debian's Chromium for the console's browser tests when no Chromium is on the
# machine. Without apt-get, or without root (and no sudo), it says so and leaves the
# tests to skip (they fail instead when CI is set).
set -euo pipefail
for browser in chromium chromium-browser; do
  if command -v "$browser" >/dev/null 2>&1; then exit 0; fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no Chromium, and no apt-get to install it: the console's browser tests will skip" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "no Chromium, and not root to install it: the console's browser tests will skip" >&2
    exit 0
  fi
  sudo="sudo"
fi
echo "installing Debian's chromium for the console's browser tests"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
