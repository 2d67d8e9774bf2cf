#!/usr/bin/env bash
# Builds the local cluster's images on a machine that reaches the package registries (PyPI,
# Debian) but no container registry, like this project's CI machines. Then
#   docker compose -f docker-compose.yml -f infra/compose.offline.yml up -d --wait
# starts the stack from them (no pull, no build).
#
#   1. vae-base:bookworm  Debian bookworm with its Python 3.11 (debootstrap + docker import), once
#   2. infra/build-extra/ the CPU torch wheel (the default index serves the CUDA build) as a
#                         package index (simple/torch/) and pip's CA bundle, for the build only:
#                         served on 127.0.0.1:$VAE_BUILD_EXTRA_PORT (default 39517) while the
#                         images build (on the host's network), never copied into an image
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

root= server=
cleanup() {
    [ -z "$root" ] || rm -rf "$root"
    [ -z "$server" ] || kill "$server" 2>/dev/null || true
}
trap cleanup EXIT

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    say "debootstrap → $BASE (a few minutes)"
    root=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
        http://deb.debian.org/debian >/dev/null
    tar -C "$root" -c . | docker import - "$BASE" >/dev/null
fi

wheels=infra/build-extra/simple/torch  # a PEP 503 page: the server's listing of this folder
mkdir -p "$wheels"
if ! ls "$wheels"/torch-2.13.0*.whl >/dev/null 2>&1; then
    python3 -m pip download -q torch==2.13.0 --no-deps -d "$wheels"
fi
cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
if [ -n "$cert" ] && [ -f "$cert" ]; then
    cp "$cert" infra/build-extra/ca.crt
fi

# The build's extra inputs, served to the Dockerfile's RUNs (infra/with-build-extra.sh). A fixed
# port: the URL is a build argument, and a new one each time would rebuild every layer.
port=${VAE_BUILD_EXTRA_PORT:-39517}
extra_url="http://127.0.0.1:$port"
serve_extra() {
    python3 -m http.server "$port" --bind 127.0.0.1 --directory infra/build-extra >/dev/null 2>&1 &
    server=$!
    for _ in $(seq 50); do
        if python3 -c "import urllib.request as u; u.urlopen('$extra_url/simple/torch/', timeout=1)" 2>/dev/null; then
            return
        fi
        kill -0 "$server" 2>/dev/null || break
        sleep 0.2
    done
    say "could not serve infra/build-extra on 127.0.0.1:$port (in use? set VAE_BUILD_EXTRA_PORT)"
    exit 1
}

context_hash() {  # DOCKERFILE INPUT...: the base image's id and every file the build reads
    { docker image inspect -f '{{.Id}}' "$BASE"
      find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

build_if_changed() {  # TAG DOCKERFILE INPUT... (more `docker build` options: the array build_options)
    local tag=$1 dockerfile=$2 wanted found
    wanted=$(context_hash "${@:2}")
    found=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$tag" 2>/dev/null || true)
    if [ "$found" = "$wanted" ]; then
        say "$tag is up to date"
        return
    fi
    say "building $tag"
    docker build -q -f "$dockerfile" --build-arg "BASE_IMAGE=$BASE" "${build_options[@]}" \
        --label "$LABEL=$wanted" -t "$tag" . >/dev/null
}

build_options=(--network host --build-arg "BUILD_EXTRA_URL=$extra_url" --build-arg "TORCH_INDEX_URL=$extra_url/simple")
serve_extra
build_if_changed "$TAG" infra/Dockerfile infra/with-build-extra.sh infra/requirements.lock infra/build-extra pyproject.toml README.md vae_service
build_options=()
build_if_changed vae-postgres:offline infra/offline/postgres.Dockerfile infra/offline
say "images ready: $TAG, vae-postgres:offline"
