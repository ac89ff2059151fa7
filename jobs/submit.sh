#!/usr/bin/env bash
# Apply one overlay and follow its workload.
#
#   jobs/submit.sh datagen            # step 1
#   jobs/submit.sh train-4gpu         # step 2: train-1gpu|train-4gpu|train-8gpu|
#                                     #         train-multiworker|train-tfjob
#   NAMESPACE=dcign jobs/submit.sh eval   # step 3
#
# Exits 0 when the Job completes, 1 when it fails. Needs kubectl pointed at
# the cluster; set the image first in k8s/components/site/kustomization.yaml.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
overlay="${1:?usage: $0 OVERLAY   (one of: $(ls "$root/k8s/overlays" | tr '\n' ' '))}"
dir="$root/k8s/overlays/$overlay"
[[ -d "$dir" ]] || { echo "submit.sh: no overlay $dir" >&2; exit 2; }
k=(kubectl); [[ -n "${NAMESPACE:-}" ]] && k+=(--namespace "$NAMESPACE")

"${k[@]}" apply -k "$dir"

case "$overlay" in
  datagen) name=dcign-datagen ;;
  eval) name=dcign-eval ;;
  *) name=dcign-train ;;
esac

if [[ "$overlay" == train-tfjob ]]; then
  # The operator reports progress on the TFJob itself (Ctrl-C to stop watching).
  exec "${k[@]}" get tfjob "$name" -w
fi

# Logs of one of the Job's pods (for the multi-worker chief, use
#   kubectl logs -f -l batch.kubernetes.io/job-name=dcign-train,batch.kubernetes.io/job-completion-index=0 );
# the GPU image can take minutes to pull, hence the long running timeout.
"${k[@]}" logs -f "job/$name" --pod-running-timeout=30m || true

# A restarted pod (preemption) means the logs above can end early: wait for
# the Job itself to finish.
while :; do
  state="$("${k[@]}" get "job/$name" \
    -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}')"
  case " $state " in
    *" Complete "*) echo "job/$name complete"; exit 0 ;;
    *" Failed "*) echo "job/$name failed" >&2; "${k[@]}" describe "job/$name" | tail -n 20 >&2; exit 1 ;;
  esac
  sleep 30
done
