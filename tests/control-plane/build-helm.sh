#!/usr/bin/env bash
# Builds the helm the deploy tests run (helm lint, helm template) from the Go module pinned in
# helm/go.mod, once, into a cache directory keyed by that version, beside the control plane's:
#   ${ROTA_CONTROL_PLANE_DIR:-/var/cache/rota-test/control-plane}/helm-<version>/bin/helm
# A stamp file marks a complete build; a later run with the same pin returns at once.
# Prints the bin directory on stdout (everything else goes to stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

command -v go >/dev/null 2>&1 || {
  echo "build-helm.sh: 'go' is not on PATH; helm is built from its Go module (Go >= 1.26)" >&2
  exit 1
}

pinned() { awk -v m="$2" '($1 == "require" && $2 == m) || $1 == m { print ($1 == m ? $2 : $3); exit }' "$here/$1/go.mod"; }
helm_version="$(pinned helm helm.sh/helm/v3)"
[ -n "$helm_version" ] || { echo "build-helm.sh: cannot read the pinned version" >&2; exit 1; }

root="${ROTA_CONTROL_PLANE_DIR:-/var/cache/rota-test/control-plane}/helm-${helm_version}"
bin="$root/bin"
stamp="$root/complete"
# The stamp names everything that decides the binary, so a changed go.sum or flag rebuilds.
want="$(cat "$0" "$here"/helm/go.{mod,sum} | sha256sum | cut -d' ' -f1) $(go env GOVERSION)"

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9 # one build at a time; a second caller waits and then finds the stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "helm ${helm_version}: already built in $bin" >&2
  echo "$bin"
  exit 0
fi

start=$SECONDS
rm -rf "$root/bin.new" "$stamp"
mkdir -p "$root/bin.new"
# No VCS stamp: the binary depends on the pin only, not on the commit of this repository.
export GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local
# The version variables helm's own Makefile sets: its version, and the Kubernetes version that
# `helm template` and `helm lint` assume (.Capabilities.KubeVersion), the minor of the k8s.io
# modules it is built with (v0.36.x -> 1.36).
client_go="$(pinned helm k8s.io/client-go)"
k8s_minor="${client_go#v0.}"; k8s_minor="${k8s_minor%%.*}"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done

echo "building helm ${helm_version} into $bin" >&2
(cd "$here/helm" && go build -ldflags "$ldflags" -o "$root/bin.new/helm" helm.sh/helm/v3/cmd/helm)

rm -rf "$bin"
mv "$root/bin.new" "$bin"
echo "$want" >"$stamp"
echo "helm ${helm_version} built in $((SECONDS - start))s into $bin" >&2
echo "$bin"
