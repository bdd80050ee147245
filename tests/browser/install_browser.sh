#!/usr/bin/env bash
# Installs the browser the portal's browser tests use: Debian's chromium and chromium-driver.
# As root it installs them with apt-get; otherwise it prints what to run. It never downloads a
# browser from anywhere but the system's package repositories, and does nothing if both are there.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "browser tests: chromium and chromedriver are installed ($(/usr/bin/chromium --version 2>/dev/null | head -n1))"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser tests: no apt-get here. Install Chromium and its matching chromedriver so that" >&2
  echo "  /usr/bin/chromium and /usr/bin/chromedriver exist; until then the browser tests are SKIPPED." >&2
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "browser tests: chromium and chromedriver are missing, so the browser tests will be SKIPPED." >&2
  echo "  To install them, run as root:" >&2
  echo "    sudo apt-get update && sudo apt-get install -y chromium chromium-driver" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y chromium chromium-driver
echo "browser tests: installed $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
