#!/usr/bin/env bash
# Installs everything this project needs on a fresh Debian/Ubuntu machine (as root: the test images
# need mmdebstrap --mode=root and binfmt registration):
# QEMU for both guest arches, UEFI firmware, the Debian test-image builder's tools, then npm ci.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
PKGS=(
  qemu-system-x86 qemu-system-arm qemu-utils ovmf qemu-efi-aarch64   # guests
  zstd                                                               # Actions cache archives
  docker-registry                                                    # a real OCI registry for the registry tier's tests
  mmdebstrap qemu-user-static binfmt-support arch-test               # test images from Debian packages
  grub-common mtools dosfstools fdisk e2fsprogs                      # (their grub modules come from trixie)
  genisoimage util-linux procps                                      # isoinfo/blkid/pgrep in tests
  jq openssh-client                                                  # the README's examples
)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
npm ci --no-audit --no-fund
