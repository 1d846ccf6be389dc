// One parser for the action's inputs and the CLI's options: raw strings in, one typed Config out.
// Every bad value fails here, before any work, with one line naming the input, the value and what
// is allowed.
import * as os from 'node:os';
import * as path from 'node:path';
import { Inputs, type InputName } from './contract.js';
import { ARCHES, DISTROS, isDistro, type Arch, type DistroName } from './distro.js';

export type KvmMode = 'auto' | 'true' | 'false';
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
  redownload: boolean;
  snapshot: boolean;
  cache: boolean;
  cacheDir: string;
  packages: string[];
  imageUrl?: string;
  imageChecksum?: Checksum;
  installDeps: boolean;
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
  [Inputs.Redownload]: 'false',
  [Inputs.Snapshot]: 'true',
  [Inputs.Cache]: 'true',
  [Inputs.CacheDir]: '',
  [Inputs.Packages]: '',
  [Inputs.ImageUrl]: '',
  [Inputs.ImageChecksum]: '',
  [Inputs.InstallDeps]: 'true',
};

export const MIN_MEMORY_MB = 512;
export const MAX_MEMORY_MB = 1024 * 1024;
export const MAX_CPUS = 256;
const DIGEST_HEX_LENGTH: Record<ChecksumAlgorithm, number> = { sha256: 64, sha512: 128 };
// A Debian/Fedora package name (or name=version, name:arch); rejects shell metacharacters.
const PACKAGE_RE = /^[A-Za-z0-9][A-Za-z0-9+._:=~@-]*$/;

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
export function parseImageUrl(value: string, cwd = process.cwd()): string {
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(value);
  if (!scheme) return path.resolve(cwd, value);
  const s = scheme[1].toLowerCase();
  if (s === 'http' || s === 'https') {
    try {
      new URL(value);
    } catch {
      return bad(Inputs.ImageUrl, value, 'not a valid URL');
    }
    return value;
  }
  if (s === 'file') return value;
  return bad(Inputs.ImageUrl, value, 'allowed: http://, https://, file:// or a path');
}

export function parsePackages(value: string): string[] {
  const list = value.split(/[\s,]+/).filter(Boolean);
  for (const p of list) {
    if (!PACKAGE_RE.test(p)) bad(Inputs.Packages, p, 'not a package name');
  }
  return [...new Set(list)];
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
  const crossArch = arch !== host.arch;
  if (crossArch && kvm === 'true') {
    throw new InputError(
      `invalid ${Inputs.Kvm}: "true" with ${Inputs.Arch} ${arch} on a ${host.arch} host (KVM runs only the host's arch; use kvm: auto or false, or a ${arch} runner)`,
    );
  }

  const imageUrlValue = raw(Inputs.ImageUrl);
  const checksumValue = raw(Inputs.ImageChecksum);
  const imageUrl = imageUrlValue ? parseImageUrl(imageUrlValue) : undefined;
  const imageChecksum = checksumValue ? parseChecksum(checksumValue) : undefined;
  if (imageUrl && !imageChecksum) {
    throw new InputError(
      `missing ${Inputs.ImageChecksum} for ${Inputs.ImageUrl} ${imageUrlValue} (give sha512:HEX or sha256:HEX; images are always verified)`,
    );
  }

  const cacheDirValue = raw(Inputs.CacheDir);
  const cacheDir = cacheDirValue
    ? path.resolve(cacheDirValue.replace(/^~(?=$|\/)/, host.homedir))
    : defaultCacheDir(host);

  return {
    distro: distroValue,
    arch,
    crossArch,
    memoryMb,
    cpus,
    browser: bool(Inputs.Browser, raw(Inputs.Browser)),
    kvm,
    redownload: bool(Inputs.Redownload, raw(Inputs.Redownload)),
    snapshot: bool(Inputs.Snapshot, raw(Inputs.Snapshot)),
    cache: bool(Inputs.Cache, raw(Inputs.Cache)),
    cacheDir,
    packages: parsePackages(get(Inputs.Packages) ?? ''),
    imageUrl,
    imageChecksum,
    installDeps: bool(Inputs.InstallDeps, raw(Inputs.InstallDeps)),
  };
}
