#!/usr/bin/env bash
# Deploy warmstart to the current kubectl context.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_common.sh
source "$HERE/_common.sh"

usage() {
  cat <<USAGE
Usage: scripts/deploy.sh [--func | --kubectl] [options]

  --func               build and deploy with the Knative functions CLI (func deploy)
  --kubectl            apply the kustomize tree with kubectl apply -k (default)
  --image REF          image to deploy (func: --image REF; kubectl: kustomize edit set image)
  --overlay NAME       kubectl only: base (default), prewarm or canary
  --eventing           kubectl only: also apply knative/eventing (broker, triggers, sinks)
  --namespace NS       target namespace (default: the context's)
  --dry-run            print the commands instead of running them
  -h, --help           this help
USAGE
}

mode=kubectl image="" overlay=base eventing=0 namespace=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --func) mode=func ;;
    --kubectl) mode=kubectl ;;
    --image) image=${2:?--image needs a value}; shift ;;
    --overlay) overlay=${2:?--overlay needs a value}; shift ;;
    --eventing) eventing=1 ;;
    --namespace|-n) namespace=${2:?--namespace needs a value}; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
  shift
done

ROOT=$(cd "$HERE/.." && pwd)
ns=()
[[ -n $namespace ]] && ns=(--namespace "$namespace")

if [[ $mode == func ]]; then
  args=(func deploy --path "$ROOT")
  [[ -n $image ]] && args+=(--image "$image")
  run "${args[@]}" "${ns[@]}"
  exit 0
fi

case $overlay in
  base) tree="$ROOT/knative/base" ;;
  prewarm|canary) tree="$ROOT/knative/overlays/$overlay" ;;
  *) die "--overlay must be base, prewarm or canary, not '$overlay'" ;;
esac
if [[ -n $image ]]; then
  # kustomize edit rewrites the kustomization it runs in: set the image in a copy of the
  # manifests (.deploy/, ignored by git), never in the repository's own files.
  work="$ROOT/.deploy"
  run rm -rf "$work"
  run mkdir -p "$work"
  run cp -R "$ROOT/knative" "$work/knative"
  run_in "$work/knative/base" kustomize edit set image "warmstart=$image"
  tree="$work/knative/${tree#"$ROOT/knative/"}"
fi
run kubectl apply -k "$tree" "${ns[@]}"
if [[ $eventing -eq 1 ]]; then
  run kubectl apply -k "$ROOT/knative/eventing" "${ns[@]}"
fi
run kubectl wait ksvc/warmstart --for=condition=Ready --timeout=300s "${ns[@]}"
