#!/usr/bin/env bash
# The main job on an embedded default: builds the Debian 13 test image for this host's arch from
# Debian packages (cloud.debian.org may be unreachable), then runs `ryra-vm prepare` against it:
# raw → prepared (with jq) → snapshot, and restores a VM from the snapshot once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
arch=$(dpkg --print-architecture)
image=$(bash test/fixtures/build-debian-image.sh "$arch" | tail -n 1)
sum=$(awk -v f="$(basename "$image")" '$2 == f {print $1}' "$(dirname "$image")/SHA512SUMS")
kvm=${RYRA_VM_KVM:-auto}
node dist/cli.js prepare --arch "$arch" --kvm "$kvm" --packages "jq libpam-systemd" --image-url "$image" --image-checksum "sha512:$sum" \
  --cache-dir "${RYRA_VM_CACHE_DIR:-$HOME/.cache/ryra-vm-demo}" --json
