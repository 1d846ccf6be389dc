// VmSpec → QEMU argv, pure. The layout part of a spec (everything a snapshot's device state depends
// on) is recorded in a layer's manifest, and restores rebuild their argv from that record.
import type { AccelChoice, QemuArch } from '../host/platform.js';

/** What a saved snapshot is bound to: a restore must use exactly this. */
export interface VmLayout {
  arch: QemuArch;
  /** Versioned machine type, e.g. virt-7.2 (never the plain alias). */
  machine: string;
  accel: AccelChoice;
  memoryMb: number;
  cpus: number;
  firmwareFormat: 'raw' | 'qcow2';
  /** A cloud-init seed drive is attached (read-only). */
  seed: boolean;
  /** Tag of the read-only virtfs share, when attached. */
  shareTag?: string;
}

export interface VmSpec extends VmLayout {
  qemu: string;
  name: string;
  efiCode: string;
  /** qcow2 (savevm needs every writable drive to be qcow2; the RAM state goes here). */
  efiVars: string;
  /** qcow2 system disk. */
  disk: string;
  seedIso?: string;
  sharePath?: string;
  sshPort: number;
  qmpSocket: string;
  serialLog: string;
  pidFile: string;
  /** Restore this internal snapshot at start (`-loadvm`). */
  loadvm?: string;
}

export function layoutOf(spec: VmSpec): VmLayout {
  const { arch, machine, accel, memoryMb, cpus, firmwareFormat, seed, shareTag } = spec;
  return { arch, machine, accel, memoryMb, cpus, firmwareFormat, seed, ...(shareTag ? { shareTag } : {}) };
}

/** Layouts equal in every field that a snapshot depends on. */
export function sameLayout(a: VmLayout, b: VmLayout): boolean {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

function canonical(l: VmLayout): unknown[] {
  return [l.arch, l.machine, l.accel.accel, l.accel.args, l.accel.machineProps, l.memoryMb, l.cpus, l.firmwareFormat, l.seed, l.shareTag ?? null];
}

// QEMU's option parser treats ',' as a separator: a literal comma in a path is written ',,'.
function opt(value: string): string {
  return value.replaceAll(',', ',,');
}

export function qemuArgv(spec: VmSpec): string[] {
  if (spec.seed !== !!spec.seedIso) throw new Error('spec.seed and spec.seedIso disagree');
  if (!!spec.shareTag !== !!spec.sharePath) throw new Error('spec.shareTag and spec.sharePath disagree');
  const machine = [spec.machine, ...spec.accel.machineProps].join(',');
  const argv = [
    '-name', `${opt(spec.name)},debug-threads=off`,
    '-nodefaults',
    '-display', 'none',
    '-machine', machine,
    ...spec.accel.args,
    '-m', String(spec.memoryMb),
    '-smp', String(spec.cpus),
    '-drive', `if=pflash,unit=0,format=${spec.firmwareFormat},readonly=on,file=${opt(spec.efiCode)}`,
    '-drive', `if=pflash,unit=1,format=qcow2,file=${opt(spec.efiVars)}`,
    '-drive', `if=virtio,format=qcow2,file=${opt(spec.disk)}`,
  ];
  if (spec.seedIso) argv.push('-drive', `if=virtio,format=raw,readonly=on,file=${opt(spec.seedIso)}`);
  argv.push(
    // Loopback only: the guest's sshd is never exposed on the runner's other interfaces.
    '-netdev', `user,id=net0,hostfwd=tcp:127.0.0.1:${spec.sshPort}-:22`,
    '-device', 'virtio-net-pci,netdev=net0',
    '-device', 'virtio-rng-pci',
  );
  if (spec.sharePath && spec.shareTag) {
    argv.push('-virtfs', `local,path=${opt(spec.sharePath)},mount_tag=${spec.shareTag},security_model=none,readonly=on`);
  }
  argv.push(
    '-serial', `file:${spec.serialLog}`,
    '-qmp', `unix:${opt(spec.qmpSocket)},server=on,wait=off`,
    '-pidfile', spec.pidFile,
  );
  if (spec.loadvm) argv.push('-loadvm', spec.loadvm);
  return argv;
}
