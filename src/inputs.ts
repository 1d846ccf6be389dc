// One parser for the action's inputs and the CLI's options: raw strings in, one typed Config out.
// Every bad value fails here, before any work, with one line naming the input, the value and what
// is allowed.
import * as os from 'node:os';
import * as path from 'node:path';
import { Inputs, type InputName } from './contract.js';
import { parseRegistryRef } from './cache/oci.js';
import { ARCHES, DISTROS, isDistro, type Arch, type DistroName } from './distro.js';
import { VM_NAME_RE, VM_NAME_RULE } from './names.js';
import type { Forward } from './vm/spec.js';

export type KvmMode = 'auto' | 'true' | 'false';
export type SyncMode = 'in' | 'both' | 'none';
export type BrowserSource = 'auto' | 'upstream' | 'registries';
export type ChecksumAlgorithm = 'sha256' | 'sha512';
export interface Checksum {
  algorithm: ChecksumAlgorithm;
  hex: string;
}

export interface Config {
  distro: DistroName;
  /** Guest architecture (resolved from `auto`). */
  arch: Arch;
  /** True when the guest arch differs from the host's: TCG emulation. */
  crossArch: boolean;
  memoryMb: number;
  cpus: number;
  browser: boolean;
  kvm: KvmMode;
  /**
   * Whether the action adds the udev rule that opens /dev/kvm to every user (with `sudo -n`) when
   * the device exists but this user cannot open it: `kvm-fix-permissions`, whose `auto` means on a
   * GitHub-hosted runner only (RUNNER_ENVIRONMENT), whose system is the job's to change.
   */
  kvmFixPermissions: boolean;
  redownload: boolean;
  snapshot: boolean;
  cache: boolean;
  /** Save built layers to the Actions cache (and registry); false: only restore from them. */
  cacheSave: boolean;
  cacheDir: string;
  packages: string[];
  /** Install the catalogue's package list (podman & co.) besides `packages`; part of the prepared layer's key. */
  basePackages: boolean;
  imageUrl?: string;
  imageChecksum?: Checksum;
  /** With imageUrl: its publisher's checksum file, read each run (the image's digest keys its layers). */
  imageChecksumUrl?: string;
  installDeps: boolean;
  /** Size budget of the local cache dir in bytes (0: none). */
  cacheMaxBytes: number;
  /** A script run once in the prepared layer (hashed into its key); '' for none. */
  prepareScript: string;
  browserSource: BrowserSource;
  /** Virtual size of a VM's disk (qemu-img syntax, e.g. 20G). */
  diskSize: string;
  /** VMs the action step boots itself, so that the first `ryra-vm run` pays nothing. */
  boot: string[];
  /** TCP forwards of the VMs in `boot`, by VM name. */
  forward: Record<string, Forward[]>;
  /** How long a VM boot in a later step may take to answer SSH; undefined: the accelerator's default. */
  bootTimeoutMs?: number;
  /** Extra environment variables `ryra-vm run` passes into the guest (beside CI, GITHUB_*, RUNNER_*). */
  environmentVariables: string[];
  sync: SyncMode;
  /** Byte budget of what `ryra-vm run` syncs back from the guest after a step. */
  syncMaxBytes: number;
  /** An OCI repository for the layers (ghcr.io/OWNER/ryra-vm-layers); undefined: the tier is off. */
  registry?: string;
  /** Its credentials (the password of Basic credentials at the token realm, or USER:PASSWORD). */
  registryToken?: string;
}

export class InputError extends Error {
  override name = 'InputError';
}

export const INPUT_DEFAULTS: Record<InputName, string> = {
  [Inputs.Distro]: 'debian-13',
  [Inputs.Arch]: 'auto',
  [Inputs.Memory]: '2048',
  [Inputs.Cpus]: '2',
  [Inputs.Browser]: 'false',
  [Inputs.Kvm]: 'auto',
  [Inputs.KvmFixPermissions]: 'auto',
  [Inputs.Redownload]: 'false',
  [Inputs.Snapshot]: 'true',
  [Inputs.Cache]: 'true',
  [Inputs.CacheSave]: 'true',
  [Inputs.CacheDir]: '',
  [Inputs.Packages]: '',
  [Inputs.BasePackages]: 'true',
  [Inputs.ImageUrl]: '',
  [Inputs.ImageChecksum]: '',
  [Inputs.ImageChecksumUrl]: '',
  [Inputs.InstallDeps]: 'true',
  [Inputs.CacheMaxSize]: '20G',
  [Inputs.Prepare]: '',
  [Inputs.BrowserSource]: 'auto',
  [Inputs.DiskSize]: '20G',
  [Inputs.Boot]: '',
  [Inputs.Forward]: '',
  [Inputs.BootTimeout]: '',
  [Inputs.EnvironmentVariables]: '',
  [Inputs.Sync]: 'both',
  [Inputs.SyncMaxSize]: '4G',
  [Inputs.Registry]: '',
  // Read as given (no default applied): GitHub substitutes the expression before the action runs.
  [Inputs.RegistryToken]: '${{ github.token }}',
};

export const MIN_MEMORY_MB = 512;
export const MAX_MEMORY_MB = 1024 * 1024;
export const MAX_CPUS = 256;
const DIGEST_HEX_LENGTH: Record<ChecksumAlgorithm, number> = { sha256: 64, sha512: 128 };
// A Debian/Fedora package name (or name=version, name:arch); rejects shell metacharacters.
const PACKAGE_RE = /^[A-Za-z0-9][A-Za-z0-9+._:=~@-]*$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

export interface HostFacts {
  arch: Arch;
  env: NodeJS.ProcessEnv;
  homedir: string;
}

export function hostArch(nodeArch: string = process.arch): Arch {
  if (nodeArch === 'arm64') return 'arm64';
  if (nodeArch === 'x64') return 'amd64';
  throw new InputError(`unsupported host architecture: ${nodeArch} (supported: arm64, amd64)`);
}

export function currentHost(): HostFacts {
  return { arch: hostArch(), env: process.env, homedir: os.homedir() };
}

/** The seed's cache location: $XDG_CACHE_HOME/ryra-vm, else ~/.cache/ryra-vm. */
export function defaultCacheDir(host: Pick<HostFacts, 'env' | 'homedir'>): string {
  const xdg = host.env.XDG_CACHE_HOME;
  return path.join(xdg && path.isAbsolute(xdg) ? xdg : path.join(host.homedir, '.cache'), 'ryra-vm');
}

function bad(name: InputName, value: string, allowed: string): never {
  throw new InputError(`invalid ${name}: ${JSON.stringify(value)} (${allowed})`);
}

function oneOf<T extends string>(name: InputName, value: string, allowed: readonly T[]): T {
  if ((allowed as readonly string[]).includes(value)) return value as T;
  return bad(name, value, `allowed: ${allowed.join(', ')}`);
}

// The YAML 1.2 core-schema booleans, as @actions/core's getBooleanInput accepts them.
function bool(name: InputName, value: string): boolean {
  if (['true', 'True', 'TRUE'].includes(value)) return true;
  if (['false', 'False', 'FALSE'].includes(value)) return false;
  return bad(name, value, 'allowed: true, false');
}

function integer(name: InputName, value: string, min: number, max: number, unit = ''): number {
  if (!/^\d+$/.test(value)) return bad(name, value, `a whole number${unit} from ${min} to ${max}`);
  const n = Number(value);
  if (n < min || n > max) return bad(name, value, `a whole number${unit} from ${min} to ${max}`);
  return n;
}

export function parseChecksum(value: string): Checksum {
  const m = /^(sha256|sha512):([0-9a-fA-F]*)$/.exec(value);
  if (!m) return bad(Inputs.ImageChecksum, value, 'expected sha512:HEX or sha256:HEX');
  const algorithm = m[1] as ChecksumAlgorithm;
  const hex = m[2].toLowerCase();
  if (hex.length !== DIGEST_HEX_LENGTH[algorithm]) {
    return bad(Inputs.ImageChecksum, value, `a ${algorithm} digest has ${DIGEST_HEX_LENGTH[algorithm]} hex digits, got ${hex.length}`);
  }
  return { algorithm, hex };
}

/** http(s) and file URLs pass through; anything without a scheme is a local path. */
export function parseImageUrl(value: string, cwd = process.cwd(), input: InputName = Inputs.ImageUrl): string {
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(value);
  if (!scheme) return path.resolve(cwd, value);
  const s = scheme[1].toLowerCase();
  if (s === 'http' || s === 'https') {
    try {
      new URL(value);
    } catch {
      return bad(input, value, 'not a valid URL');
    }
    return value;
  }
  if (s === 'file') return value;
  return bad(input, value, 'allowed: http://, https://, file:// or a path');
}

/** A list separated by spaces, commas or newlines, each item checked against `re`. */
function list(name: InputName, value: string, re: RegExp, what: string): string[] {
  const items = value.split(/[\s,]+/).filter(Boolean);
  for (const p of items) if (!re.test(p)) bad(name, p, what);
  return [...new Set(items)];
}

export function parsePackages(value: string): string[] {
  return list(Inputs.Packages, value, PACKAGE_RE, 'not a package name');
}

/** `20G`, `512M`, `1.5T`, `10GiB`, or bytes; binary units. */
export function parseSize(name: InputName, value: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(value.trim());
  if (!m) return bad(name, value, 'a size such as 20G, 512M or 1.5T');
  return Math.round(Number(m[1]) * SIZE_UNITS[m[2].toUpperCase()]);
}

/** An OCI repository such as ghcr.io/OWNER/ryra-vm-layers (plain http only for loopback hosts). */
export function parseRegistry(value: string): string {
  try {
    parseRegistryRef(value);
  } catch (err) {
    return bad(Inputs.Registry, value, `${(err as Error).message}; e.g. ghcr.io/OWNER/ryra-vm-layers, or empty for none`);
  }
  return value;
}

/** The sync-back budget: a size of at least 1M (a budget of nothing would bring nothing back). */
export function parseSyncMaxSize(value: string): number {
  const n = parseSize(Inputs.SyncMaxSize, value);
  if (n < 2 ** 20) bad(Inputs.SyncMaxSize, value, 'a size of at least 1M, such as 4G or 512M');
  return n;
}

const FORWARD_RULE = 'HOST:GUEST, two TCP ports from 1 to 65535, e.g. 8080:80';

/** `HOST:GUEST`: a forward from the host's 127.0.0.1 to a guest port. `what` names the input or flag. */
export function parseForward(what: string, value: string): Forward {
  const m = /^(\d{1,5}):(\d{1,5})$/.exec(value);
  const [host, guest] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  if (!m || host < 1 || host > 65535 || guest < 1 || guest > 65535) throw new InputError(`invalid ${what}: ${JSON.stringify(value)} (${FORWARD_RULE})`);
  return { host, guest };
}

/** The `forward` input: HOST:GUEST for the one VM in `boot`, NAME:HOST:GUEST for one of several. */
function parseBootForwards(value: string, boot: string[]): Record<string, Forward[]> {
  const out: Record<string, Forward[]> = {};
  for (const item of value.split(/[\s,]+/).filter(Boolean)) {
    const named = /^([^:]+):(\d+:\d+)$/.exec(item);
    const vm = named ? named[1] : boot.length === 1 ? boot[0] : undefined;
    if (!boot.length) bad(Inputs.Forward, item, `forwards go to the VMs that ${Inputs.Boot} starts, and it names none`);
    if (!vm) bad(Inputs.Forward, item, `${Inputs.Boot} names several VMs: write NAME:HOST:GUEST`);
    if (!boot.includes(vm)) bad(Inputs.Forward, item, `${vm} is not one of the VMs ${Inputs.Boot} starts (${boot.join(', ')})`);
    (out[vm] ??= []).push(parseForward(Inputs.Forward, named ? named[2] : item));
  }
  return out;
}

/**
 * Parses raw input strings. `get` returns the raw value of an input ('' or undefined when unset);
 * defaults apply to empty values, as GitHub Actions does.
 */
export function parseConfig(get: (name: InputName) => string | undefined, host: HostFacts = currentHost()): Config {
  const raw = (name: InputName): string => {
    const v = (get(name) ?? '').trim();
    return v === '' ? INPUT_DEFAULTS[name] : v;
  };

  const distroValue = raw(Inputs.Distro);
  if (!isDistro(distroValue)) {
    throw new InputError(`unknown distro: ${distroValue} (available: ${DISTROS.join(', ')})`);
  }
  const archValue = raw(Inputs.Arch);
  const arch = archValue === 'auto' ? host.arch : (oneOf(Inputs.Arch, archValue, ['auto', ...ARCHES] as const) as Arch);
  const memoryMb = integer(Inputs.Memory, raw(Inputs.Memory), MIN_MEMORY_MB, MAX_MEMORY_MB, ' of MiB');
  const cpus = integer(Inputs.Cpus, raw(Inputs.Cpus), 1, MAX_CPUS);
  const kvm = oneOf(Inputs.Kvm, raw(Inputs.Kvm), ['auto', 'true', 'false'] as const);
  const kvmFix = oneOf(Inputs.KvmFixPermissions, raw(Inputs.KvmFixPermissions), ['auto', 'true', 'false'] as const);
  const crossArch = arch !== host.arch;
  if (crossArch && kvm === 'true') {
    throw new InputError(
      `invalid ${Inputs.Kvm}: "true" with ${Inputs.Arch} ${arch} on a ${host.arch} host (KVM runs only the host's arch; use kvm: auto or false, or a ${arch} runner)`,
    );
  }

  const imageUrlValue = raw(Inputs.ImageUrl);
  const checksumValue = raw(Inputs.ImageChecksum);
  const checksumUrlValue = raw(Inputs.ImageChecksumUrl);
  const imageUrl = imageUrlValue ? parseImageUrl(imageUrlValue) : undefined;
  const imageChecksum = checksumValue ? parseChecksum(checksumValue) : undefined;
  const imageChecksumUrl = checksumUrlValue ? parseImageUrl(checksumUrlValue, process.cwd(), Inputs.ImageChecksumUrl) : undefined;
  if (imageChecksumUrl && !imageUrl) {
    throw new InputError(`${Inputs.ImageChecksumUrl} ${checksumUrlValue} without ${Inputs.ImageUrl}: it names the checksum file of a custom image (the catalogue's images use their publisher's own)`);
  }
  if (imageChecksum && imageChecksumUrl) {
    throw new InputError(`both ${Inputs.ImageChecksum} and ${Inputs.ImageChecksumUrl} given: give one (a fixed digest, or the publisher's checksum file the image is followed by)`);
  }
  if (imageUrl && !imageChecksum && !imageChecksumUrl) {
    throw new InputError(
      `missing ${Inputs.ImageChecksum} for ${Inputs.ImageUrl} ${imageUrlValue} (give sha512:HEX or sha256:HEX, or ${Inputs.ImageChecksumUrl} with the publisher's checksum file; images are always verified)`,
    );
  }

  const cacheDirValue = raw(Inputs.CacheDir);
  const cacheDir = cacheDirValue
    ? path.resolve(cacheDirValue.replace(/^~(?=$|\/)/, host.homedir))
    : defaultCacheDir(host);

  const diskSize = raw(Inputs.DiskSize);
  if (!/^\d+[KMGT]?$/.test(diskSize) || parseSize(Inputs.DiskSize, diskSize) < 2 ** 30) {
    bad(Inputs.DiskSize, diskSize, 'a whole size of at least 1G, such as 20G or 40960M');
  }
  const boot = list(Inputs.Boot, get(Inputs.Boot) ?? '', VM_NAME_RE, VM_NAME_RULE);
  const bootTimeoutValue = raw(Inputs.BootTimeout);
  const bootTimeoutMs = bootTimeoutValue ? integer(Inputs.BootTimeout, bootTimeoutValue, 1, 24 * 3600, ' of seconds') * 1000 : undefined;

  return {
    distro: distroValue,
    arch,
    crossArch,
    memoryMb,
    cpus,
    browser: bool(Inputs.Browser, raw(Inputs.Browser)),
    kvm,
    // A self-hosted runner's system is its owner's: `auto` changes it only where GitHub hosts it.
    kvmFixPermissions: kvmFix === 'auto' ? host.env.RUNNER_ENVIRONMENT === 'github-hosted' : kvmFix === 'true',
    redownload: bool(Inputs.Redownload, raw(Inputs.Redownload)),
    snapshot: bool(Inputs.Snapshot, raw(Inputs.Snapshot)),
    cache: bool(Inputs.Cache, raw(Inputs.Cache)),
    cacheSave: bool(Inputs.CacheSave, raw(Inputs.CacheSave)),
    cacheDir,
    packages: parsePackages(get(Inputs.Packages) ?? ''),
    basePackages: bool(Inputs.BasePackages, raw(Inputs.BasePackages)),
    imageUrl,
    imageChecksum,
    imageChecksumUrl,
    installDeps: bool(Inputs.InstallDeps, raw(Inputs.InstallDeps)),
    cacheMaxBytes: parseSize(Inputs.CacheMaxSize, raw(Inputs.CacheMaxSize)),
    prepareScript: (get(Inputs.Prepare) ?? '').trim() ? (get(Inputs.Prepare) ?? '') : '',
    browserSource: oneOf(Inputs.BrowserSource, raw(Inputs.BrowserSource), ['auto', 'upstream', 'registries'] as const),
    diskSize,
    boot,
    forward: parseBootForwards(get(Inputs.Forward) ?? '', boot),
    bootTimeoutMs,
    environmentVariables: list(Inputs.EnvironmentVariables, get(Inputs.EnvironmentVariables) ?? '', ENV_NAME_RE, 'an environment variable name'),
    sync: oneOf(Inputs.Sync, raw(Inputs.Sync), ['in', 'both', 'none'] as const),
    syncMaxBytes: parseSyncMaxSize(raw(Inputs.SyncMaxSize)),
    registry: raw(Inputs.Registry) ? parseRegistry(raw(Inputs.Registry)) : undefined,
    // An unsubstituted expression (the default read outside Actions) is no token.
    registryToken: (get(Inputs.RegistryToken) ?? '').trim().replace(/^\$\{\{.*\}\}$/, '') || undefined,
  };
}
