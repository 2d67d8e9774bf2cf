#!/bin/sh
# with-build-extra COMMAND...: COMMAND (a pip install in infra/Dockerfile) with the build's extra
# inputs, when BUILD_EXTRA_URL says where infra/offline-build.sh serves infra/build-extra/:
#   ca.crt          the CA bundle for pip and uv (PIP_CERT, SSL_CERT_FILE), fetched into a
#                   temporary folder and deleted after, so the RUN's layer never holds it
#   simple/torch/   torch wheels, a package index pip reads when TORCH_INDEX_URL points there
# Without BUILD_EXTRA_URL, COMMAND runs as it is.
set -eu
if [ -z "${BUILD_EXTRA_URL:-}" ]; then
    exec "$@"
fi
extra=$(mktemp -d)
trap 'rm -rf "$extra"' EXIT
python3 - "$BUILD_EXTRA_URL/ca.crt" "$extra/ca.crt" <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
except urllib.error.HTTPError as error:  # 404: no CA bundle to use
    if error.code != 404:
        raise
PY
if [ -f "$extra/ca.crt" ]; then
    export PIP_CERT="$extra/ca.crt" SSL_CERT_FILE="$extra/ca.crt"
fi
host=${BUILD_EXTRA_URL#*://}
export PIP_TRUSTED_HOST="${host%%/*}"  # plain HTTP on the build's own host: no TLS to verify
"$@"
