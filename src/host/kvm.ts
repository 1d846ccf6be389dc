// Whether KVM can run this job's guests, decided by running what the job runs: the real machine
// type, machine properties, `-cpu host` and firmware with one vCPU for a few seconds, requiring
// signs of life (QEMU still running, and firmware output on the serial console or the vCPU's
// program counter moving). `-machine none -accel kvm` is not enough: it creates no vCPU, and on
// nested hosts the vCPU is where KVM fails. The verdict is recorded per host identity. Before
// that, a /dev/kvm that exists but is closed to the runner user (GitHub's hosted runners) can be
// opened with the udev rule GitHub documents, where the runner's system is the job's to change.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { Inputs } from '../contract.js';
import { errorMessage, log } from '../log.js';
import { CacheFiles } from '../names.js';
import { run } from '../util/proc.js';
import { Qmp } from '../vm/qmp.js';
import { sleep, withTimeout } from '../util/time.js';
import { KVM_UDEV_RULE, type AccelChoice, type QemuArch, type QemuInfo } from './platform.js';

export interface KvmVerdict {
  usable: boolean;
  /** One line: why not (or what was seen). */
  reason: string;
  /** How it was decided. */
  source: 'device' | 'probe' | 'boot' | 'record' | 'test hook';
  /** When a recorded verdict was made. */
  at?: string;
}

/** The error code of opening the device read-write, or undefined when it opens. */
function openError(device: string): string | undefined {
  try {
    fs.closeSync(fs.openSync(device, fs.constants.O_RDWR));
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'EIO';
  }
}

/** Why /dev/kvm cannot be used by this user, or undefined when it opens read-write. */
export function kvmDeviceProblem(device = '/dev/kvm'): string | undefined {
  const code = openError(device);
  if (!code) return undefined;
  return code === 'ENOENT'
    ? `${device} does not exist (no KVM on this host, or nested virtualization is off)`
    : `${device} cannot be opened read-write (${code})`;
}

export interface KvmDeviceOptions {
  /** The node to open: /dev/kvm (a test hook names another). */
  device: string;
  /** Whether the runner's system may be changed to open it (Config.kvmFixPermissions). */
  fix: boolean;
  /** The sudo to run the fix with (`sudo` on PATH). */
  sudo: string;
  /** Where the rule goes (KVM_RULES_FILE). */
  rulesFile: string;
  /** How long udev may take to apply the rule after the trigger returns. */
  settleMs?: number;
}

/**
 * Whether the KVM device opens read-write for this user: undefined when it does, else why not.
 * When it exists but is closed to this user (EACCES, EPERM) and `fix` allows, adds the udev rule
 * with `sudo -n` first and says so in one log line; a problem it leaves names the input and, via
 * the caller's warning, the manual fix.
 */
export async function openKvmDevice(o: KvmDeviceOptions): Promise<string | undefined> {
  const problem = kvmDeviceProblem(o.device);
  const code = problem && openError(o.device);
  if (!problem || (code !== 'EACCES' && code !== 'EPERM')) return problem;
  if (!o.fix) return `${problem}; the runner's system is left alone (${Inputs.KvmFixPermissions}: true lets the action add the udev rule with sudo)`;
  const failed = await addKvmUdevRule(o);
  if (failed) return `${problem}, and ${Inputs.KvmFixPermissions} could not open it: ${failed}`;
  log.info(`KVM: ${o.device} was closed to this user (${code}); added the udev rule ${o.rulesFile} (${KVM_UDEV_RULE}) with sudo, as ${Inputs.KvmFixPermissions} allows here, and it opens now`);
  return undefined;
}

/**
 * Writes the rule, reloads udev's rules and re-triggers the device, each with `sudo -n` (never a
 * password prompt: `sudo -n true` must pass first), then waits for the device to open. Returns
 * undefined once it opens, else what failed.
 */
async function addKvmUdevRule(o: KvmDeviceOptions): Promise<string | undefined> {
  const sudo = (args: string[], input?: string) =>
    run(o.sudo, ['-n', ...args], { input, timeoutMs: 60_000, allowFailure: true }).catch((err: unknown) => ({ code: -1, stderr: errorMessage(err), timedOut: false }));
  const why = (r: { code: number | null; stderr: string; timedOut: boolean }) =>
    r.timedOut ? 'timed out' : r.stderr.trim().split('\n').at(-1) || `exit ${r.code}`;
  const can = await sudo(['true']);
  if (can.code !== 0) return `sudo -n true failed (${why(can)}): no passwordless sudo to add the udev rule with`;
  const steps: [string[], string?][] = [
    [['tee', o.rulesFile], `${KVM_UDEV_RULE}\n`],
    [['udevadm', 'control', '--reload-rules']],
    [['udevadm', 'trigger', '--name-match=kvm']],
  ];
  for (const [args, input] of steps) {
    const r = await sudo(args, input);
    if (r.code !== 0) return `sudo -n ${args.join(' ')} failed (${why(r)})`;
  }
  // udev applies the rule after the trigger returns: the device opens within a moment.
  const deadline = Date.now() + (o.settleMs ?? 5000);
  for (;;) {
    const problem = kvmDeviceProblem(o.device);
    if (!problem) return undefined;
    if (Date.now() >= deadline) return `the rule is in ${o.rulesFile} and udev was triggered, but ${problem} after ${(o.settleMs ?? 5000) / 1000} s`;
    await sleep(100);
  }
}

/** What a KVM snapshot or verdict depends on: the kernel, the QEMU build and the CPU model. */
export function hostIdentity(qemu: Pick<QemuInfo, 'binary' | 'version'>, cpuModel: string, kernel = os.release()): string {
  return `kernel ${kernel}, ${qemu.binary} ${qemu.version}, CPU ${cpuModel}`;
}

type Records = Record<string, KvmVerdict>;

function recordsFile(cacheDir: string): string {
  return path.join(cacheDir, CacheFiles.kvmVerdicts);
}

export function readVerdict(cacheDir: string, identity: string): KvmVerdict | undefined {
  try {
    const all = JSON.parse(fs.readFileSync(recordsFile(cacheDir), 'utf8')) as Records;
    return all[identity];
  } catch {
    return undefined;
  }
}

/** Records a verdict (written to a temp name, then renamed: readers never see half a file). */
export function recordVerdict(cacheDir: string, identity: string, v: KvmVerdict): void {
  let all: Records = {};
  try {
    all = JSON.parse(fs.readFileSync(recordsFile(cacheDir), 'utf8')) as Records;
  } catch {
    /* first record */
  }
  all[identity] = { ...v, at: new Date().toISOString() };
  fs.mkdirSync(cacheDir, { recursive: true });
  const tmp = `${recordsFile(cacheDir)}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(all, null, 2) + '\n');
  fs.renameSync(tmp, recordsFile(cacheDir));
}

export interface ProbeOptions {
  qemu: string;
  arch: QemuArch;
  /** Versioned machine type. */
  machine: string;
  /** The KVM accelerator choice the job would use (its -accel/-cpu and machine properties). */
  accel: AccelChoice;
  firmware: { code: string; vars: string; format: 'raw' | 'qcow2' };
  /** How long the guest gets to show signs of life. */
  timeoutMs?: number;
}

const PC = /\b(?:RIP|PC)\s*=\s*([0-9a-f]+)/i;

/** Runs the job's machine under KVM with one vCPU and no disk for a few seconds; see the file comment. */
export async function probeKvm(o: ProbeOptions): Promise<{ usable: boolean; reason: string }> {
  const timeoutMs = o.timeoutMs ?? 4000;
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/tmp') ? '/tmp' : os.tmpdir(), 'rvm-probe-'));
  const vars = path.join(dir, 'vars.fd');
  fs.copyFileSync(o.firmware.vars, vars, fs.constants.COPYFILE_FICLONE);
  const serial = path.join(dir, 'serial.log');
  const sock = path.join(dir, 'qmp.sock');
  const argv = [
    '-nodefaults', '-display', 'none',
    '-machine', [o.machine, ...o.accel.machineProps].join(','),
    ...o.accel.args,
    '-smp', '1', '-m', '256',
    '-drive', `if=pflash,unit=0,format=${o.firmware.format},readonly=on,file=${o.firmware.code.replaceAll(',', ',,')}`,
    '-drive', `if=pflash,unit=1,format=${o.firmware.format},file=${vars.replaceAll(',', ',,')}`,
    '-serial', `file:${serial}`,
    '-qmp', `unix:${sock},server=on,wait=off`,
  ];
  const child = spawn(o.qemu, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('close', () => ((exited = true), resolve())));
  child.once('error', () => (exited = true));
  const cause = () => stderr.split('\n').map((l) => l.trim()).find((l) => /error|fail|abort|assert|could not/i.test(l)) ?? stderr.trim().split('\n')[0] ?? '';
  const deadline = Date.now() + timeoutMs;
  let qmp: Qmp | undefined;
  try {
    while (!exited && !qmp && Date.now() < deadline) {
      if (fs.existsSync(sock)) qmp = await Qmp.connect(sock, Math.max(500, deadline - Date.now())).catch(() => undefined);
      if (!qmp) await sleep(25);
    }
    const pcs = new Set<string>();
    while (!exited && qmp && Date.now() < deadline) {
      const regs = await qmp.hmp('info registers', 2000).catch(() => '');
      const pc = PC.exec(regs)?.[1];
      if (pc) pcs.add(pc);
      const printed = fs.existsSync(serial) && fs.statSync(serial).size > 0;
      if (pcs.size > 1 || printed) return { usable: true, reason: printed ? 'the firmware printed on the serial console' : 'the vCPU made progress' };
      await sleep(200);
    }
    if (exited) return { usable: false, reason: `QEMU exited under KVM: ${cause() || 'no error output'}` };
    if (!qmp) return { usable: false, reason: `QEMU under KVM did not open its monitor within ${timeoutMs / 1000} s` };
    return { usable: false, reason: `no sign of life under KVM within ${timeoutMs / 1000} s (the vCPU did not advance, the firmware printed nothing)` };
  } finally {
    qmp?.close();
    if (!exited) child.kill('SIGKILL');
    await withTimeout(exit, 10_000, 'the KVM probe exiting').catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
