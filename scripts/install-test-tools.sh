#!/usr/bin/env bash
# install-test-tools.sh installs, at pinned versions, the real binaries the
# test suite runs against: MinIO and versitygw (S3 servers), age and
# age-keygen, cosign, checkpointctl and crane (interop), and etcd +
# kube-apiserver (a real Kubernetes API server for TokenReview and
# SubjectAccessReview tests). It is idempotent: a tool whose pinned version is
# already in the cache is not rebuilt.
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

# etcd and kube-apiserver are built from modules of their own under tools/
# (k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces its staging
# modules with local directories, which tools/kube-apiserver/go.mod maps to
# their published v0.37.2 instead). The product's go.mod never sees them. The
# stamp is the hash of the module's files, so a version bump rebuilds.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KUBE_VERSION=v1.37.2
LOCAL_TOOLS=(
  "etcd|tools/etcd|-s -w"
  "kube-apiserver|tools/kube-apiserver|-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
)
for entry in "${LOCAL_TOOLS[@]}"; do
  IFS='|' read -r name dir ldflags <<<"$entry"
  stamp="$STAMPS/$name"
  want="$dir $(cat "$ROOT/$dir/go.mod" "$ROOT/$dir/go.sum" "$ROOT/$dir/main.go" | sha256sum | cut -c1-16)"
  if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    continue
  fi
  echo "install-test-tools: building $name ($dir) into $BIN (kube-apiserver: ~9 min on 2 cores)" >&2
  start=$SECONDS
  (cd "$ROOT/$dir" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$name.tmp" . && mv "$BIN/$name.tmp" "$BIN/$name")
  echo "$want" >"$stamp"
  echo "install-test-tools: $name ready in $((SECONDS - start))s" >&2
done
