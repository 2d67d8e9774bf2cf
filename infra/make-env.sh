#!/usr/bin/env bash
# Writes .env for the local cluster: .env.example with every `change-me` replaced by a random value
# of its own (the PostgreSQL password, the S3 secret, Ray's token and the API token each differ).
# An existing .env is kept: its secrets are what the stack's volumes were created with.
#
#   bash infra/make-env.sh [TARGET]      # default: .env at the repository root
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$root/.env}"
if [ -e "$target" ]; then
    echo "make-env: $target exists; kept (delete it to make new secrets, after docker compose down -v)" >&2
    exit 0
fi
umask 077  # the file holds secrets: readable by its owner only
while IFS= read -r line; do
    if [[ "$line" == *=change-me ]]; then
        line="${line%=change-me}=$(openssl rand -hex 24)"
    fi
    printf '%s\n' "$line"
done < "$root/.env.example" > "$target"
echo "make-env: wrote $target"
