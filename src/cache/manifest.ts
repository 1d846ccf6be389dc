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

/**
 * A manifest, or why the file is not one of ours. Its file names are checked on every read (a
 * manifest may come from a cache entry): each must be a plain name in its dir, so nothing that
 * joins them to the dir (validity, eviction) can reach outside it.
 */
export function loadManifest(file: string): Manifest | string {
  let m: Manifest;
  try {
    m = JSON.parse(fs.readFileSync(file, 'utf8')) as Manifest;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no manifest' : 'its manifest is not JSON';
  }
  if (m?.version !== 1 || !Array.isArray(m.files) || typeof m.key !== 'string') return 'its manifest is not a ryra-vm manifest';
  const outside = m.files.find((f) => !isPlainName(f?.name));
  if (outside) return `its manifest names ${JSON.stringify(outside?.name ?? null).slice(0, 200)}, not a plain file name in its dir`;
  if (!m.files.every((f) => Number.isSafeInteger(f.size) && f.size >= 0 && typeof f.sha256 === 'string')) return 'its manifest gives a file without a size or sha256';
  return m;
}

/** A manifest, or undefined when the file is missing or not one of ours (loadManifest says why). */
export function readManifest(file: string): Manifest | undefined {
  const m = loadManifest(file);
  return typeof m === 'string' ? undefined : m;
}

/** Why a manifest does not describe a usable layer, or undefined when it does. Cheap: stats only. */
export function invalidReason(m: Manifest | undefined, dir: string, want: { key: string; inputs: Record<string, unknown> }, parentId?: string): string | undefined {
  if (!m) return 'no manifest';
  const differing = Object.keys({ ...want.inputs, ...m.inputs }).filter((k) => hashOf(m.inputs[k] ?? null) !== hashOf(want.inputs[k] ?? null));
  if (differing.length) return `built with other ${differing.join(', ')} (${differing.map((k) => `${JSON.stringify(m.inputs[k])} ≠ ${JSON.stringify(want.inputs[k])}`).join('; ').slice(0, 300)})`;
  if (m.key !== want.key) return `built for other inputs (key ${m.key}, need ${want.key})`;
  if (parentId !== undefined && m.parentId !== parentId) return 'its parent layer was rebuilt since';
  for (const f of m.files) {
    let size: number;
    try {
      size = fs.statSync(path.join(dir, f.name)).size;
    } catch {
      return `${f.name} is missing`;
    }
    if (size !== f.size) return `${f.name} is ${size} bytes, the manifest says ${f.size}`;
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

