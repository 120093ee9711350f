#!/usr/bin/env bash
# Install Debian's Chromium for the end-to-end tests (tests/e2e) when it is missing.
# Playwright drives /usr/bin/chromium; `playwright install` is never used (it downloads).
# Never fails the build: without root or apt-get it says why and exits 0, and the e2e
# tests then skip with the reason.
set -u

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_chromium: $CHROMIUM is already installed."
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_chromium: $CHROMIUM is missing and this is not root; the e2e tests will" \
        "be skipped. Install it with: sudo apt-get install chromium"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: $CHROMIUM is missing and apt-get is not available; the e2e" \
        "tests will be skipped. Install Chromium with this system's package manager."
    exit 0
fi
echo "install_chromium: installing Debian's chromium (apt-get)..."
if apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; then
    echo "install_chromium: done: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
    echo "install_chromium: apt-get could not install chromium (offline?); the e2e tests" \
        "will be skipped."
fi
exit 0
