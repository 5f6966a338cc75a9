#!/usr/bin/env bash
# install-test-tools.sh installs, at pinned versions, the real binaries the
# test suite runs against: MinIO and versitygw (S3 servers), age and
# age-keygen, cosign, checkpointctl and crane (interop). It is idempotent: a tool
# whose pinned version is already in the cache is not rebuilt.
#
# Cache: $CKVAULT_TOOLS_DIR (default ~/.cache/ckvault/tools). Tests find the
# binaries in $CKVAULT_TOOLS_DIR/bin; see internal/testtools.
set -euo pipefail

TOOLS_DIR="${CKVAULT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ckvault/tools}"
BIN="$TOOLS_DIR/bin"
STAMPS="$TOOLS_DIR/stamps"
mkdir -p "$BIN" "$STAMPS"

export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export CGO_ENABLED=0

# name|package@version. Reasons for each pin are in ../shared/DESIGN.md and README.md:
#  - checkpointctl v1.6.0: later versions need a go-criu the module proxy here does not serve.
#  - age v1.3.2: the first release whose CLI reads hybrid post-quantum (age1pq1) files.
#  - crane v0.22.1: the go-containerregistry release the module itself uses (go.mod), so a
#    restore image is read back by the stock client of the same version.
TOOLS=(
  "age|filippo.io/age/cmd/age@v1.3.2"
  "age-keygen|filippo.io/age/cmd/age-keygen@v1.3.2"
  "cosign|github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5"
  "checkpointctl|github.com/checkpoint-restore/checkpointctl@v1.6.0"
  "crane|github.com/google/go-containerregistry/cmd/crane@v0.22.1"
  "versitygw|github.com/versity/versitygw/cmd/versitygw@v1.8.0"
  "minio|github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"
)

for entry in "${TOOLS[@]}"; do
  name="${entry%%|*}"
  pkg="${entry#*|}"
  stamp="$STAMPS/$name"
  if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$pkg" ]]; then
    continue
  fi
  echo "install-test-tools: building $name ($pkg) into $BIN" >&2
  start=$SECONDS
  GOBIN="$BIN" go install "$pkg"
  echo "$pkg" >"$stamp"
  echo "install-test-tools: $name ready in $((SECONDS - start))s" >&2
done
