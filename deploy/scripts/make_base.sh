#!/usr/bin/env bash
# Make a local Debian bookworm base image (python3 + venv) without a registry, and import it.
#   make_base.sh CACHE_DIR [TAG]    (needs root, debootstrap, a running dockerd via DOCKER_HOST)
# The root filesystem tarball is cached in CACHE_DIR so later runs only `docker import` it.
set -euo pipefail
cache="${1:?cache dir}"; tag="${2:-modelserve-base:bookworm}"
tarball="$cache/base-bookworm-minbase.tar"
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  root="$(mktemp -d "$cache/rootfs.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  # apt lists and caches are not needed at run time
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
if ! docker image inspect "$tag" >/dev/null 2>&1; then
  docker import "$tarball" "$tag" >/dev/null
fi
echo "$tag"
