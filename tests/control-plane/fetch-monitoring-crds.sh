#!/usr/bin/env bash
# Fetches the CustomResourceDefinitions of the kinds deploy/monitoring uses (ServiceMonitor,
# PrometheusRule) from the Prometheus operator's Go module, at the version pinned in
# prometheus-operator.version, once, into a cache directory keyed by that version, beside the
# control plane's:
#   ${ROTA_CONTROL_PLANE_DIR:-/var/cache/rota-test/control-plane}/prometheus-operator-crds-<version>
# The tests install them on the real control plane before they check `kubectl apply -k deploy/`
# and the chart with monitoring on. Prints the directory on stdout (everything else on stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
module=github.com/prometheus-operator/prometheus-operator
version="$(tr -d '[:space:]' <"$here/prometheus-operator.version")"
root="${ROTA_CONTROL_PLANE_DIR:-/var/cache/rota-test/control-plane}/prometheus-operator-crds-${version}"
files=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)

if [ -f "$root/complete" ]; then
  echo "prometheus-operator CRDs ${version}: already in $root" >&2
  echo "$root"
  exit 0
fi
command -v go >/dev/null 2>&1 || {
  echo "fetch-monitoring-crds.sh: 'go' is not on PATH; the CRDs come from a Go module" >&2
  exit 1
}
mkdir -p "$root"
# Outside any module: `go mod download` fetches (and checks against the checksum database) the
# module's zip from the module proxy.
dir="$(cd "$(mktemp -d)" && GOTOOLCHAIN=local go mod download -json "$module@$version" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -n "$dir" ] || { echo "fetch-monitoring-crds.sh: $module@$version was not downloaded" >&2; exit 1; }
for file in "${files[@]}"; do
  cp "$dir/example/prometheus-operator-crd/$file" "$root/$file"
done
touch "$root/complete"
echo "prometheus-operator CRDs ${version} fetched into $root" >&2
echo "$root"
