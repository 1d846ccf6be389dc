// Host facts that shape every QEMU command line: guest binary, versioned machine type,
// accelerator, CPU model. Probes are time-limited; the arg choice itself is pure.
import * as fs from 'node:fs';
import { run, which } from '../util/proc.js';
import type { Arch } from '../distro.js';
import type { KvmMode } from '../inputs.js';

import type { Accel, AccelChoice, QemuArch } from '../vm/spec.js';
export type { Accel, AccelChoice, QemuArch };

export const QEMU_ARCH: Record<Arch, QemuArch> = { arm64: 'aarch64', amd64: 'x86_64' };
/** The machine alias per guest arch; the versioned name it resolves to is what gets recorded. */
export const MACHINE_ALIAS: Record<QemuArch, string> = { aarch64: 'virt', x86_64: 'q35' };

export function qemuBinary(arch: Arch): string {
  return `qemu-system-${QEMU_ARCH[arch]}`;
}

/** `-machine help` prints e.g. `virt  QEMU 7.2 ARM Virtual Machine (alias of virt-7.2)`. */
export function parseMachineAlias(help: string, alias: string): string | undefined {
  for (const line of help.split('\n')) {
    const m = /^(\S+)\s.*\(alias of (\S+)\)/.exec(line);
    if (m && m[1] === alias) return m[2];
  }
  return undefined;
}

/** `QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)` → `7.2.19`. */
export function parseQemuVersion(text: string): string | undefined {
  return /version (\d+\.\d+(?:\.\d+)?)/.exec(text)?.[1];
}

/** The accelerator arguments for a guest arch, as measured to be fast and snapshot-stable. */
export function accelArgs(arch: QemuArch, accel: Accel): AccelChoice {
  if (accel === 'kvm') {
    return {
      accel,
      args: ['-accel', 'kvm', '-cpu', 'host'],
      machineProps: arch === 'aarch64' ? ['gic-version=3'] : [],
    };
  }
  // Plain `max`, as the seed's command line has it: its consumers restore our snapshots with that
  // -cpu, and a snapshot saved with `max,pauth-impdef=on` (faster pointer auth) fails under `max`.
  return { accel, args: ['-accel', 'tcg,thread=multi', '-cpu', 'max'], machineProps: [] };
}

/** The rule that opens /dev/kvm to every user, as GitHub documents it for its hosted runners. */
export const KVM_UDEV_RULE = 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"';
export const KVM_RULES_FILE = '/etc/udev/rules.d/99-kvm4all.rules';

export const KVM_FIX =
  'add the runner user to the kvm group (sudo usermod -aG kvm $USER, then restart the runner) or add the udev rule ' +
  `${KVM_UDEV_RULE} (echo '${KVM_UDEV_RULE}' | sudo tee ${KVM_RULES_FILE} && sudo udevadm control --reload-rules && sudo udevadm trigger --name-match=kvm); ` +
  'on a runner that is itself a VM, enable nested virtualization on its host';

/** Pure decision: which accelerator for this mode, verdict and arch relation. */
export function chooseAccel(
  mode: KvmMode,
  crossArch: boolean,
  verdict: { usable: boolean; reason: string } | undefined,
): { accel: Accel; warning?: string; error?: string } {
  if (mode === 'false') return { accel: 'tcg' };
  if (crossArch) {
    return { accel: 'tcg', warning: 'the guest arch differs from the host: running under TCG emulation (much slower)' };
  }
  if (verdict?.usable) return { accel: 'kvm' };
  const reason = verdict?.reason ?? 'not probed';
  if (mode === 'true') return { accel: 'tcg', error: kvmUnusableError(reason) };
  return { accel: 'tcg', warning: kvmFallbackWarning(reason) };
}

/** `kvm: true` and KVM cannot run the guest: one line, the cause and the fix. */
export function kvmUnusableError(cause: string): string {
  return `kvm: true, but KVM cannot run the guest here: ${cause}. Fix: ${KVM_FIX}; or set kvm: auto to fall back to TCG`;
}

/** `kvm: auto` falls back: one line, the cause and the fix. */
export function kvmFallbackWarning(cause: string): string {
  return `KVM is not used: ${cause}. Falling back to TCG emulation (roughly 10-30x slower). To use KVM: ${KVM_FIX}`;
}

export interface QemuInfo {
  binary: string;
  path: string;
  version: string;
  /** Versioned machine type, e.g. virt-7.2 or pc-q35-7.2. */
  machine: string;
}

export async function qemuInfo(arch: Arch): Promise<QemuInfo> {
  const binary = qemuBinary(arch);
  const p = await which(binary);
  if (!p) throw new Error(`${binary} not found on PATH (set install-deps: true, or install QEMU for ${QEMU_ARCH[arch]})`);
  const [ver, help] = await Promise.all([
    run(p, ['--version'], { timeoutMs: 10_000 }),
    run(p, ['-machine', 'help'], { timeoutMs: 10_000 }),
  ]);
  const version = parseQemuVersion(ver.stdout);
  if (!version) throw new Error(`cannot read the QEMU version from: ${ver.stdout.trim()}`);
  const alias = MACHINE_ALIAS[QEMU_ARCH[arch]];
  const machine = parseMachineAlias(help.stdout, alias);
  if (!machine) throw new Error(`${binary} -machine help lists no versioned machine for the alias ${alias}`);
  return { binary, path: p, version, machine };
}

/** A stable identity of the host CPU: a KVM snapshot carries its id registers. */
export function hostCpuIdentity(cpuinfo: string): string {
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.+)$`, 'm').exec(cpuinfo)?.[1]?.trim();
  const x86 = field('model name');
  if (x86) return `${field('vendor_id') ?? ''} ${x86} family ${field('cpu family') ?? '?'} model ${field('model') ?? '?'}`.trim();
  const impl = field('CPU implementer');
  if (impl) return `arm implementer ${impl} part ${field('CPU part') ?? '?'} variant ${field('CPU variant') ?? '?'}`;
  return 'unknown';
}

export function readHostCpuIdentity(): string {
  try {
    return hostCpuIdentity(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return 'unknown';
  }
}
