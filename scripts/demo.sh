#!/usr/bin/env bash
# The main job on an embedded default, as root: builds the Debian 13 test image for this host's arch
# from Debian packages (cloud.debian.org may be unreachable), then runs `ryra-vm prepare` against
# it: raw → prepared (the catalogue's package list, podman & co., plus jq) → snapshot, under
# `kvm: auto` (KVM where the host can run the guest under it, else TCG with one warning saying why).
# Prints the action's outputs as JSON. A second run finds every layer in the cache dir.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
arch=$(dpkg --print-architecture)
image=$(bash test/fixtures/build-debian-image.sh "$arch" | tail -n 1)
sum=$(awk -v f="$(basename "$image")" '$2 == f {print $1}' "$(dirname "$image")/SHA512SUMS")
node dist/cli.js prepare --arch "$arch" --packages jq --image-url "$image" --image-checksum "sha512:$sum" \
  --cache-dir "${RYRA_VM_CACHE_DIR:-$HOME/.cache/ryra-vm-demo}" --json
