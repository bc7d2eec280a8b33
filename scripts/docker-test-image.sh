#!/usr/bin/env bash
# Builds the base image the docker-mode tests run in, once, and reuses it by tag: a Debian
# minbase rootfs (debootstrap from Debian's packages, the mirror this machine's apt uses) with
# python3, venv, pip and git, loaded with `docker import`. The tag is a hash of this recipe, so a
# changed recipe builds a new image and an unchanged one is never rebuilt. The rootfs tarball is
# kept under target/docker-images/ so an engine that lost the image re-imports it in seconds.
# Prints the image tag on stdout; progress goes to stderr.
#
# Needs: root, debootstrap, a running Docker Engine. `.ci/run` installs debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PATH:/usr/sbin:/sbin"

SUITE="${CLEARML_TEST_IMAGE_SUITE:-bookworm}"
PACKAGES="python3,python3-venv,python3-pip,git,ca-certificates"
REPO_NAME="clearml-agent-test/debian"
CACHE_DIR="$PWD/target/docker-images"

# The recipe: this script's text plus the inputs that change the result.
HASH="$( (cat "$0"; echo "$SUITE $PACKAGES") | sha256sum | cut -c1-16)"
TAG="$REPO_NAME:$HASH"
TARBALL="$CACHE_DIR/$HASH.tar"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"; exit 0
fi

if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  # The mirror apt already uses here (deb822 or one-line sources), so no host is written down.
  MIRROR="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)"
  if [ -z "$MIRROR" ]; then
    MIRROR="$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)"
  fi
  [ -n "$MIRROR" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
  mkdir -p "$CACHE_DIR"
  ROOT="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOT" "$TARBALL.tmp"' EXIT
  echo "building the test image rootfs ($SUITE minbase + $PACKAGES)..." >&2
  start=$(date +%s)
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >&2
  # Smaller image, same behaviour: package lists and caches are not needed at run time.
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* \
    "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*
  tar -C "$ROOT" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  # Tarballs of older recipes are dead weight (images stay: other checkouts may use them).
  find "$CACHE_DIR" -maxdepth 1 -name '*.tar' ! -name "$HASH.tar" -delete
  echo "rootfs built in $(( $(date +%s) - start )) s" >&2
fi

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  "$TARBALL" "$TAG" >&2
echo "$TAG"
