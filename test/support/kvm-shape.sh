#!/usr/bin/env bash
# Runs a command (e.g. .ci/run, or npm run test:unit -- host) as on a host of another KVM shape, to
# check that the tests hold there:
#   test/support/kvm-shape.sh missing CMD...  /dev/kvm absent: a private mount namespace whose /dev
#                                             is a copy without the kvm node (needs root)
#   test/support/kvm-shape.sh hang CMD...     a KVM guest's vCPU never advances
#   test/support/kvm-shape.sh abort CMD...    QEMU aborts at vCPU init (failed to set MSR)
#   test/support/kvm-shape.sh works CMD...    KVM runs the guest (TCG in its place)
# The last three put stand-in qemu-system-* first on PATH (qemu-stand-in.sh); /dev/kvm stays as it
# is, so on a host without it the product's device check still answers first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shape=${1:-}
shift || true
[[ $# -gt 0 ]] || { echo "usage: $0 missing|hang|abort|works COMMAND..." >&2; exit 2; }

case $shape in
  missing)
    [[ $(id -u) == 0 ]] || { echo "$0 missing: needs root (a mount namespace); run it with sudo" >&2; exit 2; }
    exec unshare --mount --propagation private bash -c '
      set -euo pipefail
      old=$(mktemp -d /tmp/kvm-shape-dev.XXXXXX)
      mount --rbind /dev "$old"
      mount -t tmpfs -o mode=755,size=4m kvm-shape-dev /dev
      for e in "$old"/* "$old"/.[!.]*; do
        [[ -e $e || -L $e ]] || continue
        n=${e##*/}
        case $n in
          kvm) ;;
          pts|shm|mqueue|hugepages) mkdir -p "/dev/$n"; mount --rbind "$e" "/dev/$n" ;;
          *) cp -a "$e" /dev/ ;;
        esac
      done
      umount -l "$old"; rmdir "$old"
      exec "$@"' kvm-shape "$@" ;;
  hang|abort|works)
    dir=$(mktemp -d /tmp/kvm-shape-qemu.XXXXXX)
    trap 'rm -rf "$dir"' EXIT
    for name in qemu-system-x86_64 qemu-system-aarch64; do
      real=$(command -v "$name") || continue
      printf '#!/usr/bin/env bash\nexec %q %s %q "$@"\n' "$here/qemu-stand-in.sh" "$shape" "$real" >"$dir/$name"
      chmod +x "$dir/$name"
    done
    PATH="$dir:$PATH" "$@" ;;
  *) echo "$0: unknown shape \"$shape\" (missing, hang, abort, works)" >&2; exit 2 ;;
esac
