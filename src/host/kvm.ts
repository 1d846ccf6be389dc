// Whether KVM can run this job's guests, decided by running what the job runs: the real machine
// type, machine properties, `-cpu host` and firmware with one vCPU for a few seconds, requiring
// signs of life (QEMU still running, and firmware output on the serial console or the vCPU's
// program counter moving). `-machine none -accel kvm` is not enough: it creates no vCPU, and on
// nested hosts the vCPU is where KVM fails. The verdict is recorded per host identity.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { CacheFiles } from '../names.js';
import { Qmp } from '../vm/qmp.js';
import { sleep, withTimeout } from '../util/time.js';
import type { AccelChoice, QemuArch, QemuInfo } from './platform.js';

export interface KvmVerdict {
  usable: boolean;
  /** One line: why not (or what was seen). */
  reason: string;
  /** How it was decided. */
  source: 'device' | 'probe' | 'boot' | 'record' | 'test hook';
  /** When a recorded verdict was made. */
  at?: string;
}

/** Why /dev/kvm cannot be used by this user, or undefined when it opens read-write. */
export function kvmDeviceProblem(device = '/dev/kvm'): string | undefined {
  try {
    fs.closeSync(fs.openSync(device, fs.constants.O_RDWR));
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT'
      ? `${device} does not exist (no KVM on this host, or nested virtualization is off)`
      : `${device} cannot be opened read-write (${code})`;
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
