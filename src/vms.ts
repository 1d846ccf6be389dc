// VMs that later workflow steps boot from the prepared layers: one directory per VM under the
// runtime dir (RUNNER_TEMP in Actions), holding its disk copies, QEMU's files, its own SSH key and
// vm.json. Boots restore the snapshot (or cold-boot the prepared image) detached from the CLI. A
// VM holds the layers it depends on, so eviction never takes them while it runs.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import lockfile from 'proper-lockfile';
import { holdLayer, liveHolders, processHolder, releaseHolder, removeLayer, withLayerLock, type Holder } from './cache/local.js';
import type { Accel } from './host/platform.js';
import { InputError, VM_NAME_RE } from './inputs.js';
import { timeoutsFor } from './layers/context.js';
import { readManifest } from './layers/manifest.js';
import { errorMessage, log } from './log.js';
import { GuestFiles, manifestPath, RuntimeFiles } from './names.js';
import { runtimeDir } from './paths.js';
import { caSetupScript, proxySetupCommand, runnerCAs, runnerProxy, runnerSeed } from './proxy.js';
import { newestRecord, readRecord, restoreFrom, type RunRecord, type SnapshotRecord } from './record.js';
import { processNamed } from './util/procfs.js';
import { sleep } from './util/time.js';
import { coldBoot, restoreMachine } from './vm/boot.js';
import { logTail, type Machine } from './vm/machine.js';
import { generateKeyPair, type KeyPair } from './vm/ssh.js';

export interface VmRecord {
  name: string;
  pid: number;
  port: number;
  user: string;
  /** The VM's own private key (0600); the snapshot's shared key does not log in. */
  key: string;
  image: string;
  mode: 'restore' | 'cold';
  browser: boolean;
  startedAt: string;
  readyMs: number;
  workDir: string;
  serialLog: string;
  qmpSocket: string;
  cacheDir: string;
  /** The run record it was booted from. */
  record: string;
  /** The holder id under which it holds its layers in the cache dir. */
  holder: string;
}

export function vmsDir(): string {
  return path.join(runtimeDir(), RuntimeFiles.vms);
}

export function listVms(): (VmRecord & { running: boolean })[] {
  const dir = vmsDir();
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .map((n) => path.join(dir, n, GuestFiles.vmRecord))
    .filter((f) => fs.existsSync(f))
    .map((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as VmRecord)
    .map((v) => ({ ...v, running: processNamed(v.pid, v.workDir) }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

export function findVm(name: string): (VmRecord & { running: boolean }) | undefined {
  return listVms().find((v) => v.name === name);
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

export interface BootOptions {
  name?: string;
  browser?: boolean;
  memoryMb?: number;
  cpus?: number;
  cacheDir?: string;
  /** A run record: the `manifest` output's file, or the JSON `ryra-vm prepare --json` printed. */
  config?: string;
}

export function loadRecord(o: { config?: string; cacheDir?: string }): RunRecord {
  return o.config ? readRecord(o.config) : newestRecord(runtimeDir(), o.cacheDir);
}

/**
 * Marks layers in use by `holder`, each under its lock, after checking its manifest is still
 * there (eviction takes the same lock). Fails naming what is gone.
 */
async function holdAll(cacheDir: string, bases: string[], holder: Holder): Promise<void> {
  for (const base of bases) {
    await withLayerLock(cacheDir, base, 60_000, async () => {
      if (!readManifest(manifestPath(cacheDir, base))) {
        throw new Error(`the layer ${base} is no longer in ${cacheDir} (evicted or rebuilt): run the action (or ryra-vm prepare) again`);
      }
      holdLayer(cacheDir, base, holder);
    });
  }
}

/** The snapshot a restore just failed on is not used again: the next action run rebuilds it. */
async function invalidateSnapshot(cacheDir: string, snap: SnapshotRecord): Promise<void> {
  await withLayerLock(cacheDir, snap.base, 60_000, async () => {
    if (liveHolders(cacheDir, snap.base).some((h) => 'dir' in h)) {
      // A job still holds it: drop only its manifest, the files stay for VMs already running.
      fs.rmSync(manifestPath(cacheDir, snap.base), { force: true });
    } else removeLayer(cacheDir, snap.base, [snap.disk, snap.efivars, snap.seed].map((f) => path.basename(f)));
  });
}

/**
 * Gives a restored VM its own key (the snapshot's shared key stops working), its name as hostname
 * (resolvable: sudo looks it up), the host's clock, and the runner's proxy and local CAs. One
 * script on stdin, one root shell in it: each SSH exec and each sudo cost seconds under emulation.
 */
function personalize(name: string, vmKey: KeyPair, manager: 'apt' | 'dnf'): string {
  const proxy = runnerProxy();
  const cas = runnerCAs();
  return [
    'set -e',
    `umask 077 && mkdir -p ~/.ssh && printf '%s\\n' '${vmKey.publicKey}' > ~/.ssh/authorized_keys.new && mv ~/.ssh/authorized_keys.new ~/.ssh/authorized_keys`,
    "sudo sh -se <<'RYRA_ROOT'",
    'rm -f /root/.ssh/authorized_keys',
    `echo "127.0.1.1 ${name}" >> /etc/hosts`,
    `hostname ${name}`,
    `echo ${name} > /etc/hostname`,
    // A restored guest's clock is the snapshot's: set it to the host's.
    `date -u -s @${(Date.now() / 1000).toFixed(3)} >/dev/null`,
    ...(proxy ? [proxySetupCommand(proxy, manager)] : []),
    ...(cas.length ? [caSetupScript(cas)] : []),
    'RYRA_ROOT',
    '',
  ].join('\n');
}

/** Boots a VM that outlives this process: from the snapshot when there is one, else cold. */
export async function bootVm(o: BootOptions): Promise<VmRecord> {
  const rec = loadRecord(o);
  const out = rec.outputs;
  const name = o.name ?? freeName();
  if (!VM_NAME_RE.test(name)) throw new InputError(`invalid VM name: ${name} (letters, digits, . _ -; at most 63)`);
  if (listVms().some((v) => v.name === name && v.running)) throw new InputError(`a VM named ${name} is already running`);
  const snap = o.browser ? rec.browserRestore : rec.restore;
  const cold = o.browser ? rec.browserCold : rec.cold;
  if (o.browser && !cold) throw new InputError('no browser layer was prepared: run the action with browser: true');
  const workDir = path.join(vmsDir(), name);
  fs.rmSync(workDir, { recursive: true, force: true });
  fs.mkdirSync(workDir, { recursive: true });
  // The VM's own key, in its dir (0600): the shared key in the cache dir logs into no running VM.
  const keyFile = path.join(workDir, GuestFiles.vmKey);
  const vmKey = generateKeyPair(`ryra-vm ${name}`);
  fs.writeFileSync(keyFile, vmKey.privateKey, { mode: 0o600 });
  fs.writeFileSync(`${keyFile}.pub`, vmKey.publicKey + '\n');
  const timeouts = timeoutsFor(out.accel as Accel);
  const bootTimeout = (fallback: number) => rec.run.bootTimeoutMs ?? fallback;
  // Held by this process while booting; by the VM's QEMU once it runs.
  await holdAll(rec.cacheDir, snap ? [snap.base, snap.backingBase] : [cold!.base], processHolder());
  const start = Date.now();
  let machine: Machine | undefined;
  let mode: VmRecord['mode'] = 'restore';
  if (snap) {
    for (const [flag, want, have] of [
      ['--memory', snap.layout.memoryMb, o.memoryMb],
      ['--cpus', snap.layout.cpus, o.cpus],
    ] as const) {
      if (have !== undefined && have !== want) {
        throw new InputError(`invalid ${flag}: ${have} (the snapshot was saved with ${want}; boot with ${flag} ${want}, or prepare a snapshot of that size)`);
      }
    }
    try {
      ({ machine } = await restoreMachine({
        ...restoreFrom(rec, o.browser),
        name,
        workDir,
        sshTimeoutMs: bootTimeout(timeouts.restoreSshMs),
        shareDir: path.join(workDir, GuestFiles.share),
        detached: true,
      }));
      await machine.check('sh -s', 'setting up the VM (its own key, hostname, clock, network)', { input: personalize(name, vmKey, rec.guestPackageManager), timeoutMs: 120_000 });
      machine.useKey(vmKey.privateKey);
    } catch (err) {
      await machine?.destroy();
      machine = undefined;
      log.warning(`restoring ${name} from ${path.basename(snap.disk)} failed; marking that snapshot invalid (the next action run rebuilds it) and cold-booting instead: ${errorMessage(err).split('\n')[0]}`);
      await invalidateSnapshot(rec.cacheDir, snap).catch((e) => log.warning(`could not mark the snapshot invalid: ${errorMessage(e)}`));
      await holdAll(rec.cacheDir, [cold!.base], processHolder());
    }
  }
  if (!machine) {
    mode = 'cold';
    log.info(`cold-booting ${name} from ${path.basename(cold!.image)}`);
    machine = await coldBoot({
      name,
      qemu: rec.qemu,
      layout: { ...cold!.layout, memoryMb: o.memoryMb ?? cold!.layout.memoryMb, cpus: o.cpus ?? cold!.layout.cpus },
      firmware: rec.firmware,
      base: cold!.image,
      workDir,
      diskSize: rec.run.diskSize,
      key: vmKey,
      user: out['ssh-user'],
      seed: { hostname: name, ...runnerSeed(rec.guestPackageManager) },
      sshTimeoutMs: bootTimeout(timeouts.bootSshMs),
      cloudInitTimeoutMs: timeouts.bootSshMs,
      detached: true,
    });
  }
  const holder = processHolder(machine.pid, 'vm');
  const held = mode === 'restore' ? [snap!.base, snap!.backingBase] : [cold!.base];
  for (const base of held) holdLayer(rec.cacheDir, base, holder);
  const vm: VmRecord = {
    name,
    pid: machine.pid,
    port: machine.sshPort,
    user: out['ssh-user'],
    key: keyFile,
    image: mode === 'restore' ? snap!.backing : cold!.image,
    mode,
    browser: !!o.browser,
    startedAt: new Date(start).toISOString(),
    readyMs: Date.now() - start,
    workDir,
    serialLog: machine.serialLog,
    qmpSocket: machine.qmpSocket,
    cacheDir: rec.cacheDir,
    record: out.manifest,
    holder: holder.id,
  };
  fs.writeFileSync(path.join(workDir, GuestFiles.vmRecord), JSON.stringify(vm, null, 2) + '\n');
  await addSshHost(vm);
  machine.release();
  return vm;
}

/** Stops a VM's QEMU (SIGTERM, then SIGKILL), removes its directory, its SSH host entry and its holds. */
export async function stopVm(vm: VmRecord): Promise<void> {
  const alive = () => processNamed(vm.pid, vm.workDir);
  if (alive()) {
    process.kill(vm.pid, 'SIGTERM');
    for (let i = 0; i < 50 && alive(); i++) await sleep(100);
    if (alive()) process.kill(vm.pid, 'SIGKILL');
    for (let i = 0; i < 50 && alive(); i++) await sleep(100);
  }
  fs.rmSync(vm.workDir, { recursive: true, force: true });
  fs.rmSync(path.dirname(vm.qmpSocket), { recursive: true, force: true });
  releaseHolder(vm.cacheDir, vm.holder);
  await removeSshHost(vm.name);
}

// ---- ~/.ssh/config ----------------------------------------------------------------------------
// Booted VMs get a Host entry, so `ssh NAME`, scp, rsync -e ssh and ansible work. The entries go
// first in the file (ssh takes the first value it finds for each option) between marker lines.

function sshConfigFile(): string {
  return path.join(os.homedir(), '.ssh', 'config');
}

const begin = (name: string) => `# >>> ryra-vm ${name} (added by ryra-vm boot; removed by ryra-vm stop)`;
const end = (name: string) => `# <<< ryra-vm ${name}`;

async function editSshConfig(edit: (text: string) => string): Promise<void> {
  const file = sshConfigFile();
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  if (!fs.existsSync(file)) fs.writeFileSync(file, '', { mode: 0o600 });
  const release = await lockfile.lock(file, { realpath: false, stale: 10_000, retries: { retries: 50, minTimeout: 100, maxTimeout: 200 } });
  try {
    const text = fs.readFileSync(file, 'utf8');
    const next = edit(text);
    if (next === text) return;
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, next, { mode: 0o600 });
    fs.renameSync(tmp, file);
  } finally {
    await release();
  }
}

function withoutBlock(text: string, name: string): string {
  const lines = text.split('\n');
  const a = lines.indexOf(begin(name));
  const b = lines.indexOf(end(name));
  if (a < 0 || b < a) return text;
  lines.splice(a, b - a + 1);
  return lines.join('\n');
}

export function sshHostBlock(vm: Pick<VmRecord, 'name' | 'port' | 'user' | 'key'>): string {
  return [
    begin(vm.name),
    `Host ${vm.name}`,
    '  HostName 127.0.0.1',
    `  Port ${vm.port}`,
    `  User ${vm.user}`,
    `  IdentityFile ${vm.key}`,
    '  IdentitiesOnly yes',
    // A fresh VM's host key is new every boot: nothing to pin it to.
    '  StrictHostKeyChecking no',
    '  UserKnownHostsFile /dev/null',
    '  LogLevel ERROR',
    end(vm.name),
  ].join('\n');
}

async function addSshHost(vm: VmRecord): Promise<void> {
  await editSshConfig((t) => `${sshHostBlock(vm)}\n${withoutBlock(t, vm.name)}`);
}

async function removeSshHost(name: string): Promise<void> {
  await editSshConfig((t) => withoutBlock(t, name));
}
