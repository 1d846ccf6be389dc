// Layer manifests. A manifest is written last, after its files are in place: a layer without one
// (or whose recorded key or sizes disagree) is never used. Sizes are checked on every run; digests
// are computed once, at build time, so an all-valid run reads no image data.
import { createHash, randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isPlainName } from './confine.js';
import type { VmLayout } from '../vm/spec.js';

export { MANIFEST_SUFFIX, manifestPath } from '../names.js';

export type LayerName = 'raw' | 'prepared' | 'snapshot' | 'browser' | 'browser-snapshot';

export interface ManifestFile {
  name: string;
  size: number;
  sha256: string;
}

export interface Manifest {
  version: 1;
  layer: LayerName;
  /** Hash of everything that makes this layer what it is (also its Actions cache key suffix). */
  key: string;
  /** The inputs that went into the key, for people reading the file. */
  inputs: Record<string, unknown>;
  /** Unique per build: dependents record their parent's id, so a rebuilt parent invalidates them. */
  id: string;
  parentId?: string;
  files: ManifestFile[];
  layout?: VmLayout;
  /** The raw layer's verified digest (`sha512:HEX`). */
  digest?: string;
  /** A snapshot disk's backing image, as its header names it (an absolute path in this cache dir). */
  backing?: string;
  /** The browser layer: which source installed it (upstream | registries). */
  source?: string;
  /** A snapshot: its saved RAM state in bytes. */
  stateBytes?: number;
  createdAt: string;
  buildSeconds: number;
}

/** Stable hash of a JSON value (object keys sorted). */
export function hashOf(value: unknown): string {
  const stable = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(stable)
      : v && typeof v === 'object'
        ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)).map(([k, x]) => [k, stable(x)]))
        : v;
  return createHash('sha256').update(JSON.stringify(stable(value))).digest('hex').slice(0, 20);
}

/** The most a manifest file may hold: ours are a few KiB (the package list is the longest field). */
export const MANIFEST_MAX_BYTES = 256 * 1024;

const LAYERS: readonly LayerName[] = ['raw', 'prepared', 'snapshot', 'browser', 'browser-snapshot'];
const ID_RE = /^[A-Za-z0-9-]{1,64}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
const DIGEST_RE = /^(sha256|sha512):[0-9a-f]{64,128}$/;
const isObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
const optional = (v: unknown, ok: (x: unknown) => boolean) => v === undefined || ok(v);

/** Why `v` is not a manifest of this project's shape (every field's type and form), or undefined. */
function shapeProblem(m: Record<string, unknown>): string | undefined {
  if (m.version !== 1 || !Array.isArray(m.files) || typeof m.key !== 'string') return 'its manifest is not a ryra-vm manifest';
  const files = m.files as unknown[];
  const outside = files.find((f) => !isObject(f) || !isPlainName(f.name));
  if (outside !== undefined) return `its manifest names ${JSON.stringify(isObject(outside) ? (outside.name ?? null) : outside).slice(0, 200)}, not a plain file name in its dir`;
  if (!files.every((f) => isObject(f) && Number.isSafeInteger(f.size) && (f.size as number) >= 0 && typeof f.sha256 === 'string' && SHA256_RE.test(f.sha256))) {
    return 'its manifest gives a file without a size or sha256';
  }
  const bad = (
    [
      ['layer', LAYERS.includes(m.layer as LayerName)],
      ['key', /^[0-9a-f]{1,64}$/.test(m.key as string)],
      ['inputs', isObject(m.inputs)],
      ['id', typeof m.id === 'string' && ID_RE.test(m.id)],
      ['parentId', optional(m.parentId, (x) => typeof x === 'string' && ID_RE.test(x))],
      ['layout', optional(m.layout, (x) => isObject(x) && isObject(x.accel))],
      ['digest', optional(m.digest, (x) => typeof x === 'string' && DIGEST_RE.test(x))],
      ['backing', optional(m.backing, (x) => typeof x === 'string' && x.length <= 4096 && path.isAbsolute(x))],
      ['source', optional(m.source, (x) => typeof x === 'string' && /^[a-z-]{1,32}$/.test(x))],
      ['stateBytes', optional(m.stateBytes, (x) => Number.isSafeInteger(x) && (x as number) >= 0)],
      ['buildSeconds', typeof m.buildSeconds === 'number' && Number.isFinite(m.buildSeconds)],
      ['createdAt', typeof m.createdAt === 'string' && m.createdAt.length <= 64],
    ] as const
  ).find(([, ok]) => !ok);
  return bad ? `its manifest's ${bad[0]} is not of the form a manifest has` : undefined;
}

/**
 * A manifest, or why the file is not one of ours. Read through one descriptor that may not be a
 * symlink, no bigger than MANIFEST_MAX_BYTES; every field's type and form is checked (a manifest may
 * come from a cache entry), each file name a plain name in its dir. A manifest of the right shape
 * is still only data: manifestMismatch compares it with what the plan computes.
 */
export function loadManifest(file: string): Manifest | string {
  let text: string;
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    const st = fs.fstatSync(fd);
    if (!st.isFile()) return 'its manifest is not a regular file';
    if (st.size > MANIFEST_MAX_BYTES) return `its manifest is ${st.size} bytes, more than a manifest holds (${MANIFEST_MAX_BYTES})`;
    const buf = Buffer.alloc(st.size);
    const n = fs.readSync(fd, buf, 0, st.size, 0);
    text = buf.subarray(0, n).toString('utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? 'no manifest' : code === 'ELOOP' ? 'its manifest is a symlink' : `its manifest cannot be read (${code ?? errorText(err)})`;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch {
    return 'its manifest is not JSON';
  }
  if (!isObject(m)) return 'its manifest is not a ryra-vm manifest';
  return shapeProblem(m) ?? (m as unknown as Manifest);
}

const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** A manifest, or undefined when the file is missing or not one of ours (loadManifest says why). */
export function readManifest(file: string): Manifest | undefined {
  const m = loadManifest(file);
  return typeof m === 'string' ? undefined : m;
}

/**
 * What the plan computes for one layer: a manifest, local or restored, is used only where it equals
 * this. Nothing of a manifest reaches a path, an argument or a decision unless it is compared here.
 */
export interface Expected {
  layer: LayerName;
  key: string;
  inputs: Record<string, unknown>;
  /** The layer's planned file names (not its manifest). */
  files: readonly string[];
  /** The parent build this layer must sit on (undefined: not checked here). */
  parentId?: string;
  /** A snapshot's device layout; a layer without one must record none. */
  layout?: VmLayout;
  /** A snapshot: the parent layer's file its disk sits on (the header names it in its saver's dir). */
  backingName?: string;
}

/** A manifest field that differs from the plan's value, and how. */
export interface Mismatch {
  field: string;
  why: string;
}

const short = (v: unknown) => JSON.stringify(v ?? null).slice(0, 120);

/** The first field of `m` that differs from what the plan computes (`e`), or undefined. Pure. */
export function manifestMismatch(m: Manifest, e: Expected): Mismatch | undefined {
  if (m.layer !== e.layer) return { field: 'layer', why: `${short(m.layer)}, not ${short(e.layer)}` };
  const differing = Object.keys({ ...e.inputs, ...m.inputs }).filter((k) => hashOf(m.inputs[k] ?? null) !== hashOf(e.inputs[k] ?? null));
  if (differing.length) {
    return { field: 'inputs', why: `built with other ${differing.join(', ')} (${differing.map((k) => `${short(m.inputs[k])} ≠ ${short(e.inputs[k])}`).join('; ').slice(0, 300)})` };
  }
  if (m.key !== e.key) return { field: 'key', why: `built for other inputs (key ${m.key}, need ${e.key})` };
  if (e.parentId !== undefined && m.parentId !== e.parentId) return { field: 'parentId', why: 'its parent layer was rebuilt since' };
  const named = m.files.map((f) => f.name).sort();
  const planned = [...e.files].sort();
  if (named.join('\0') !== planned.join('\0')) return { field: 'files', why: `it names ${short(named)}, not ${short(planned)}` };
  if (hashOf(m.layout ?? null) !== hashOf(e.layout ?? null)) {
    return { field: 'layout', why: `it records the device layout ${short(m.layout).slice(0, 200)}, not the one this host and configuration give` };
  }
  if (e.backingName ? !m.backing || path.basename(m.backing) !== e.backingName : m.backing !== undefined) {
    return { field: 'backing', why: `it sits on ${short(m.backing)}, not on its parent layer ${short(e.backingName)}` };
  }
  return undefined;
}

/** Why a manifest does not describe a usable layer in `dir`, or undefined when it does. Cheap: stats only. */
export function invalidReason(m: Manifest | undefined, dir: string, e: Expected): string | undefined {
  if (!m) return 'no manifest';
  const off = manifestMismatch(m, e);
  if (off) return off.field === 'inputs' || off.field === 'key' || off.field === 'parentId' ? off.why : `its ${off.field}: ${off.why}`;
  for (const name of e.files) {
    const f = m.files.find((x) => x.name === name)!;
    let size: number;
    try {
      size = fs.statSync(path.join(dir, name)).size;
    } catch {
      return `${name} is missing`;
    }
    if (size !== f.size) return `${name} is ${size} bytes, the manifest says ${f.size}`;
  }
  return undefined;
}

/** Hashes that see every chunk of a stream; several algorithms in one read. */
export function digester(algorithms: readonly string[]): { update: (b: Buffer) => void; hex: () => Record<string, string> } {
  const hashes = Object.fromEntries([...new Set(algorithms)].map((a) => [a, createHash(a)]));
  return {
    update: (b) => Object.values(hashes).forEach((h) => h.update(b)),
    hex: () => Object.fromEntries(Object.entries(hashes).map(([a, h]) => [a, h.digest('hex')])),
  };
}

/** Digests of a file, every algorithm from one read. */
export async function fileDigests(file: string, algorithms: readonly string[]): Promise<Record<string, string>> {
  const d = digester(algorithms);
  for await (const chunk of fs.createReadStream(file)) d.update(chunk as Buffer);
  return d.hex();
}

export async function describeFiles(dir: string, names: string[]): Promise<ManifestFile[]> {
  return Promise.all(
    names.map(async (name) => ({ name, size: fs.statSync(path.join(dir, name)).size, sha256: (await fileDigests(path.join(dir, name), ['sha256'])).sha256 })),
  );
}

export function writeManifest(file: string, m: Omit<Manifest, 'version' | 'id' | 'createdAt'> & { id?: string }): Manifest {
  const full: Manifest = { version: 1, id: m.id ?? randomUUID(), createdAt: new Date().toISOString(), ...m };
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(full, null, 2) + '\n');
  fs.renameSync(tmp, file);
  return full;
}

