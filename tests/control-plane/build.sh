#!/usr/bin/env bash
# Builds what the tests run from Go modules at pinned versions, each once into its own cache
# directory keyed by its versions: the real control plane (control-plane.sh: kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, etcd) and helm (helm.sh).
# Prints each bin directory on stdout (everything else goes to stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/control-plane.sh"
"$here/helm.sh"
