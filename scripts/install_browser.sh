#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the HTML report's browser test (tests/test_report_html.py), where
# absent. Needs root or sudo and Debian's package registry; without them it says so and the test is skipped.
set -uo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "install_browser: not root and no sudo: the HTML report test will be skipped" \
             "(apt-get install chromium chromium-driver to run it)" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null; then
    echo "install_browser: no apt-get: the HTML report test will be skipped" >&2
    exit 0
fi
echo "install_browser: installing Debian's chromium and chromium-driver"
$SUDO apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
    || echo "install_browser: apt-get failed: the HTML report test will be skipped" >&2
