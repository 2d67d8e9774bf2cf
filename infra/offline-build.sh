#!/usr/bin/env bash
# Builds the local cluster's images on a machine that reaches the package registries (PyPI,
# Debian) but no container registry, like this project's CI machines. Then
#   docker compose -f docker-compose.yml -f infra/compose.offline.yml up -d --wait
# starts the stack from them (no pull, no build).
#
#   1. vae-base:bookworm  Debian bookworm with its Python 3.11 (debootstrap + docker import), once
#   2. infra/build-extra/ the CPU torch wheel (the default index serves the CUDA build) and pip's
#                         CA bundle, for the build only (never in the image)
#   3. vae-service:$VAE_IMAGE_TAG (default dev) and vae-postgres:offline, each built only when what
#                         it is built from changed (a hash of its context, kept as an image label)
#
# Needs a running Docker engine, debootstrap (infra/machine-setup.sh installs both) and pip (the
# project's venv). Takes about 10 minutes the first time on 2 cores, seconds after.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=vae-base:bookworm
TAG="vae-service:${VAE_IMAGE_TAG:-dev}"
LABEL=vae.build-context
say() { echo "offline-build: $*" >&2; }

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    say "debootstrap → $BASE (a few minutes)"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
        http://deb.debian.org/debian >/dev/null
    tar -C "$root" -c . | docker import - "$BASE" >/dev/null
fi

mkdir -p infra/build-extra/wheels
if ! ls infra/build-extra/wheels/torch-2.13.0*.whl >/dev/null 2>&1; then
    python3 -m pip download -q torch==2.13.0 --no-deps -d infra/build-extra/wheels
fi
cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
if [ -n "$cert" ] && [ -f "$cert" ]; then
    cp "$cert" infra/build-extra/ca.crt
fi

context_hash() {  # DOCKERFILE INPUT...: the base image's id and every file the build reads
    { docker image inspect -f '{{.Id}}' "$BASE"
      find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

build_if_changed() {  # TAG DOCKERFILE INPUT...
    local tag=$1 dockerfile=$2 wanted found
    wanted=$(context_hash "${@:2}")
    found=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$tag" 2>/dev/null || true)
    if [ "$found" = "$wanted" ]; then
        say "$tag is up to date"
        return
    fi
    say "building $tag"
    docker build -q -f "$dockerfile" --build-arg "BASE_IMAGE=$BASE" --label "$LABEL=$wanted" -t "$tag" . >/dev/null
}

build_if_changed "$TAG" infra/Dockerfile infra/requirements.lock infra/build-extra pyproject.toml README.md vae_service
build_if_changed vae-postgres:offline infra/offline/postgres.Dockerfile infra/offline
say "images ready: $TAG, vae-postgres:offline"
