#!/usr/bin/env bash
# Build the Dockerfile's images with podman, without a registry: the function image, the
# `trainer` and the `rollout` targets (tests/test_images.py runs them).
#
#   scripts/build_images.sh            build every target (layers cached; quick when nothing changed)
#   scripts/build_images.sh --install  only install podman, runc and debootstrap (as root, where missing)
#   scripts/build_images.sh --names    print TARGET=IMAGE for each target, build nothing
#   scripts/build_images.sh --sizes    print each image's size, and its largest layers
#
# The base image: where python:3.11-slim can be pulled (or is already here), the build
# uses it. Otherwise it makes an equivalent one from Debian's packages (debootstrap from the
# mirror apt uses) and keeps it in podman's storage, rebuilt when its recipe changes or it
# is older than BASE_MAX_AGE_DAYS (so security updates arrive). WARMSTART_BASE=IMAGE
# builds on any other image.
#
# podman reads scripts/containers.conf (CONTAINERS_CONF): runc (crun refuses hybrid
# cgroups) and open-file and process limits under root's hard limits.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CONTAINERS_CONF="$ROOT/scripts/containers.conf"
BASE_MAX_AGE_DAYS="${BASE_MAX_AGE_DAYS:-7}"
SUITE=bookworm
PACKAGES=python3.11-venv,python3-distutils,ca-certificates
# Images are named per checkout, so two checkouts on one machine never overwrite each
# other's; the tag stays the same from one build to the next, so layers are reused.
CHECKOUT="$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)"
declare -A IMAGES=(
  [function]="localhost/warmstart:$CHECKOUT"
  [trainer]="localhost/warmstart-trainer:$CHECKOUT"
  [rollout]="localhost/warmstart-rollout:$CHECKOUT"
)
DEBOOTSTRAP_BASE=localhost/warmstart-base:$SUITE

die() {
  echo "build_images.sh: $*" >&2
  exit 1
}

install_tools() {
  local missing=()
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "build_images.sh: ${missing[*]} missing; install them (Debian: apt-get install podman runc debootstrap)" >&2
    return 1
  fi
  echo "installing ${missing[*]} (Debian's packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc debootstrap \
    containernetworking-plugins uidmap fuse-overlayfs >/dev/null
}

# The Debian mirror apt uses on this machine (deb822 .sources or a sources.list line).
debian_mirror() {
  local uri
  uri="$(grep -hs -A3 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk -v suite="$SUITE" '/^URIs:/ {u=$2} /^Suites:/ && $0 ~ " "suite"( |$)" {print u; exit}')"
  [ -n "$uri" ] || uri="$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite {print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
  echo "${uri:-http://deb.debian.org/debian}"
}

# What makes the debootstrap base: a change to any of it rebuilds the base.
base_recipe() {
  printf '%s\n' "$SUITE" "$PACKAGES" "$(declare -f make_debootstrap_base)" | sha256sum | cut -c1-16
}

base_is_fresh() {
  local label created
  label="$(podman image inspect --format '{{index .Labels "warmstart.base.recipe"}}' "$DEBOOTSTRAP_BASE" 2>/dev/null)" || return 1
  [ "$label" = "$(base_recipe)" ] || return 1
  created="$(date -d "$(podman image inspect --format '{{.Created}}' "$DEBOOTSTRAP_BASE" | cut -d' ' -f1,2)" +%s)"
  [ $(($(date +%s) - created)) -lt $((BASE_MAX_AGE_DAYS * 86400)) ]
}

# python:3.11-slim's Python from Debian's packages. What the Dockerfile relies on, made
# to behave as in the official image:
# - `python` and `pip` on PATH in /usr/local/bin, and `pip install` allowed: Debian's
#   /usr/bin/python3.11 is "externally managed" (PEP 668) and refuses pip, so the base
#   holds a virtualenv AT /usr/local (python3.11 -m venv /usr/local). Its python, pip and
#   site-packages are where the official image has them, pip installs into it, and
#   `python -m venv /venv` makes a venv on the same interpreter, /usr/bin/python3.11.
# - no package lists or .deb files, no documentation; LANG=C.UTF-8.
make_debootstrap_base() {
  local rootfs mirror
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing: run scripts/build_images.sh --install as root"
  [ "$(id -u)" = 0 ] || die "python:3.11-slim cannot be pulled, and making its stand-in (debootstrap) needs root;
run as root, or set WARMSTART_BASE to a Python 3.11 image you have"
  rootfs="$(mktemp -d /var/tmp/warmstart-rootfs.XXXXXX)"
  # shellcheck disable=SC2064  # the path is fixed now
  trap "rm -rf '$rootfs'" RETURN
  mirror="$(debian_mirror)"
  echo "making the base from $mirror ($SUITE, $PACKAGES)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
    die "debootstrap failed; its log: $rootfs.log"
  rm -f "$rootfs.log"
  chroot "$rootfs" /usr/bin/python3.11 -m venv /usr/local
  chroot "$rootfs" /usr/local/bin/python -m pip --version >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL warmstart.base.recipe=$(base_recipe)" \
    --change 'CMD ["python3"]' \
    --message "python3.11 from Debian $SUITE by scripts/build_images.sh" - "$DEBOOTSTRAP_BASE" >/dev/null
}

# The base the Dockerfile's FROM lines use (its BASE build argument).
choose_base() {
  if [ -n "${WARMSTART_BASE:-}" ]; then
    echo "$WARMSTART_BASE"
  elif podman image exists docker.io/library/python:3.11-slim ||
    podman pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
    echo docker.io/library/python:3.11-slim
  else
    base_is_fresh || make_debootstrap_base >&2
    echo "$DEBOOTSTRAP_BASE"
  fi
}

build() {
  local base target args=()
  base="$(choose_base)"
  # pip inside RUN reaches the package index with this machine's CA bundle (a proxy may
  # re-sign TLS); mounted for the build only, never part of an image.
  [ -f /etc/ssl/certs/ca-certificates.crt ] &&
    args+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  for target in trainer rollout function; do
    local stage=()
    [ "$target" = function ] || stage=(--target "$target")
    echo "building ${IMAGES[$target]} (${target}) on $base"
    podman build --pull=never --layers --build-arg "BASE=$base" "${args[@]}" "${stage[@]}" \
      -t "${IMAGES[$target]}" -f "$ROOT/Dockerfile" "$ROOT" >"/var/tmp/warmstart-build-$target.log" 2>&1 ||
      die "podman build of $target failed; the last lines of /var/tmp/warmstart-build-$target.log:
$(tail -20 "/var/tmp/warmstart-build-$target.log")"
  done
}

sizes() {
  local target image
  for target in function trainer rollout; do
    image="${IMAGES[$target]}"
    echo "$target ($image): $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
    podman history --no-trunc --format '{{.Size}}|{{.CreatedBy}}' "$image" |
      awk -F'|' '{split($1, v, " "); m = v[2] == "GB" ? 1e9 : v[2] == "MB" ? 1e6 : v[2] == "kB" ? 1e3 : 1
        sub(/^\/bin\/sh -c (#\(nop\) )?/, "", $2); printf "%012d  %8s  %s\n", v[1] * m, $1, substr($2, 1, 90)}' |
      sort -r | head -4 | cut -c15-
  done
}

case "${1:-}" in
  --install) install_tools ;;
  --names) for target in function trainer rollout; do echo "$target=${IMAGES[$target]}"; done ;;
  --sizes) sizes ;;
  "")
    command -v podman >/dev/null 2>&1 || die "podman is missing: run scripts/build_images.sh --install as root, or install podman"
    build
    ;;
  *) die "unknown option $1 (see the top of $0)" ;;
esac
