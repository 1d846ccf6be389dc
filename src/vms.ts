// VMs that later workflow steps boot from the prepared layers: one directory per VM under the
// runtime dir (RUNNER_TEMP in Actions), holding its disk copies, QEMU's sockets and logs, and
// vm.json. Boots restore the snapshot (or cold-boot the prepared image) detached from the CLI.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { OutputValues } from './contract.js';
import type { Arch } from './distro.js';
import { accelArgs, QEMU_ARCH, type Accel } from './host/platform.js';
import { InputError } from './inputs.js';
import { log } from './log.js';
import { runtimeDir } from './paths.js';
import { timeoutsFor } from './layers/context.js';
import { coldBoot, restoreMachine } from './vm/boot.js';
import { logTail, type Machine } from './vm/machine.js';
import type { VmLayout } from './vm/spec.js';
import type { KeyPair } from './vm/ssh.js';

/** What `prepare` / the action recorded (the `manifest` output). */
export interface OutputsFile {
  outputs: OutputValues;
  cacheDir: string;
  distro: string;
  arch: Arch;
  /** Versioned machine type the layers were made with. */
  machine: string;
  layout?: VmLayout;
  browserLayout?: VmLayout;
  firmware: { code: string; vars: string; format: 'raw' | 'qcow2' };
}

export interface VmRecord {
  name: string;
  pid: number;
  port: number;
  user: string;
  key: string;
  image: string;
  mode: 'restore' | 'cold';
  startedAt: string;
  readyMs: number;
  workDir: string;
  serialLog: string;
  qmpSocket: string;
}

export function vmsDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(runtimeDir(env), 'vms');
}

/** The newest outputs file in the runtime dir, optionally for one cache dir. */
export function findOutputs(opts: { cacheDir?: string; file?: string } = {}): OutputsFile {
  if (opts.file) return JSON.parse(fs.readFileSync(opts.file, 'utf8')) as OutputsFile;
  const dir = runtimeDir();
  const files = (fs.existsSync(dir) ? fs.readdirSync(dir) : [])
    .filter((f) => /^outputs-.*\.json$/.test(f))
    .map((f) => path.join(dir, f))
    .map((f) => ({ f, t: fs.statSync(f).mtimeMs, o: JSON.parse(fs.readFileSync(f, 'utf8')) as OutputsFile }))
    .filter((x) => !opts.cacheDir || path.resolve(x.o.cacheDir) === path.resolve(opts.cacheDir))
    .sort((a, b) => b.t - a.t);
  if (!files.length) throw new InputError(`no prepared layers recorded in ${dir}: run the action (or ryra-vm prepare) first`);
  return files[0].o;
}

export function processAlive(pid: number, marker: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
  } catch {
    return false;
  }
}

export function listVms(): (VmRecord & { running: boolean })[] {
  const dir = vmsDir();
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .map((n) => path.join(dir, n, 'vm.json'))
    .filter((f) => fs.existsSync(f))
    .map((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as VmRecord)
    .map((v) => ({ ...v, running: processAlive(v.pid, v.workDir) }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

export function getVm(name: string): VmRecord & { running: boolean } {
  const all = listVms();
  const vm = all.find((v) => v.name === name);
  if (!vm) {
    const running = all.filter((v) => v.running).map((v) => v.name);
    throw new InputError(`no VM named ${name} (running: ${running.length ? running.join(', ') : 'none'})`);
  }
  if (!vm.running) throw new Error(`VM ${name} is not running (its QEMU exited). Serial console, last lines:\n${logTail(vm.serialLog)}`);
  return vm;
}

function freeName(): string {
  const taken = new Set(listVms().map((v) => v.name));
  for (let i = 1; ; i++) if (!taken.has(`vm${i}`)) return `vm${i}`;
}

/** A snapshot's files and the image its disk sits on, as the outputs name them. */
export function snapshotOf(out: OutputValues, browser: boolean): { files: { disk: string; efivars: string; seed: string }; image: string } {
  return browser
    ? { files: { disk: out['browser-snapshot-disk'], efivars: out['browser-snapshot-efivars'], seed: out['browser-snapshot-seed-iso'] }, image: out['browser-image'] }
    : { files: { disk: out['snapshot-disk'], efivars: out['snapshot-efivars'], seed: out['snapshot-seed-iso'] }, image: out.image };
}

export interface BootOptions {
  name?: string;
  browser?: boolean;
  memoryMb?: number;
  cpus?: number;
  cacheDir?: string;
  outputsFile?: string;
}

/** Boots a VM that outlives this process: from the snapshot when there is one, else cold. */
export async function bootVm(o: BootOptions): Promise<VmRecord> {
  const rec = findOutputs({ cacheDir: o.cacheDir, file: o.outputsFile });
  const out = rec.outputs;
  const name = o.name ?? freeName();
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(name)) throw new InputError(`invalid VM name: ${name} (letters, digits, . _ -)`);
  if (listVms().some((v) => v.name === name && v.running)) throw new InputError(`a VM named ${name} is already running`);
  const workDir = path.join(vmsDir(), name);
  fs.rmSync(workDir, { recursive: true, force: true });
  fs.mkdirSync(workDir, { recursive: true });
  const key: KeyPair = { privateKey: fs.readFileSync(out['ssh-key'], 'utf8'), publicKey: out['ssh-public-key'] };
  const layout = o.browser ? rec.browserLayout : rec.layout;
  const { files: snap, image } = snapshotOf(out, !!o.browser);
  if (o.browser && !image) throw new InputError('no browser layer was prepared: run the action with browser: true');
  // The layer builders' limits for this accelerator (TCG: minutes; KVM: far less).
  const timeouts = timeoutsFor(out.accel as Accel);
  const start = Date.now();
  let machine: Machine;
  let mode: VmRecord['mode'];
  if (layout && snap.disk) {
    for (const [flag, want, have] of [
      ['--memory', layout.memoryMb, o.memoryMb],
      ['--cpus', layout.cpus, o.cpus],
    ] as const) {
      if (have !== undefined && have !== want) {
        throw new InputError(`invalid ${flag}: ${have} (the snapshot was saved with ${want}; boot with ${flag} ${want}, or prepare a snapshot of that size)`);
      }
    }
    mode = 'restore';
    ({ machine } = await restoreMachine({
      name,
      qemu: out.qemu,
      efiCode: out['efi-code'],
      files: snap,
      backing: image,
      layout,
      workDir,
      key,
      user: out['ssh-user'],
      sshTimeoutMs: timeouts.restoreSshMs,
      sharePath: path.join(rec.cacheDir, 'images'),
      detached: true,
    }));
    // A restored guest's clock is the snapshot's: set it to the host's.
    await machine.check(`sudo date -u -s @${(Date.now() / 1000).toFixed(3)} >/dev/null`, 'setting the guest clock');
  } else {
    mode = 'cold';
    log.info(`no snapshot recorded: cold-booting ${name} from ${path.basename(image)}`);
    const arch = QEMU_ARCH[rec.arch];
    machine = await coldBoot({
      name,
      qemu: out.qemu,
      arch,
      machine: rec.machine,
      accel: accelArgs(arch, out.accel as Accel),
      firmware: rec.firmware,
      memoryMb: o.memoryMb ?? 2048,
      cpus: o.cpus ?? 2,
      base: image,
      workDir,
      key,
      user: out['ssh-user'],
      seed: { hostname: name },
      sshTimeoutMs: timeouts.bootSshMs,
      cloudInitTimeoutMs: timeouts.bootSshMs,
      detached: true,
    });
  }
  const vm: VmRecord = {
    name,
    pid: machine.pid,
    port: machine.sshPort,
    user: out['ssh-user'],
    key: out['ssh-key'],
    image,
    mode,
    startedAt: new Date(start).toISOString(),
    readyMs: Date.now() - start,
    workDir,
    serialLog: machine.spec.serialLog,
    qmpSocket: machine.spec.qmpSocket,
  };
  fs.writeFileSync(path.join(workDir, 'vm.json'), JSON.stringify(vm, null, 2) + '\n');
  machine.release();
  return vm;
}

/** Stops a VM's QEMU (SIGTERM, then SIGKILL) and removes its directory. */
export async function stopVm(vm: VmRecord): Promise<void> {
  const alive = () => processAlive(vm.pid, vm.workDir);
  if (alive()) {
    process.kill(vm.pid, 'SIGTERM');
    for (let i = 0; i < 50 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
    if (alive()) process.kill(vm.pid, 'SIGKILL');
    for (let i = 0; i < 50 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
  }
  fs.rmSync(vm.workDir, { recursive: true, force: true });
  fs.rmSync(path.dirname(vm.qmpSocket), { recursive: true, force: true });
}
