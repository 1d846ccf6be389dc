#!/usr/bin/env node
// `ryra-vm`: the action's engine from a shell. Options go through the same input parser.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { evict, dirBytes } from './cache/local.js';
import { readHooks } from './env.js';
import { Inputs, type InputName } from './contract.js';
import { setupHost } from './host/setup.js';
import { INPUT_DEFAULTS, InputError, defaultCacheDir, currentHost, parseConfig, parseForward, parseSize, parseSyncMaxSize, type SyncMode } from './inputs.js';
import { errorMessage, log, plainLogger, setLogger } from './log.js';
import { ensureLayers } from './layers/pipeline.js';
import { runScript } from './run.js';
import { VERSION } from './version.js';
import { download, upload } from './vm/transfer.js';
import { SshClient } from './vm/ssh.js';
import { bootVm, checkVmName, findVm, getVm, listVms, stopVm, vmTarget, type VmRecord } from './vms.js';

const USAGE: Record<string, string> = {
  prepare: `ryra-vm prepare [options]
  Build or reuse the image layers; print the outputs. The flags are the action's layer inputs, with
  its defaults and checks, except that the Actions cache is off (there is none outside Actions) and
  host tools are installed only with --install-deps. The action's boot, forward, boot-timeout,
  environment-variables, sync, sync-max-size and registry-token inputs have no flags: see
  ryra-vm boot and ryra-vm run (the registry's token is the environment variable RYRA_VM_REGISTRY_TOKEN).
  --distro D            debian-13 | fedora-43 | ubuntu-24.04       [debian-13]
  --arch A              auto | arm64 | amd64                       [auto]
  --memory MB           guest memory in MiB, at least 512          [2048]
  --cpus N              guest vCPUs                                [2]
  --browser             also build the browser layer and snapshot
  --browser-source S    auto | upstream | registries               [auto]
  --kvm MODE            auto | true | false                        [auto]
  --kvm-fix-permissions M  auto | true | false: add the udev rule that opens a /dev/kvm closed
                        to this user, with sudo -n (auto: on GitHub-hosted runners)   [auto]
  --packages "a b"      extra guest packages
  --base-packages B     true | false: the catalogue's list (podman & co.) as well   [true]
  --prepare FILE        a script run once in the prepared layer (part of its key)
  --image-url URL       cloud image: http(s)://, file:// or a path
  --image-checksum C    sha512:HEX or sha256:HEX (with --image-url: this or the next)
  --image-checksum-url U  with --image-url: its publisher's checksum file, read each run
  --cache-dir DIR       layer cache       [$XDG_CACHE_HOME/ryra-vm or ~/.cache/ryra-vm]
  --cache-max-size S    evict least-recently-used layers over this size (0: never)  [20G]
  --disk-size S         guest disk size                            [20G]
  --no-snapshot         skip the savevm snapshot layer
  --redownload          download the image again and rebuild the layers above it
  --install-deps        install missing host tools with apt, dnf or pacman (off unless given)
  --cache-save B        true | false: save built layers to a remote cache, or only read it   [true]
  --registry R          an OCI repository for the layers (e.g. ghcr.io/OWNER/ryra-vm-layers);
                        its token comes from the environment variable RYRA_VM_REGISTRY_TOKEN
  --json                print one JSON object whose keys are the action's output names`,
  boot: `ryra-vm boot [--name N] [--forward HOST:GUEST]... [--browser] [--memory MB] [--cpus N] [--config FILE] [--cache-dir DIR] [--json]
  Start a VM from the snapshot (per-VM disk copies and its own SSH key), wait for SSH. Without a
  snapshot, or when its restore fails, cold-boot the prepared image. --config names a run record
  (the action's manifest output, or the JSON ryra-vm prepare --json printed); default: the newest.
  A name is lowercase letters, digits and - (default vm1, vm2, …). --forward HOST:GUEST forwards
  127.0.0.1:HOST on this host to the guest's TCP port GUEST (repeatable; a taken port fails).
  The VM gets a Host entry this job's ssh reads: ssh NAME, scp, rsync -e ssh work (in Actions,
  in the job's later steps; ~/.ssh/config includes the job's entries where RYRA_VM_JOB is the job's).`,
  run: `ryra-vm run [--name N | --fresh] [--forward HOST:GUEST]... [--browser] [--sync in|both|none] [--sync-max-size S] [--exclude PATTERN]... [--env NAME]... [--config FILE] SCRIPT
  Run SCRIPT (a file, as a step's {0}) with bash -e in the VM, in the workspace's own path
  ($GITHUB_WORKSPACE, else the current directory), starting in the step's working directory: the
  workspace is synced in first and the changed files back after (within --sync-max-size [the
  action's sync-max-size, 4G]; only files, dirs and symlinks that stay inside the workspace); CI,
  GITHUB_* and RUNNER_* but no *_TOKEN (plus --env names) are passed; output streams live;
  the exit status is the script's. Default VM: "default", booted on first use and reused by later
  steps; --fresh restores a new VM for this step and stops it after. --forward as for boot, for
  the VM this command boots.
  Use it as a step's shell:   shell: ryra-vm run {0}`,
  ssh: `ryra-vm ssh NAME [-- CMD...]
  Run CMD in the VM (its exit code is passed on), or an interactive shell without CMD.`,
  cp: `ryra-vm cp SRC DST
  Copy files or directories; exactly one side is NAME:path.`,
  stop: `ryra-vm stop NAME | --all
  Stop VMs and remove their disks, SSH host entries and holds on the cache.`,
  list: `ryra-vm list [--json]
  Name, port, pid, uptime and image of every VM.`,
  gc: `ryra-vm gc [--cache-dir DIR] [--max-size SIZE]
  Evict least-recently-used layers until the cache dir fits SIZE [20G]; layers in use by a job or a
  running VM are never evicted.`,
};

export const HELP = `ryra-vm ${VERSION} — QEMU VMs from cached, snapshotted image layers

Usage:
  ryra-vm prepare [options]     build or reuse the image layers; print the outputs
  ryra-vm boot [--name N] …     start a VM from the snapshot, wait for SSH
  ryra-vm run [--fresh] SCRIPT  run a script in a VM with the workspace (a step's shell: ryra-vm run {0})
  ryra-vm ssh NAME [-- CMD...]  run CMD in the VM (exit code passed on), or an interactive shell
  ryra-vm cp SRC DST            copy files or directories; one side is NAME:path
  ryra-vm stop NAME | --all     stop VMs and remove their disks
  ryra-vm list [--json]         name, port, pid, uptime, image of every VM
  ryra-vm gc [--max-size S]     evict least-recently-used layers over the size budget
  ryra-vm COMMAND --help        the options of a command
  ryra-vm --help | --version

${USAGE.prepare}
`;

type Options = NonNullable<NonNullable<Parameters<typeof parseArgs>[0]>['options']>;

function parseOptions<T extends Options>(cmd: string, args: string[], options: T) {
  try {
    return parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new InputError(`${errorMessage(err).replace(/\. To specify.*$/, '')} (see ryra-vm ${cmd} --help)`);
  }
}

function help(cmd: string): number {
  process.stdout.write(USAGE[cmd] + '\n');
  return 0;
}

const PREPARE_OPTIONS = {
  distro: { type: 'string' },
  arch: { type: 'string' },
  memory: { type: 'string' },
  cpus: { type: 'string' },
  browser: { type: 'boolean' },
  'browser-source': { type: 'string' },
  kvm: { type: 'string' },
  'kvm-fix-permissions': { type: 'string' },
  packages: { type: 'string' },
  'base-packages': { type: 'string' },
  'cache-save': { type: 'string' },
  prepare: { type: 'string' },
  'image-url': { type: 'string' },
  'image-checksum-url': { type: 'string' },
  'image-checksum': { type: 'string' },
  'cache-dir': { type: 'string' },
  'cache-max-size': { type: 'string' },
  'disk-size': { type: 'string' },
  'no-snapshot': { type: 'boolean' },
  redownload: { type: 'boolean' },
  'install-deps': { type: 'boolean' },
  registry: { type: 'string' },
  json: { type: 'boolean' },
} as const;

async function prepare(args: string[]): Promise<number> {
  const { values, positionals } = parseOptions('prepare', args, PREPARE_OPTIONS);
  if (values.help) return help('prepare');
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm prepare --help)`);
  const v = values as Record<string, string | boolean | undefined>;
  let prepareScript = '';
  if (v.prepare) {
    try {
      prepareScript = fs.readFileSync(v.prepare as string, 'utf8');
    } catch (err) {
      throw new InputError(`invalid --prepare: ${errorMessage(err)}`);
    }
  }
  const raw: Partial<Record<InputName, string>> = {
    [Inputs.Distro]: v.distro as string,
    [Inputs.Arch]: v.arch as string,
    [Inputs.Memory]: v.memory as string,
    [Inputs.Cpus]: v.cpus as string,
    [Inputs.Browser]: v.browser ? 'true' : 'false',
    [Inputs.BrowserSource]: v['browser-source'] as string,
    [Inputs.Kvm]: v.kvm as string,
    [Inputs.KvmFixPermissions]: v['kvm-fix-permissions'] as string,
    [Inputs.Packages]: v.packages as string,
    [Inputs.BasePackages]: v['base-packages'] as string,
    [Inputs.CacheSave]: v['cache-save'] as string,
    [Inputs.Prepare]: prepareScript,
    [Inputs.ImageUrl]: v['image-url'] as string,
    [Inputs.ImageChecksum]: v['image-checksum'] as string,
    [Inputs.ImageChecksumUrl]: v['image-checksum-url'] as string,
    [Inputs.CacheDir]: v['cache-dir'] as string,
    [Inputs.CacheMaxSize]: v['cache-max-size'] as string,
    [Inputs.DiskSize]: v['disk-size'] as string,
    [Inputs.Snapshot]: v['no-snapshot'] ? 'false' : 'true',
    [Inputs.Redownload]: v.redownload ? 'true' : 'false',
    // Outside Actions there is no Actions cache, and installing packages is opt-in.
    [Inputs.Cache]: 'false',
    [Inputs.InstallDeps]: v['install-deps'] ? 'true' : 'false',
    [Inputs.Registry]: v.registry as string,
    [Inputs.RegistryToken]: process.env.RYRA_VM_REGISTRY_TOKEN,
  };
  const config = parseConfig((n) => raw[n]);
  const hooks = readHooks();
  const host = await setupHost(config, hooks);
  const result = await ensureLayers(config, host, undefined, { hooks });
  if (v.json) process.stdout.write(JSON.stringify(result.outputs, null, 2) + '\n');
  else {
    for (const l of result.layers) log.info(`${l.layer.padEnd(17)} ${l.source.padEnd(13)} ${l.seconds.toFixed(1).padStart(7)} s`);
    for (const [k, val] of Object.entries(result.outputs)) process.stdout.write(`${k}=${val}\n`);
  }
  return 0;
}

const BOOT_OPTIONS = {
  name: { type: 'string' },
  forward: { type: 'string', multiple: true },
  browser: { type: 'boolean' },
  memory: { type: 'string' },
  cpus: { type: 'string' },
  config: { type: 'string' },
  'cache-dir': { type: 'string' },
  json: { type: 'boolean' },
} as const;

/** The --forward flags: HOST:GUEST each. */
function forwards(values: string[] | undefined) {
  return (values ?? []).map((f) => parseForward('--forward', f));
}

function optionalInt(flag: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new InputError(`invalid ${flag}: ${JSON.stringify(v)} (a whole number, at least ${min})`);
  return Number(v);
}

async function boot(args: string[]): Promise<number> {
  const { values, positionals } = parseOptions('boot', args, BOOT_OPTIONS);
  if (values.help) return help('boot');
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm boot --help)`);
  const v = values as Record<string, string | boolean | undefined>;
  const vm = await bootVm({
    name: v.name as string | undefined,
    browser: !!v.browser,
    memoryMb: optionalInt('--memory', v.memory as string | undefined, 512),
    cpus: optionalInt('--cpus', v.cpus as string | undefined, 1),
    config: v.config as string | undefined,
    cacheDir: v['cache-dir'] as string | undefined,
    forwards: forwards(values.forward),
    hooks: readHooks(),
  });
  if (v.json) process.stdout.write(JSON.stringify(vm) + '\n');
  else process.stdout.write(`${vm.name} port=${vm.port} pid=${vm.pid} ready in ${(vm.readyMs / 1000).toFixed(1)} s (${vm.mode})\n`);
  return 0;
}

const RUN_OPTIONS = {
  name: { type: 'string' },
  forward: { type: 'string', multiple: true },
  fresh: { type: 'boolean' },
  browser: { type: 'boolean' },
  sync: { type: 'string' },
  'sync-max-size': { type: 'string' },
  exclude: { type: 'string', multiple: true },
  env: { type: 'string', multiple: true },
  config: { type: 'string' },
  'cache-dir': { type: 'string' },
} as const;

async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseOptions('run', args, RUN_OPTIONS);
  if (values.help) return help('run');
  if (positionals.length !== 1) throw new InputError('ryra-vm run takes one SCRIPT file (see ryra-vm run --help)');
  const v = values as Record<string, string | boolean | string[] | undefined>;
  if (v.fresh && v.name) throw new InputError('ryra-vm run: --fresh and --name exclude each other');
  if (v.name) checkVmName(v.name as string);
  // For the VM this command boots, when it boots one: a running VM keeps the forwards it has.
  const fwd = forwards(v.forward as string[] | undefined);
  const running = v.fresh ? undefined : findVm((v.name as string | undefined) ?? 'default');
  const differ = (a: typeof fwd, b: typeof fwd) => JSON.stringify(a.map((f) => [f.host, f.guest]).sort()) !== JSON.stringify(b.map((f) => [f.host, f.guest]).sort());
  if (fwd.length && running?.running && differ(fwd, running.forwards ?? [])) {
    throw new InputError(`invalid --forward: VM ${running.name} is already running with other forwards (--forward applies when run boots the VM: ryra-vm stop ${running.name} first, or use --fresh)`);
  }
  const sync = v.sync as string | undefined;
  if (sync !== undefined && !['in', 'both', 'none'].includes(sync)) throw new InputError(`invalid --sync: ${JSON.stringify(sync)} (allowed: in, both, none)`);
  for (const n of (v.env as string[] | undefined) ?? []) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(n)) throw new InputError(`invalid --env: ${JSON.stringify(n)} (an environment variable name)`);
  return runScript({
    script: positionals[0],
    name: v.name as string | undefined,
    fresh: !!v.fresh,
    browser: !!v.browser,
    sync: sync as SyncMode | undefined,
    syncMaxBytes: v['sync-max-size'] === undefined ? undefined : parseSyncMaxSize(v['sync-max-size'] as string),
    excludes: (v.exclude as string[] | undefined) ?? [],
    env: (v.env as string[] | undefined) ?? [],
    config: v.config as string | undefined,
    cacheDir: v['cache-dir'] as string | undefined,
    forwards: fwd,
    hooks: readHooks(),
  });
}

async function ssh(args: string[]): Promise<number> {
  const dash = args.indexOf('--');
  const before = dash >= 0 ? args.slice(0, dash) : args;
  if (before.includes('--help') || before.includes('-h')) return help('ssh');
  const [name, ...extra] = before;
  if (!name) throw new InputError('ryra-vm ssh needs a VM name (see ryra-vm list)');
  if (extra.length) throw new InputError(`unexpected argument: ${extra[0]} (put the command after --)`);
  const command = dash >= 0 ? args.slice(dash + 1).join(' ') : '';
  const vm = getVm(name);
  const client = await connectVm(vm);
  try {
    if (command) {
      const r = await client.exec(command, { stdout: process.stdout, stderr: process.stderr, input: process.stdin.isTTY ? undefined : await readStdin(), timeoutMs: 24 * 3600_000 });
      return r.code;
    }
    const tty = process.stdin.isTTY;
    if (tty) process.stdin.setRawMode(true);
    try {
      return await client.shell(process.stdin, process.stdout, { rows: process.stdout.rows || 24, cols: process.stdout.columns || 80, term: process.env.TERM || 'xterm' });
    } finally {
      if (tty) process.stdin.setRawMode(false);
      process.stdin.pause();
    }
  } finally {
    client.end();
  }
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function connectVm(vm: VmRecord): Promise<SshClient> {
  return SshClient.connect(vmTarget(vm), 30_000);
}

async function cp(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) return help('cp');
  if (args.length !== 2) throw new InputError('ryra-vm cp takes SRC and DST, one of them NAME:path (see ryra-vm cp --help)');
  const remote = (s: string) => /^([A-Za-z0-9][A-Za-z0-9_.-]*):(.*)$/.exec(s);
  const [src, dst] = args;
  const rs = remote(src);
  const rd = remote(dst);
  if (!!rs === !!rd) throw new InputError('ryra-vm cp: exactly one of SRC and DST must be NAME:path');
  const vm = getVm((rs ?? rd)![1]);
  const client = await connectVm(vm);
  try {
    const sftp = await client.sftp();
    const n = rs ? await download(sftp, rs[2] || '.', dst) : await upload(sftp, src, rd![2] || '.');
    log.info(`copied ${n} file${n === 1 ? '' : 's'}`);
    return 0;
  } finally {
    client.end();
  }
}

async function stop(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) return help('stop');
  if (args.length !== 1) throw new InputError('ryra-vm stop takes one VM name, or --all');
  const targets = args[0] === '--all' ? listVms() : [listVms().find((v) => v.name === args[0]) ?? getVm(args[0])];
  for (const vm of targets) {
    await stopVm(vm);
    log.info(`stopped ${vm.name}`);
  }
  return 0;
}

function list(args: string[]): number {
  if (args.includes('--help') || args.includes('-h')) return help('list');
  const vms = listVms();
  if (args.includes('--json')) {
    process.stdout.write(JSON.stringify(vms) + '\n');
    return 0;
  }
  const rows = vms.map((v) => [v.name, String(v.port), String(v.pid), v.running ? `${Math.round((Date.now() - Date.parse(v.startedAt)) / 1000)}s` : 'exited', path.basename(v.image)]);
  for (const r of [['NAME', 'PORT', 'PID', 'UPTIME', 'IMAGE'], ...rows]) process.stdout.write(r.map((c, i) => (i < 4 ? c.padEnd(i === 0 ? 12 : 8) : c)).join(' ') + '\n');
  return 0;
}

async function gc(args: string[]): Promise<number> {
  const { values, positionals } = parseOptions('gc', args, { 'cache-dir': { type: 'string' }, 'max-size': { type: 'string' } } as const);
  if (values.help) return help('gc');
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm gc --help)`);
  const dir = path.resolve((values['cache-dir'] as string | undefined) ?? defaultCacheDir(currentHost()));
  const max = parseSize(Inputs.CacheMaxSize, (values['max-size'] as string | undefined) ?? INPUT_DEFAULTS[Inputs.CacheMaxSize]);
  const before = dirBytes(dir);
  const { evicted, bytes } = await evict(dir, max);
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  process.stdout.write(`${dir}: ${mib(before)} → ${mib(bytes)}; evicted ${evicted.length} layer${evicted.length === 1 ? '' : 's'}${evicted.map((e) => `\n  ${e.base} (${mib(e.bytes)})`).join('')}\n`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  setLogger(plainLogger());
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case undefined:
      case '--help':
      case '-h':
      case 'help':
        process.stdout.write(HELP);
        return cmd === undefined ? 2 : 0;
      case '--version':
      case '-V':
        process.stdout.write(`${VERSION}\n`);
        return 0;
      case 'prepare':
        return await prepare(rest);
      case 'boot':
        return await boot(rest);
      case 'run':
        return await run(rest);
      case 'ssh':
        return await ssh(rest);
      case 'cp':
        return await cp(rest);
      case 'stop':
        return await stop(rest);
      case 'list':
        return list(rest);
      case 'gc':
        return await gc(rest);
      default:
        throw new InputError(`unknown command: ${cmd} (available: prepare, boot, run, ssh, cp, stop, list, gc; see ryra-vm --help)`);
    }
  } catch (err) {
    process.stderr.write(`ryra-vm: ${errorMessage(err)}\n`);
    return err instanceof InputError ? 2 : 1;
  }
}

// A command whose work is left waiting on nothing would let Node exit when its event loop runs
// empty — silently, with status 0 once a dependency hooks process exit (proper-lockfile's
// signal-exit does). That must read as the failure it is.
let finished = false;
process.on('exit', (code) => {
  if (finished) return;
  process.stderr.write('ryra-vm: internal error: the command stopped before it finished (nothing left to wait on)\n');
  process.exitCode = code || 70;
});
const status = await main(process.argv.slice(2));
finished = true;
process.exit(status);
