#!/usr/bin/env bash
# A qemu-system-* that behaves like one on a host of a given KVM shape, so a test makes the host
# state it needs instead of depending on the one it runs on. Started through a wrapper on PATH
# (qemu-stand-in.ts, kvm-shape.sh): `qemu-stand-in.sh SHAPE REAL_QEMU ARGS...`. Anything not asking
# for KVM (TCG, --version, -machine help) is the real QEMU, unchanged; under KVM:
#   missing  exits as QEMU does without /dev/kvm (its own two lines, exit 1)
#   abort    aborts as QEMU does where KVM rejects the vCPU's MSRs (its own lines, SIGABRT)
#   hang     runs, but the vCPU never advances: the real QEMU under TCG, started frozen (-S)
#   works    runs the guest: the real QEMU under TCG
# The real QEMU is exec'd, so the pid the caller holds is QEMU's.
set -euo pipefail
shape=$1 real=$2
shift 2
name=${real##*/}

kvm=0
prev=
for a in "$@"; do
  if [[ $a == -enable-kvm || ($prev == -accel && $a == kvm*) || ($prev == -machine && $a == *accel=kvm*) ]]; then kvm=1; fi
  prev=$a
done
[[ $kvm == 1 ]] || exec "$real" "$@"

case $shape in
  missing)
    echo 'Could not access KVM kernel module: No such file or directory' >&2
    echo "$name: -accel kvm: failed to initialize kvm: No such file or directory" >&2
    exit 1 ;;
  abort)
    echo "$name: error: failed to set MSR 0x10a to 0x69" >&2
    echo "$name: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion \`ret == cpu->kvm_msr_buf->nmsrs' failed." >&2
    ulimit -c 0
    kill -ABRT $$ ;;
  hang | works)
    # The same command under TCG: -cpu host exists only under KVM, max is TCG's nearest.
    args=()
    prev=
    for a in "$@"; do
      if [[ $a == -enable-kvm ]]; then a=
      elif [[ $prev == -accel && $a == kvm* ]]; then a=tcg
      elif [[ $prev == -machine ]]; then a=${a//accel=kvm/accel=tcg}
      elif [[ $prev == -cpu && ($a == host || $a == host,*) ]]; then a=max${a#host}
      fi
      [[ -z $a ]] || args+=("$a")
      prev=$a
    done
    [[ $shape == works ]] || args+=(-S)
    exec "$real" "${args[@]}" ;;
  *)
    echo "qemu-stand-in.sh: unknown shape \"$shape\" (missing, abort, hang, works)" >&2
    exit 2 ;;
esac
