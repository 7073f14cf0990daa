#!/usr/bin/env bash
# Builds the real control plane the tests run — kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl and etcd — from the Go modules pinned in kubernetes/go.mod and etcd/go.mod,
# once, into a cache directory keyed by those versions:
#   ${ROTA_CONTROL_PLANE_DIR:-/var/cache/rota-test/control-plane}/<k8s>-<etcd>/bin
# A stamp file marks a complete build; a later run with the same pins returns at once.
# Prints the bin directory on stdout (everything else goes to stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

command -v go >/dev/null 2>&1 || {
  echo "build.sh: 'go' is not on PATH; the real control plane is built from Go modules (Go >= 1.26)" >&2
  exit 1
}

pinned() { awk -v m="$2" '($1 == "require" && $2 == m) || $1 == m { print ($1 == m ? $2 : $3); exit }' "$here/$1/go.mod"; }
k8s_version="$(pinned kubernetes k8s.io/kubernetes)"
etcd_version="$(pinned etcd go.etcd.io/etcd/server/v3)"
[ -n "$k8s_version" ] && [ -n "$etcd_version" ] || { echo "build.sh: cannot read the pinned versions" >&2; exit 1; }

root="${ROTA_CONTROL_PLANE_DIR:-/var/cache/rota-test/control-plane}/${k8s_version}-${etcd_version}"
bin="$root/bin"
stamp="$root/complete"
# The stamp names everything that decides the binaries, so a changed go.sum or flag rebuilds.
want="$(cat "$0" "$here"/kubernetes/go.{mod,sum} "$here"/etcd/go.{mod,sum} "$here"/etcd/main.go | sha256sum | cut -d' ' -f1) $(go env GOVERSION)"

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9 # one build at a time; a second caller waits and then finds the stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "control plane ${k8s_version} / etcd ${etcd_version}: already built in $bin" >&2
  echo "$bin"
  exit 0
fi

start=$SECONDS
rm -rf "$root/bin.new" "$stamp"
mkdir -p "$root/bin.new"
# No VCS stamp: the binaries depend on the pins only, not on the commit of this repository.
export GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

echo "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl ${k8s_version} into $bin" >&2
(cd "$here/kubernetes" && go build -ldflags "$ldflags" -o "$root/bin.new/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl)
echo "building etcd ${etcd_version}" >&2
(cd "$here/etcd" && go build -ldflags "-s -w" -o "$root/bin.new/etcd" .)

rm -rf "$bin"
mv "$root/bin.new" "$bin"
echo "$want" >"$stamp"
echo "control plane ${k8s_version} / etcd ${etcd_version} built in $((SECONDS - start))s into $bin" >&2
echo "$bin"
