# Shared by deploy.sh, prewarm.sh and rollout.sh: run or, with --dry-run, print commands.
# shellcheck shell=bash

DRY_RUN=0

# run CMD ARGS...: print the command (shell-quoted) and run it unless --dry-run was given.
run() {
  local quoted
  printf -v quoted '%q ' "$@"
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '%s\n' "${quoted% }"
  else
    printf '+ %s\n' "${quoted% }" >&2
    "$@"
  fi
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}
