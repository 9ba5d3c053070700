#!/usr/bin/env bash
# Canary and A/B rollouts on a live service with kn: start, promote, roll back.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_common.sh
source "$HERE/_common.sh"

usage() {
  cat <<USAGE
Usage: scripts/rollout.sh start --revision NAME --percent P [--image REF] [--model-version V] [--stable REV]
       scripts/rollout.sh promote
       scripts/rollout.sh rollback
  options: --service NAME (default warmstart), --namespace NS, --dry-run, -h/--help

  start     create revision NAME (image REF and/or MODEL_VERSION V), tag it 'canary' and
            give it P% of the traffic; the revision serving now (or --stable REV) keeps
            the rest as 'stable'
  promote   send 100% to the canary; it becomes 'stable'
  rollback  send 100% back to 'stable' and drop the canary tag
USAGE
}

[[ $# -gt 0 ]] || { usage >&2; exit 2; }
case $1 in -h|--help) usage; exit 0 ;; esac
action=$1; shift
service=warmstart namespace="" revision="" percent="" image="" model_version="" stable=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --revision) revision=${2:?--revision needs a value}; shift ;;
    --percent) percent=${2:?--percent needs a value}; shift ;;
    --image) image=${2:?--image needs a value}; shift ;;
    --model-version) model_version=${2:?--model-version needs a value}; shift ;;
    --stable) stable=${2:?--stable needs a value}; shift ;;
    --service) service=${2:?--service needs a value}; shift ;;
    --namespace|-n) namespace=${2:?--namespace needs a value}; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
  shift
done
ns=()
[[ -n $namespace ]] && ns=(--namespace "$namespace")

case $action in
  start)
    [[ -n $revision ]] || die "start needs --revision NAME (it must begin with '$service-')"
    [[ $revision == "$service"-* ]] || die "--revision must begin with '$service-', not '$revision'"
    [[ $percent =~ ^[0-9]+$ && $percent -ge 1 && $percent -le 99 ]] || die "--percent must be 1..99, not '$percent'"
    [[ -n $image || -n $model_version ]] || die "start needs --image and/or --model-version: what is new?"
    # The revision serving now becomes 'stable' and keeps the rest of the traffic.
    if [[ -z $stable ]]; then
      if [[ $DRY_RUN -eq 1 ]]; then
        run kn service describe "$service" -o "jsonpath={.status.latestReadyRevisionName}" "${ns[@]}"
        stable=CURRENT_REVISION
      else
        stable=$(kn service describe "$service" -o "jsonpath={.status.latestReadyRevisionName}" "${ns[@]}")
      fi
    fi
    args=(kn service update "$service" --revision-name "$revision")
    [[ -n $image ]] && args+=(--image "$image")
    [[ -n $model_version ]] && args+=(--env "MODEL_VERSION=$model_version")
    run "${args[@]}" --tag "$stable=stable" --tag "@latest=canary" \
      --traffic "$stable=$((100 - percent))" --traffic "@latest=$percent" "${ns[@]}"
    ;;
  promote)
    run kn service update "$service" --untag stable --untag canary --tag "@latest=stable" \
      --traffic "@latest=100" "${ns[@]}"
    ;;
  rollback)
    run kn service update "$service" --traffic stable=100 --untag canary "${ns[@]}"
    ;;
  *) usage >&2; die "unknown action: $action (start, promote or rollback)" ;;
esac
