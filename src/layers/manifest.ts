// Layer manifests and locks. A manifest is written last, after its files are in place: a layer
// without one (or whose recorded key or sizes disagree) is never used. Sizes are checked on every
// run; digests are computed once, at build time, so an all-valid run reads no image data.
import { createHash, randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import lockfile from 'proper-lockfile';
import { log } from '../log.js';
import type { VmLayout } from '../vm/spec.js';

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
  createdAt: string;
  buildSeconds: number;
}

export const MANIFEST_SUFFIX = '.manifest.json';

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

export function manifestPath(dir: string, base: string): string {
  return path.join(dir, base + MANIFEST_SUFFIX);
}

export function readManifest(file: string): Manifest | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(file, 'utf8')) as Manifest;
    return m.version === 1 ? m : undefined;
  } catch {
    return undefined;
  }
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

/** Removes a layer's manifest first (so a half-replaced layer is never valid), then its files. */
export function removeLayer(dir: string, base: string, files: string[]): void {
  fs.rmSync(manifestPath(dir, base), { force: true });
  for (const f of files) fs.rmSync(path.join(dir, f), { force: true });
}

/**
 * Holds a per-layer lock while `fn` runs. A second run on the same cache dir waits, then finds the
 * layer built. A lock left by a killed run goes stale (its mtime stops moving) and is taken over.
 */
export async function withLayerLock<T>(dir: string, base: string, fn: () => Promise<T>): Promise<T> {
  // proper-lockfile keys its registry by the locked path: one path per layer, so nested locks
  // (raw inside prepared) stay independent. The lock itself is the directory `<base>.lock`.
  const target = path.join(dir, `${base}.lock`);
  fs.mkdirSync(dir, { recursive: true });
  const release = await lockfile.lock(path.join(dir, base), {
    realpath: false,
    stale: 30_000,
    update: 5_000,
    retries: { retries: 100_000, minTimeout: 1000, maxTimeout: 2000, factor: 1 },
    onCompromised: (err) => log.warning(`lock ${target} compromised: ${err.message}`),
  }).catch((err: Error) => {
    throw new Error(`cannot lock ${target}: ${err.message}`);
  });
  try {
    return await fn();
  } finally {
    await release().catch(() => {});
  }
}

/** Temp names in the cache dir carry this marker; stale ones (from killed runs) are removed. */
export const TEMP_MARKER = '.ryra-tmp-';

export function tempPath(dir: string, name: string): string {
  return path.join(dir, `${name}${TEMP_MARKER}${process.pid}-${randomUUID().slice(0, 8)}`);
}

/** Removes temp files and work dirs whose owning process is gone. */
export function cleanStaleTemps(dir: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    const m = new RegExp(`${TEMP_MARKER.replace(/[.]/g, '\\.')}(\\d+)-`).exec(n);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    fs.rmSync(path.join(dir, n), { recursive: true, force: true });
    log.info(`removed a stale temp left by an interrupted run: ${n}`);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
