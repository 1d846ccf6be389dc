// VMs that later workflow steps boot from the prepared layers: one directory per VM under the
// runtime dir (RUNNER_TEMP in Actions), holding its disk copies, QEMU's files, its own SSH key and
// vm.json. Boots restore the snapshot (or cold-boot the prepared image) detached from the CLI. A
// VM holds the layers it depends on, so eviction never takes them while it runs.
import type { Phases } from './util/phases.js';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import lockfile from 'proper-lockfile';
import { holdLayer, liveHolders, processHolder, releaseHolder, removeLayer, withLayerLock, type Holder } from './cache/local.js';
import type { Accel } from './host/platform.js';
import { NO_HOOKS, type TestHooks } from './env.js';
import { InputError } from './inputs.js';
import { timeoutsFor } from './layers/context.js';
import { readManifest } from './cache/manifest.js';
import { errorMessage, log } from './log.js';
import { CacheFiles, GuestFiles, manifestPath, RuntimeFiles, VM_NAME_RE, VM_NAME_RULE } from './names.js';
import { JOB_ENV, jobId, runtimeDir } from './paths.js';
import { caSetupScript, proxySetupCommand, runnerCAs, runnerProxy, runnerSeed } from './proxy.js';
import { newestRecord, readRecord, restoreFrom, type RunRecord, type SnapshotRecord } from './record.js';
import { processNamed } from './util/procfs.js';
import { sleep } from './util/time.js';
import { coldBoot, restoreMachine } from './vm/boot.js';
import { ForwardPortError, logTail, type Machine } from './vm/machine.js';
import type { Forward } from './vm/spec.js';
import { generateKeyPair, hostKeyFor, writeKeyFiles, type KeyPair, type SshClient, type SshTarget } from './vm/ssh.js';

export interface VmRecord {
  name: string;
  pid: number;
  port: number;
  user: string;
  /** The VM's own private key (0600); the snapshot's shared key does not log in. */
  key: string;
  /** The guest's SSH host key (an OpenSSH public key line): ryra-vm and `ssh NAME` accept no other. */
  hostKey: string;
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
  /** TCP forwards from the host's 127.0.0.1 besides SSH. */
  forwards: Forward[];
}

export function vmsDir(): string {
  return path.join(runtimeDir(), RuntimeFiles.vms);
}

/** The job's VMs; the Host entries of any found dead are replaced by ones that say so. */
export function listVms(): (VmRecord & { running: boolean })[] {
  const vms = readVms();
  pruneSshHosts(vms);
  return vms;
}

function readVms(): (VmRecord & { running: boolean })[] {
  const dir = vmsDir();
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .map((n) => path.join(dir, n, GuestFiles.vmRecord))
    .filter((f) => fs.existsSync(f))
    .map((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as VmRecord)
    .map((v) => ({ ...v, running: vmAlive(v) }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * The VM's QEMU runs: its pid's command line names the VM's dir. With the trailing slash, so that
 * VM `a`'s dir does not match the QEMU of VM `ab` that got a's old pid. Host entries check the same.
 */
function vmAlive(vm: Pick<VmRecord, 'pid' | 'workDir'>): boolean {
  return processNamed(vm.pid, `${vm.workDir}/`);
}

/** How ryra-vm reaches a VM over SSH: its own key, its host key pinned. */
export function vmTarget(vm: Pick<VmRecord, 'name' | 'port' | 'user' | 'key' | 'hostKey'>): SshTarget {
  if (!vm.hostKey) throw new Error(`VM ${vm.name} was booted by an older ryra-vm that recorded no SSH host key to check: stop it (ryra-vm stop ${vm.name}) and boot it again`);
  return { port: vm.port, user: vm.user, privateKey: fs.readFileSync(vm.key, 'utf8'), hostKey: vm.hostKey };
}

export function findVm(name: string): (VmRecord & { running: boolean }) | undefined {
  return listVms().find((v) => v.name === name);
}

/** Refuses a name that is not a VM name, naming the rule. */
export function checkVmName(name: string): string {
  if (!VM_NAME_RE.test(name)) throw new InputError(`invalid VM name: ${JSON.stringify(name)} (${VM_NAME_RULE})`);
  return name;
}

export function getVm(name: string): VmRecord & { running: boolean } {
  checkVmName(name);
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
  /** TCP forwards from the host's 127.0.0.1. */
  forwards?: Forward[];
  /** The test hooks the entry point read (none: NO_HOOKS). */
  hooks?: TestHooks;
  /** Marks the boot's phases (the bench's fresh-step rows). */
  phases?: Phases;
  /** Hand the boot's own SSH session to the caller (a step uses it: no second handshake). */
  keepSession?: boolean;
}

/** Refuses forwards whose host ports repeat or that something on this host already listens on. */
async function checkForwards(forwards: Forward[]): Promise<void> {
  const seen = new Set<number>();
  for (const f of forwards) {
    if (seen.has(f.host)) throw new InputError(`invalid forward ${f.host}:${f.guest}: host port ${f.host} is forwarded twice`);
    seen.add(f.host);
    const problem = await new Promise<string | undefined>((resolve) => {
      const srv = net.createServer();
      srv.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'EADDRINUSE' ? 'another process listens on it' : err.code === 'EACCES' ? 'ports below 1024 need privileges' : err.message));
      srv.listen(f.host, '127.0.0.1', () => srv.close(() => resolve(undefined)));
    });
    if (problem) throw new InputError(`invalid forward ${f.host}:${f.guest}: 127.0.0.1:${f.host} is not free (${problem}); forward from another host port`);
  }
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
export async function bootVm(o: BootOptions): Promise<VmRecord & { session?: SshClient }> {
  const rec = loadRecord(o);
  const out = rec.outputs;
  const name = checkVmName(o.name ?? freeName());
  const job = jobId();
  if (listVms().some((v) => v.name === name && v.running)) throw new InputError(`a VM named ${name} is already running`);
  const forwards = o.forwards ?? [];
  await checkForwards(forwards);
  const snap = o.browser ? rec.browserRestore : rec.restore;
  const cold = o.browser ? rec.browserCold : rec.cold;
  if (o.browser && !cold) throw new InputError('no browser layer was prepared: run the action with browser: true');
  const workDir = path.join(vmsDir(), name);
  fs.rmSync(workDir, { recursive: true, force: true });
  fs.mkdirSync(workDir, { recursive: true });
  // The VM's own key, in its dir (0600): the shared key in the cache dir logs into no running VM.
  const keyFile = path.join(workDir, GuestFiles.vmKey);
  const vmKey = generateKeyPair(`ryra-vm ${name}`);
  writeKeyFiles(keyFile, vmKey);
  const hooks = o.hooks ?? NO_HOOKS;
  const timeouts = timeoutsFor(out.accel as Accel, hooks.timeoutScale);
  const bootTimeout = (fallback: number) => rec.run.bootTimeoutMs ?? fallback;
  // Held by this process while booting; by the VM's QEMU once it runs.
  await holdAll(rec.cacheDir, snap ? [snap.base, snap.backingBase] : [cold!.base], processHolder());
  const start = Date.now();
  let machine: Machine | undefined;
  let mode: VmRecord['mode'] = 'restore';
  let hostKey = '';
  let session: SshClient | undefined;
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
      const from = restoreFrom(rec, o.browser);
      // The snapshot's sshd presents the host key derived from the snapshot's key (restoreMachine pins it).
      hostKey = hostKeyFor(from.key).publicKey;
      ({ machine } = await restoreMachine({
        ...from,
        name,
        workDir,
        sshTimeoutMs: bootTimeout(timeouts.restoreSshMs),
        // The cache dir's `images` folder, read-only, as the snapshot was saved with it (the seed's
        // podman store for images the host puts there, which the guest may mount at /mnt/images).
        shareDir: path.join(rec.cacheDir, CacheFiles.share),
        detached: true,
        forwards,
        phases: o.phases,
      }));
      await machine.check('sh -s', 'setting up the VM (its own key, hostname, clock, network)', { input: personalize(name, vmKey, rec.guestPackageManager), timeoutMs: timeouts.stepMs });
      // The session that set the key up stays logged in (sshd checks a key only at login).
      if (o.keepSession) session = machine.handOver();
      machine.useKey(vmKey.privateKey);
      o.phases?.mark('VM key');
    } catch (err) {
      await machine?.destroy();
      machine = undefined;
      if (err instanceof ForwardPortError) throw new InputError(err.message);
      log.warning(`restoring ${name} from ${path.basename(snap.disk)} failed; marking that snapshot invalid (the next action run rebuilds it) and cold-booting instead: ${errorMessage(err).split('\n')[0]}`);
      await invalidateSnapshot(rec.cacheDir, snap).catch((e) => log.warning(`could not mark the snapshot invalid: ${errorMessage(e)}`));
      await holdAll(rec.cacheDir, [cold!.base], processHolder());
    }
  }
  if (!machine) {
    mode = 'cold';
    log.info(`cold-booting ${name} from ${path.basename(cold!.image)}`);
    // A host key of the VM's own, like its key: the seed installs it.
    const coldHostKey = generateKeyPair(`ryra-vm ${name} host key`);
    hostKey = coldHostKey.publicKey;
    machine = await coldBoot({
      name,
      qemu: rec.qemu,
      layout: { ...cold!.layout, memoryMb: o.memoryMb ?? cold!.layout.memoryMb, cpus: o.cpus ?? cold!.layout.cpus },
      firmware: rec.firmware,
      base: cold!.image,
      workDir,
      diskSize: rec.run.diskSize,
      key: vmKey,
      hostKey: coldHostKey,
      user: out['ssh-user'],
      seed: { hostname: name, ...runnerSeed(rec.guestPackageManager) },
      sshTimeoutMs: bootTimeout(timeouts.bootSshMs),
      cloudInitTimeoutMs: timeouts.bootSshMs,
      detached: true,
      forwards,
      stallMs: hooks.stallMs,
    }).catch((err) => {
      throw err instanceof ForwardPortError ? new InputError(err.message) : err;
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
    hostKey,
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
    forwards,
  };
  fs.writeFileSync(path.join(workDir, GuestFiles.knownHosts), knownHostsLine(vm) + '\n', { mode: 0o600 });
  fs.writeFileSync(path.join(workDir, GuestFiles.vmRecord), JSON.stringify(vm, null, 2) + '\n');
  await updateSshHosts();
  if (!job && process.env.GITHUB_ACTIONS === 'true') log.warning(`${JOB_ENV} is not set: plain \`ssh ${name}\` reaches this VM from any job of this runner user that has no ${JOB_ENV} either (the action sets it for the job's later steps)`);
  o.phases?.mark('VM records');
  if (o.keepSession) session ??= machine.handOver();
  machine.release();
  return session ? Object.assign(vm, { session }) : vm;
}

/** Stops a VM's QEMU (SIGTERM, then SIGKILL), removes its directory and its holds; its SSH host entry then says it is gone. */
export async function stopVm(vm: VmRecord): Promise<void> {
  const alive = () => vmAlive(vm);
  if (alive()) {
    process.kill(vm.pid, 'SIGTERM');
    for (let i = 0; i < 50 && alive(); i++) await sleep(100);
    if (alive()) process.kill(vm.pid, 'SIGKILL');
    for (let i = 0; i < 50 && alive(); i++) await sleep(100);
  }
  fs.rmSync(vm.workDir, { recursive: true, force: true });
  fs.rmSync(path.dirname(vm.qmpSocket), { recursive: true, force: true });
  releaseHolder(vm.cacheDir, vm.holder);
  await updateSshHosts();
}

// ---- plain `ssh NAME` ---------------------------------------------------------------------------
// A job's VMs get Host entries in a file of the job's own, in the runtime dir, so `ssh NAME`, scp,
// rsync -e ssh and ansible work. ~/.ssh/config includes that file only for an ssh whose
// environment holds the job's id (RYRA_VM_JOB, which the action exports to the job's later steps):
// two jobs of one runner user that both boot `default` each reach their own. The block goes first
// in the file (ssh takes the first value it finds for each option) and ends with `Match all`, so
// the user's own lines after it keep applying to every host. An entry pins its VM's host key and
// reaches the VM only while its QEMU runs; once the VM is stopped or found dead, its name's entry
// only says so, so nothing that listens on the freed port later gets `ssh NAME` sessions.

function userSshConfig(): string {
  return path.join(os.homedir(), '.ssh', 'config');
}

export function jobSshConfig(): string {
  return path.join(runtimeDir(), RuntimeFiles.sshConfig);
}

const begin = (file: string) => `# >>> ryra-vm job ${file} (added by ryra-vm boot; removed by ryra-vm stop and the action's post step)`;
const end = (file: string) => `# <<< ryra-vm job ${file}`;
const BEGIN_RE = /^# >>> ryra-vm job (.+) \(added by ryra-vm boot/;

/** A path as one ssh_config argument; refused where ssh would expand or split it. */
function configPath(p: string): string {
  if (/["\\\r\n*?[$%]/.test(p)) throw new InputError(`the path ${JSON.stringify(p)} holds a character ssh's config would expand or split: set RYRA_VM_RUNTIME_DIR to a plainer path`);
  return `"${p}"`;
}

/** The lines of ~/.ssh/config that include a job's file for that job's shells only. */
export function jobBlock(file: string, job: string): string {
  return [
    begin(file),
    // ssh runs it with $SHELL, whichever that is: printenv and grep read alike in every shell.
    job ? `Match exec "printenv ${JOB_ENV} | grep -qx -e ${job}"` : `Match !exec "printenv ${JOB_ENV} | grep -q ."`,
    `  Include ${configPath(file)}`,
    'Match all',
    end(file),
  ].join('\n');
}

/** `text` without the block for `file`, and without blocks of jobs whose files are gone (ended jobs). */
export function withoutJobBlocks(text: string, file: string): string {
  const lines = text.split('\n');
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = BEGIN_RE.exec(lines[i]);
    const j = m ? lines.indexOf(end(m[1]), i) : -1;
    if (m && j > i && (m[1] === file || !fs.existsSync(m[1]))) {
      i = j;
      continue;
    }
    out.push(lines[i]);
  }
  return out.join('\n');
}

/** A path in a shell command in an ssh_config argument: single-quoted, so refused where it holds one. */
function shellPath(p: string): string {
  configPath(p);
  if (p.includes("'")) throw new InputError(`the path ${JSON.stringify(p)} holds a ' (ssh's config runs a shell command with it): set RYRA_VM_RUNTIME_DIR to a plainer path`);
  return `'${p}'`;
}

/** The VM's known_hosts line: its host key at the address its Host entry connects to. */
export function knownHostsLine(vm: Pick<VmRecord, 'port' | 'hostKey'>): string {
  return `[127.0.0.1]:${vm.port} ${vm.hostKey.trim()}`;
}

export type HostEntryVm = Pick<VmRecord, 'name' | 'port' | 'user' | 'key' | 'pid' | 'workDir'>;

/**
 * Instead of a connection, ssh runs this: it prints why there is no VM and ends (QUIET keeps ssh's
 * own lines about the closed connection out). No `%` (a token to ssh), no `$` (a variable to sh).
 */
function refusal(name: string, why: string): string[] {
  return [`  ProxyCommand sh -c 'echo "ryra-vm: the VM ${name} is gone (${why}); boot it again with ryra-vm boot --name ${name}" >&2; exit 1'`, '  LogLevel QUIET'];
}

/**
 * A running VM's Host entry: its host key pinned (the VM's own known_hosts file, nothing else
 * trusted), and before it a Match that checks, at every `ssh NAME`, that the VM's QEMU still runs
 * (its pid's command line names the VM's dir, as listVms checks). For a VM that died since the file
 * was written, ssh then says so instead of connecting to whatever listens on the freed port. ssh
 * takes the first value it finds for each option: the Match's win over the Host entry's.
 */
export function sshHostBlock(vm: HostEntryVm): string {
  return [
    `Match originalhost ${vm.name} !exec "grep -qaF -e ${shellPath(`${vm.workDir}/`)} /proc/${vm.pid}/cmdline 2>/dev/null"`,
    ...refusal(vm.name, `its QEMU, pid ${vm.pid}, exited`),
    `Host ${vm.name}`,
    '  HostName 127.0.0.1',
    `  Port ${vm.port}`,
    `  User ${vm.user}`,
    `  IdentityFile ${configPath(vm.key)}`,
    '  IdentitiesOnly yes',
    '  StrictHostKeyChecking yes',
    `  UserKnownHostsFile ${configPath(path.join(vm.workDir, GuestFiles.knownHosts))}`,
    '  GlobalKnownHostsFile /dev/null',
    '  LogLevel ERROR',
  ].join('\n');
}

/** The entry of a name whose VM is gone: `ssh NAME` says so and connects nowhere. */
export function goneHostBlock(name: string, why: string): string {
  return [`Host ${name}`, ...refusal(name, why)].join('\n');
}

/**
 * The job file's text: an entry for each running VM, and one that refuses for each VM found dead
 * and each name the file had before whose VM is gone (stopped); '' when there are none.
 */
export function jobHostsText(dir: string, vms: (HostEntryVm & { running: boolean })[], before: string): string {
  const running = vms.filter((v) => v.running);
  const names = new Set([...before.matchAll(/^Host (\S+)$/gm)].map((m) => m[1]).concat(vms.map((v) => v.name)));
  const gone = [...names]
    .filter((n) => !running.some((v) => v.name === n))
    .sort()
    .map((n) => {
      const dead = vms.find((v) => v.name === n);
      return goneHostBlock(n, dead ? `its QEMU, pid ${dead.pid}, exited` : 'stopped');
    });
  const blocks = [...running.map(sshHostBlock), ...gone];
  return blocks.length ? `# Host entries of the VMs in ${dir} (ryra-vm writes it)\n${blocks.join('\n')}\n` : '';
}

async function withLock<T>(file: string, fn: () => T | Promise<T>): Promise<T> {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  if (!fs.existsSync(file)) fs.writeFileSync(file, '', { mode: 0o600 });
  const release = await lockfile.lock(file, { realpath: false, stale: 10_000, retries: { retries: 50, minTimeout: 100, maxTimeout: 200 } });
  try {
    return await fn();
  } finally {
    await release();
  }
}

function writePrivate(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

async function editUserSshConfig(edit: (text: string) => string): Promise<void> {
  // A config kept as a symlink (dotfiles) stays one: the file it points to is edited.
  const link = userSshConfig();
  const file = fs.existsSync(link) ? fs.realpathSync(link) : link;
  await withLock(file, () => {
    const text = fs.readFileSync(file, 'utf8');
    const next = edit(text);
    if (next !== text) writePrivate(file, next);
  });
}

/**
 * Writes the job's Host entries from the VMs its runtime dir holds (and the names of gone ones),
 * and includes them from ~/.ssh/config while there are any (under the job file's lock, so a boot
 * and a stop of one job never leave the include and the file disagreeing).
 */
async function updateSshHosts(): Promise<void> {
  const file = jobSshConfig();
  const job = jobId();
  await withLock(file, async () => {
    const text = jobHostsText(path.dirname(file), readVms(), fs.readFileSync(file, 'utf8'));
    if (text) {
      writePrivate(file, text);
      await editUserSshConfig((t) => `${jobBlock(file, job)}\n${withoutJobBlocks(t, file)}`);
    } else {
      await editUserSshConfig((t) => withoutJobBlocks(t, file));
      writePrivate(file, '');
    }
  });
}

/**
 * Turns the Host entries of VMs found dead into ones that say so. Their Match already refuses
 * them; this drops the port and key from the file. Skipped while a boot or stop of the job holds
 * the file (it writes the file from the same facts), so no ryra-vm call waits on it.
 */
function pruneSshHosts(vms: (VmRecord & { running: boolean })[]): void {
  const dead = vms.filter((v) => !v.running);
  const file = jobSshConfig();
  if (!dead.length || !fs.existsSync(file)) return;
  if (!dead.some((v) => fs.readFileSync(file, 'utf8').includes(`Match originalhost ${v.name} `))) return;
  let release: () => void;
  try {
    release = lockfile.lockSync(file, { realpath: false, stale: 10_000 });
  } catch {
    return;
  }
  try {
    const text = jobHostsText(path.dirname(file), readVms(), fs.readFileSync(file, 'utf8'));
    // A dead VM keeps an entry (the one that refuses): the file is never empty here, the include stays.
    if (text) writePrivate(file, text);
  } finally {
    release();
  }
}

/** Removes the job's include from ~/.ssh/config (the post step, after its VMs are stopped). */
export async function forgetSshHosts(): Promise<void> {
  const file = jobSshConfig();
  if (fs.existsSync(userSshConfig())) await editUserSshConfig((t) => withoutJobBlocks(t, file));
  fs.rmSync(file, { force: true });
}
