#!/usr/bin/env bash
# Builds what the tests run from Go modules at pinned versions, each once into its own cache
# directory keyed by its versions: the real control plane (build-control-plane.sh:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd) and helm
# (build-helm.sh), and the Prometheus operator's CRDs for deploy/monitoring
# (fetch-monitoring-crds.sh). Prints each directory on stdout (everything else goes to stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/build-control-plane.sh"
"$here/build-helm.sh"
"$here/fetch-monitoring-crds.sh"
