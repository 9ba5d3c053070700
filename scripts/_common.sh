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

# run_in DIR CMD ARGS...: like run, in DIR; printed as `(cd DIR && CMD ...)`, so a printed
# command pastes from anywhere.
run_in() {
  local dir=$1 shown quoted
  shift
  printf -v shown '(cd %q && ' "$dir"
  printf -v quoted '%q ' "$@"
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '%s%s)\n' "$shown" "${quoted% }"
  else
    printf '+ %s%s)\n' "$shown" "${quoted% }" >&2
    (cd "$dir" && "$@")
  fi
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}
