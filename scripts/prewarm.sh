#!/usr/bin/env bash
# Keep pods warm on a live service (min-scale), or let it scale to zero again.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_common.sh
source "$HERE/_common.sh"

usage() {
  cat <<USAGE
Usage: scripts/prewarm.sh [--min N | --clear] [options]

  --min N              keep at least N pods (default 1), start new revisions with N,
                       and keep extra pods 10m after a burst (scale-down-delay)
  --clear              back to scale to zero (min-scale 0, no scale-down delay)
  --service NAME       Knative service (default warmstart)
  --namespace NS       namespace (default: the context's)
  --dry-run            print the kn command instead of running it
  -h, --help           this help

Each change makes a new revision; traffic moves to it once it is ready.
USAGE
}

min=1 clear=0 service=warmstart namespace=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --min) min=${2:?--min needs a value}; shift ;;
    --clear) clear=1 ;;
    --service) service=${2:?--service needs a value}; shift ;;
    --namespace|-n) namespace=${2:?--namespace needs a value}; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
  shift
done
[[ $min =~ ^[0-9]+$ ]] || die "--min must be a whole number, not '$min'"
ns=()
[[ -n $namespace ]] && ns=(--namespace "$namespace")

if [[ $clear -eq 1 ]]; then
  run kn service update "$service" --scale-min 0 \
    --annotation autoscaling.knative.dev/scale-down-delay=0s "${ns[@]}"
else
  run kn service update "$service" --scale-min "$min" --scale-init "$min" \
    --annotation autoscaling.knative.dev/scale-down-delay=10m "${ns[@]}"
fi
