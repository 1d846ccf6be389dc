#!/usr/bin/env node
// `ryra-vm`: the action's engine from a shell. Options go through the same input parser.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { Inputs, type InputName } from './contract.js';
import { setupHost } from './host/setup.js';
import { InputError, parseConfig } from './inputs.js';
import { errorMessage, log, plainLogger, setLogger } from './log.js';
import { ensureLayers } from './layers/pipeline.js';
import { VERSION } from './version.js';
import { download, upload } from './vm/transfer.js';
import { SshClient } from './vm/ssh.js';
import { bootVm, getVm, listVms, stopVm, type VmRecord } from './vms.js';

export const HELP = `ryra-vm ${VERSION} — QEMU VMs from cached, snapshotted image layers

Usage:
  ryra-vm prepare [options]     build or reuse the image layers; print the outputs
  ryra-vm boot [--name N] [--browser] [--memory MB] [--cpus N] [--cache-dir DIR] [--json]
                                start a VM from the snapshot (per-VM disk copies), wait for SSH
  ryra-vm ssh NAME [-- CMD...]  run CMD in the VM (exit code passed on), or an interactive shell
  ryra-vm cp SRC DST            copy files or directories; one side is NAME:path
  ryra-vm stop NAME | --all     stop VMs and remove their disks
  ryra-vm list [--json]         name, port, pid, uptime, image of every VM
  ryra-vm --help | --version

prepare options (the action's inputs; same defaults, same checks):
  --distro D            debian-13 | fedora-43                      [debian-13]
  --arch A              auto | arm64 | amd64                       [auto]
  --memory MB           guest memory in MiB, at least 512          [2048]
  --cpus N              guest vCPUs                                [2]
  --browser             also build the browser layer and snapshot
  --kvm MODE            auto | true | false                        [auto]
  --packages "a b"      extra guest packages
  --image-url URL       cloud image: http(s)://, file:// or a path
  --image-checksum C    sha512:HEX or sha256:HEX (needed with --image-url)
  --cache-dir DIR       layer cache       [$XDG_CACHE_HOME/ryra-vm or ~/.cache/ryra-vm]
  --no-snapshot         skip the savevm snapshot layer
  --redownload          download the image again and rebuild the layers above it
  --install-deps        install missing host tools with apt, dnf or pacman
  --json                print one JSON object whose keys are the action's output names
`;

const PREPARE_OPTIONS = {
  distro: { type: 'string' },
  arch: { type: 'string' },
  memory: { type: 'string' },
  cpus: { type: 'string' },
  browser: { type: 'boolean' },
  kvm: { type: 'string' },
  packages: { type: 'string' },
  'image-url': { type: 'string' },
  'image-checksum': { type: 'string' },
  'cache-dir': { type: 'string' },
  'no-snapshot': { type: 'boolean' },
  redownload: { type: 'boolean' },
  'install-deps': { type: 'boolean' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function parseOptions<T extends NonNullable<NonNullable<Parameters<typeof parseArgs>[0]>["options"]>>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new InputError(`${errorMessage(err).replace(/\. To specify.*$/, '')} (see ryra-vm --help)`);
  }
}

async function prepare(args: string[]): Promise<number> {
  const { values, positionals } = parseOptions(args, PREPARE_OPTIONS);
  if (values.help) return (process.stdout.write(HELP), 0);
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm --help)`);
  const v = values as Record<string, string | boolean | undefined>;
  const raw: Partial<Record<InputName, string>> = {
    [Inputs.Distro]: v.distro as string,
    [Inputs.Arch]: v.arch as string,
    [Inputs.Memory]: v.memory as string,
    [Inputs.Cpus]: v.cpus as string,
    [Inputs.Browser]: v.browser ? 'true' : 'false',
    [Inputs.Kvm]: v.kvm as string,
    [Inputs.Packages]: v.packages as string,
    [Inputs.ImageUrl]: v['image-url'] as string,
    [Inputs.ImageChecksum]: v['image-checksum'] as string,
    [Inputs.CacheDir]: v['cache-dir'] as string,
    [Inputs.Snapshot]: v['no-snapshot'] ? 'false' : 'true',
    [Inputs.Redownload]: v.redownload ? 'true' : 'false',
    // Outside Actions there is no Actions cache, and installing packages is opt-in.
    [Inputs.Cache]: 'false',
    [Inputs.InstallDeps]: v['install-deps'] ? 'true' : 'false',
  };
  const config = parseConfig((n) => raw[n]);
  const host = await setupHost(config);
  const result = await ensureLayers(config, host);
  if (v.json) process.stdout.write(JSON.stringify(result.outputs, null, 2) + '\n');
  else {
    for (const l of result.layers) log.info(`${l.layer.padEnd(17)} ${l.source.padEnd(13)} ${l.seconds.toFixed(1).padStart(7)} s`);
    for (const [k, val] of Object.entries(result.outputs)) process.stdout.write(`${k}=${val}\n`);
  }
  return 0;
}

const BOOT_OPTIONS = {
  name: { type: 'string' },
  browser: { type: 'boolean' },
  memory: { type: 'string' },
  cpus: { type: 'string' },
  'cache-dir': { type: 'string' },
  json: { type: 'boolean' },
} as const;

function optionalInt(flag: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new InputError(`invalid ${flag}: ${JSON.stringify(v)} (a whole number, at least ${min})`);
  return Number(v);
}

async function boot(args: string[]): Promise<number> {
  const { values, positionals } = parseOptions(args, BOOT_OPTIONS);
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm --help)`);
  const v = values as Record<string, string | boolean | undefined>;
  const vm = await bootVm({
    name: v.name as string | undefined,
    browser: !!v.browser,
    memoryMb: optionalInt('--memory', v.memory as string | undefined, 512),
    cpus: optionalInt('--cpus', v.cpus as string | undefined, 1),
    cacheDir: v['cache-dir'] as string | undefined,
  });
  if (v.json) process.stdout.write(JSON.stringify(vm) + '\n');
  else process.stdout.write(`${vm.name} port=${vm.port} pid=${vm.pid} ready in ${(vm.readyMs / 1000).toFixed(1)} s (${vm.mode})\n`);
  return 0;
}

async function ssh(args: string[]): Promise<number> {
  const dash = args.indexOf('--');
  const [name, ...extra] = dash >= 0 ? args.slice(0, dash) : args;
  if (!name) throw new InputError('ryra-vm ssh needs a VM name (see ryra-vm list)');
  if (extra.length) throw new InputError(`unexpected argument: ${extra[0]} (put the command after --)`);
  const command = dash >= 0 ? args.slice(dash + 1).join(' ') : '';
  const vm = getVm(name);
  const client = await connectVm(vm);
  try {
    if (command) {
      const r = await client.exec(command, { stdout: process.stdout, stderr: process.stderr, input: process.stdin.isTTY ? undefined : await readStdin() });
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
  return SshClient.connect({ port: vm.port, user: vm.user, privateKey: fs.readFileSync(vm.key, 'utf8') }, 30_000);
}

async function cp(args: string[]): Promise<number> {
  if (args.length !== 2) throw new InputError('ryra-vm cp takes SRC and DST, one of them NAME:path');
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
  if (args.length !== 1) throw new InputError('ryra-vm stop takes one VM name, or --all');
  const targets = args[0] === '--all' ? listVms() : [listVms().find((v) => v.name === args[0]) ?? getVm(args[0])];
  for (const vm of targets) {
    await stopVm(vm);
    log.info(`stopped ${vm.name}`);
  }
  return 0;
}

function list(args: string[]): number {
  const vms = listVms();
  if (args.includes('--json')) {
    process.stdout.write(JSON.stringify(vms) + '\n');
    return 0;
  }
  const rows = vms.map((v) => [v.name, String(v.port), String(v.pid), v.running ? `${Math.round((Date.now() - Date.parse(v.startedAt)) / 1000)}s` : 'exited', path.basename(v.image)]);
  for (const r of [['NAME', 'PORT', 'PID', 'UPTIME', 'IMAGE'], ...rows]) process.stdout.write(r.map((c, i) => (i < 4 ? c.padEnd(i === 0 ? 12 : 8) : c)).join(' ') + '\n');
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
      case 'ssh':
        return await ssh(rest);
      case 'cp':
        return await cp(rest);
      case 'stop':
        return await stop(rest);
      case 'list':
        return list(rest);
      default:
        throw new InputError(`unknown command: ${cmd} (available: prepare, boot, ssh, cp, stop, list; see ryra-vm --help)`);
    }
  } catch (err) {
    process.stderr.write(`ryra-vm: ${errorMessage(err)}\n`);
    return err instanceof InputError ? 2 : 1;
  }
}

process.exit(await main(process.argv.slice(2)));
