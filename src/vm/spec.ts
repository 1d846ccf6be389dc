// A guest's QEMU command line, pure. Every boot — layer builds, snapshot restores, `ryra-vm boot`,
// and any tool that restores our snapshots itself — uses one device layout: the seed's savevm
// command line (machine, -cpu, -m, -smp, pflash 0/1, disk, seed ISO, -nic user with the SSH
// forward, -nographic, serial to a file, the read-only `images` virtfs share), plus the
// accelerator's arguments. A snapshot restores only under the identical layout, so it is written
// once, as a recipe: an argv in which only the per-VM tokens vary.

/** The accelerator a layout runs under (host/ decides it; a layout records it). */
export type QemuArch = 'aarch64' | 'x86_64';
export type Accel = 'kvm' | 'tcg';
export interface AccelChoice {
  accel: Accel;
  /** `-accel …`, `-cpu …` arguments. */
  args: string[];
  /** Extra `-machine` properties (aarch64 KVM pins the GIC so snapshots don't tie to a guess). */
  machineProps: string[];
}

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

/** The only parts of a recipe that differ from one VM to the next. */
export const TOKENS = {
  disk: '{disk}',
  efivars: '{efivars}',
  sshPort: '{ssh-port}',
  serialLog: '{serial-log}',
  shareDir: '{share-dir}',
} as const;
export type TokenName = keyof typeof TOKENS;
export type TokenValues = Record<TokenName, string>;

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

/**
 * `-nic`'s model: aarch64 `virt` defaults to virtio-net-pci, as the seed has it. x86_64 `q35`
 * defaults to e1000e, which Debian's cloud kernels lack (and which is slower to emulate): pinned.
 */
const NIC_MODEL: Record<QemuArch, string> = { aarch64: '', x86_64: 'model=virtio-net-pci,' };

/**
 * The recipe: the seed's savevm argv, option for option and in its order, with the accelerator's
 * `-cpu` in the seed's `-cpu` place and its other arguments (`-accel …`) appended where the seed
 * appends its KVM arguments. The forward listens on 127.0.0.1 only (the seed's listened on every
 * interface). The firmware code and the seed ISO are shared, read-only files named as they are.
 */
export function recipe(layout: VmLayout, fixed: { efiCode: string; seedIso?: string }, o: { scratchDisk?: boolean } = {}): string[] {
  if (layout.seed !== !!fixed.seedIso) throw new Error('layout.seed and the seed ISO disagree');
  const cpuAt = layout.accel.args.indexOf('-cpu');
  if (cpuAt < 0) throw new Error(`accelerator arguments without -cpu: ${layout.accel.args.join(' ')}`);
  // A build's scratch disk is never saved with savevm, so its CPU model may favour speed: pointer
  // authentication's architected algorithm costs an aarch64 TCG guest much of its boot time.
  const fast = o.scratchDisk && layout.arch === 'aarch64' && layout.accel.accel === 'tcg' && layout.accel.args[cpuAt + 1] === 'max';
  const cpu = fast ? 'max,pauth-impdef=on' : layout.accel.args[cpuAt + 1];
  const accelRest = layout.accel.args.filter((_, i) => i !== cpuAt && i !== cpuAt + 1);
  const argv = [
    '-machine', [layout.machine, ...layout.accel.machineProps].join(','),
    '-cpu', cpu,
    '-m', String(layout.memoryMb),
    '-smp', String(layout.cpus),
    '-drive', `if=pflash,format=${layout.firmwareFormat},file=${opt(fixed.efiCode)},readonly=on`,
    '-drive', `if=pflash,format=qcow2,file=${TOKENS.efivars}`,
    // A build's throw-away disk (a failed build is discarded) skips the host's flushes; a snapshot's never.
    '-drive', `if=virtio,file=${TOKENS.disk},format=qcow2${o.scratchDisk ? ',cache=unsafe' : ''}`,
  ];
  if (fixed.seedIso) argv.push('-drive', `if=virtio,file=${opt(fixed.seedIso)},format=raw,readonly=on`);
  argv.push(
    '-nic', `user,${NIC_MODEL[layout.arch]}hostfwd=tcp:127.0.0.1:${TOKENS.sshPort}-:22`,
    '-nographic',
    '-serial', `file:${TOKENS.serialLog}`,
  );
  if (layout.shareTag) argv.push('-virtfs', `local,path=${TOKENS.shareDir},mount_tag=${layout.shareTag},security_model=none,readonly=on`);
  argv.push(...accelRest);
  return argv;
}

/** Fills a recipe's tokens; paths get QEMU's comma escaping where the option parser needs it. */
export function fillRecipe(argv: readonly string[], v: TokenValues): string[] {
  // `-serial file:PATH` is parsed without option syntax: a comma there cannot be escaped.
  if (v.serialLog.includes(',')) throw new Error(`the serial log path may not contain a comma: ${v.serialLog}`);
  if (!/^\d+$/.test(v.sshPort)) throw new Error(`not a port: ${v.sshPort}`);
  const values: Record<string, string> = {
    [TOKENS.disk]: opt(v.disk),
    [TOKENS.efivars]: opt(v.efivars),
    [TOKENS.sshPort]: v.sshPort,
    [TOKENS.serialLog]: v.serialLog,
    [TOKENS.shareDir]: opt(v.shareDir),
  };
  return argv.map((a) => a.replace(/\{(disk|efivars|ssh-port|serial-log|share-dir)\}/g, (t) => values[t]));
}

/** A TCP forward from the host's loopback to a guest port. */
export interface Forward {
  host: number;
  guest: number;
}

/**
 * The recipe with `forwards` added to its `-nic user` line, on 127.0.0.1 like the SSH forward.
 * hostfwd is the network backend's configuration, not part of the state savevm writes, so a
 * snapshot restores with any forwards (as it does with any SSH port).
 */
export function withForwards(argv: readonly string[], forwards: readonly Forward[]): string[] {
  if (!forwards.length) return [...argv];
  const at = argv.findIndex((a, i) => argv[i - 1] === '-nic' && a.startsWith('user,'));
  if (at < 0) throw new Error(`the recipe has no -nic user line to add forwards to: ${argv.join(' ')}`);
  const out = [...argv];
  out[at] += forwards.map((f) => `,hostfwd=tcp:127.0.0.1:${f.host}-:${f.guest}`).join('');
  return out;
}

/** What this engine adds to a recipe to run a VM (a consumer adds its own): QMP, no HMP, pid file, restore. */
export function controlArgs(o: { name: string; qmpSocket: string; pidFile: string; loadvm?: string }): string[] {
  return [
    '-name', opt(o.name),
    '-qmp', `unix:${opt(o.qmpSocket)},server=on,wait=off`,
    '-monitor', 'none',
    '-pidfile', o.pidFile,
    ...(o.loadvm ? ['-loadvm', o.loadvm] : []),
  ];
}
