#!/usr/bin/env node
// `ryra-vm`: the action's engine from a shell. Options go through the same input parser.
import { parseArgs } from 'node:util';
import { Inputs, type InputName } from './contract.js';
import { setupHost } from './host/setup.js';
import { InputError, parseConfig } from './inputs.js';
import { errorMessage, log, plainLogger, setLogger } from './log.js';
import { ensureLayers } from './layers/pipeline.js';
import { VERSION } from './version.js';

export const HELP = `ryra-vm ${VERSION} — QEMU VMs from cached, snapshotted image layers

Usage:
  ryra-vm prepare [options]     build or reuse the image layers; print the outputs
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
      default:
        throw new InputError(`unknown command: ${cmd} (available: prepare; see ryra-vm --help)`);
    }
  } catch (err) {
    process.stderr.write(`ryra-vm: ${errorMessage(err)}\n`);
    return err instanceof InputError ? 2 : 1;
  }
}

process.exit(await main(process.argv.slice(2)));
