#!/usr/bin/env bash
# Validate deploy/k8s offline: render the base and every overlay with `kubectl kustomize`, then
# run tests/unit/test_k8s_manifests.py (every object against kubernetes-validate's strict schemas
# for Kubernetes 1.32 and the ScaledObject against deploy/k8s/schemas' KEDA 2.17 schema, plus the
# security, scaling and network rules). No cluster needed. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "validate-manifests: $*" >&2; exit 1; }

command -v kubectl >/dev/null 2>&1 \
  || fail "kubectl is not on PATH: install kubectl >= 1.27 (its built-in kustomize renders deploy/k8s)"
kubectl kustomize --help >/dev/null 2>&1 \
  || fail "this kubectl has no 'kustomize' command: install kubectl >= 1.27"

for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
  dir=${dir%/}
  out=$(kubectl kustomize "$dir") || fail "kubectl kustomize $dir failed (see above)"
  echo "rendered $dir: $(grep -c '^kind:' <<<"$out") objects"
done

python=.venv/bin/python
[ -x "$python" ] || fail "$python is missing: run scripts/setup.sh (or poetry install) first"
"$python" -c 'import kubernetes_validate, jsonschema' 2>/dev/null \
  || fail "kubernetes-validate is not installed in .venv: run poetry install (it is a dev dependency)"
exec "$python" -m pytest tests/unit/test_k8s_manifests.py -q "$@"
