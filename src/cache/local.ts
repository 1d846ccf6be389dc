// The local cache dir tier, one concern a function, as actions/cache keeps one phase a file:
// look a layer up (valid manifest), put a layer in place (restored or built), record its manifest,
// mark it in use, and evict least-recently-used layers over the size budget. Also the per-layer
// build lock and the temp names that an interrupted run leaves behind.
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import lockfile from 'proper-lockfile';
import { log } from '../log.js';
import { CacheFiles, GuestFiles, MANIFEST_SUFFIX, manifestPath } from '../names.js';
import { invalidReason, readManifest, writeManifest, type LayerName, type Manifest } from './manifest.js';
import { ownerAlive, processAlive, processStartTime } from '../util/procfs.js';
import { fmtSeconds } from '../util/time.js';
import type { VmLayout } from '../vm/spec.js';

/** What lookups and records need of a planned layer. */
export interface LayerRef {
  layer: LayerName;
  base: string;
  files: string[];
  key: string;
  inputs: Record<string, unknown>;
  /** A snapshot: the device layout and parent file the plan computes (its manifest must record them). */
  layout?: VmLayout;
  backingName?: string;
}

/** The valid manifest of a layer, or undefined (with the reason logged). Stats only. */
export function validLayer(dir: string, p: LayerRef, parentId?: string): Manifest | undefined {
  const m = readManifest(manifestPath(dir, p.base));
  const why = invalidReason(m, dir, { layer: p.layer, key: p.key, inputs: p.inputs, files: p.files, parentId, layout: p.layout, backingName: p.backingName });
  if (why && m) log.info(`  ${p.layer} layer ${p.base} not usable: ${why}`);
  return why ? undefined : m;
}

/** Removes a layer's manifest first (so a half-replaced layer is never valid), then its files. */
export function removeLayer(dir: string, base: string, files: string[]): void {
  fs.rmSync(manifestPath(dir, base), { force: true });
  for (const f of files) fs.rmSync(path.join(dir, f), { force: true });
}

/** Moves a layer that was restored into `staging` into place, replacing what was there. */
export function placeLayer(dir: string, staging: string, p: LayerRef): void {
  removeLayer(dir, p.base, p.files);
  for (const f of p.files) fs.renameSync(path.join(staging, f), path.join(dir, f));
  fs.renameSync(manifestPath(staging, p.base), manifestPath(dir, p.base));
}

/** Writes a layer's manifest, last, over files already in place. */
export function recordLayer(dir: string, base: string, m: Parameters<typeof writeManifest>[1]): Manifest {
  return writeManifest(manifestPath(dir, base), m);
}

/** Records a use of the layer: its manifest's mtime is its last use (least recently used goes first). */
export function touchLayer(dir: string, base: string): void {
  const now = new Date();
  try {
    fs.utimesSync(manifestPath(dir, base), now, now);
  } catch {
    /* gone meanwhile: nothing to record */
  }
}

// ---- locks ------------------------------------------------------------------------------------

function ownerFile(dir: string, base: string): string {
  return path.join(dir, `${base}.lock-owner`);
}

/**
 * Holds a per-layer lock while `fn` runs. A second run on the same cache dir waits, then finds the
 * layer built. A lock left by a killed run goes stale (its mtime stops moving) and is taken over.
 * The wait is bounded by `waitMs` (tied to how long building the layer may take), then fails
 * naming the holder.
 */
export async function withLayerLock<T>(dir: string, base: string, waitMs: number, fn: () => Promise<T>): Promise<T> {
  // proper-lockfile keys its registry by the locked path: one path per layer, so nested locks
  // (raw inside prepared) stay independent. The lock itself is the directory `<base>.lock`.
  fs.mkdirSync(dir, { recursive: true });
  const start = Date.now();
  let waited = false;
  const release = await lockfile
    .lock(path.join(dir, base), {
      realpath: false,
      stale: 30_000,
      update: 5_000,
      retries: { retries: Math.max(1, Math.ceil(waitMs / 1000)), minTimeout: 1000, maxTimeout: 1000, factor: 1 },
      onCompromised: (err) => log.warning(`lock ${base}.lock compromised: ${err.message}`),
    })
    .catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ELOCKED') throw new Error(`cannot lock ${path.join(dir, base)}.lock: ${err.message}`);
      let owner = 'another run';
      try {
        const o = JSON.parse(fs.readFileSync(ownerFile(dir, base), 'utf8')) as { pid: number; since: string };
        owner = `pid ${o.pid}${processAlive(o.pid) ? '' : ' (no longer running)'}, holding it since ${o.since}`;
      } catch {
        /* no owner file */
      }
      throw new Error(`the ${base} layer is locked by ${owner}; gave up after waiting ${fmtSeconds(Date.now() - start)} (as long as building it may take). If that run is stuck, stop it.`);
    })
    .finally(() => (waited = Date.now() - start > 1500));
  if (waited) log.info(`  waited ${fmtSeconds(Date.now() - start)} for another run's lock on ${base}`);
  fs.writeFileSync(ownerFile(dir, base), JSON.stringify({ pid: process.pid, since: new Date().toISOString() }));
  try {
    return await fn();
  } finally {
    fs.rmSync(ownerFile(dir, base), { force: true });
    await release().catch(() => {});
  }
}

// ---- temps ------------------------------------------------------------------------------------

/** Temp names in the cache dir carry this marker; stale ones (from killed runs) are removed. */
export const TEMP_MARKER = '.ryra-tmp-';

export function tempPath(dir: string, name: string): string {
  return path.join(dir, `${name}${TEMP_MARKER}${process.pid}-${randomUUID().slice(0, 8)}`);
}

/** A file's birth time (its mtime where the file system keeps none), or 0 when it is gone. */
function bornMs(p: string): number {
  try {
    const st = fs.statSync(p);
    return st.birthtimeMs > 0 ? st.birthtimeMs : st.mtimeMs;
  } catch {
    return 0;
  }
}

/**
 * Removes temp files and work dirs whose owning process is gone (a live pid that started after the
 * temp was made is not its owner: the number was reused). A work dir may still hold a
 * running QEMU (only the node process was killed): it is found through its pid file, checked to
 * be that dir's QEMU (its command line names the dir), killed, and only then is the dir deleted.
 */
export function cleanStaleTemps(dir: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  const re = new RegExp(`${TEMP_MARKER.replace(/[.]/g, '\\.')}(\\d+)-`);
  for (const n of names) {
    const m = re.exec(n);
    if (!m) continue;
    const pid = Number(m[1]);
    const p = path.join(dir, n);
    if (pid === process.pid || ownerAlive(pid, bornMs(p))) continue;
    for (const q of orphanedQemu(p)) {
      log.info(`killing QEMU pid ${q.pid} left running in ${n} by an interrupted run`);
      try {
        process.kill(q.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      if (q.socketDir) fs.rmSync(q.socketDir, { recursive: true, force: true });
    }
    fs.rmSync(p, { recursive: true, force: true });
    log.info(`removed a stale temp left by an interrupted run: ${n}`);
  }
}

/**
 * QEMU processes whose pid file lies under `root` and whose command line names `root`, with the
 * private dir of their QMP socket (made by makeSocketDir, outside `root`).
 */
export function orphanedQemu(root: string): { pid: number; socketDir?: string }[] {
  const found: { pid: number; socketDir?: string }[] = [];
  let entries: fs.Dirent[] = [];
  try {
    if (!fs.statSync(root).isDirectory()) return [];
    entries = fs.readdirSync(root, { recursive: true, withFileTypes: true });
  } catch {
    return [];
  }
  for (const e of entries) {
    if (!e.isFile() || e.name !== GuestFiles.pid) continue;
    const pid = Number(fs.readFileSync(path.join(e.parentPath, e.name), 'utf8').trim());
    if (!(pid > 0)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('qemu-system') || !cmd.includes(root)) continue;
      const qmp = /\0-qmp\0unix:([^,\0]+)/.exec(cmd)?.[1];
      const socketDir = qmp && path.dirname(qmp);
      found.push({ pid, socketDir: socketDir && path.basename(socketDir).startsWith('rvm-') ? socketDir : undefined });
    } catch {
      /* not running */
    }
  }
  return found;
}

// ---- in use -----------------------------------------------------------------------------------
// A layer in use is never evicted. Node has no flock() without a native addon (which cannot ship
// in dist/), so the shared lock is a directory of holder files, each naming what keeps it alive:
// a process (pid + start time, safe against pid reuse) or a job's runtime dir (gone after the job).

export type Holder = { id: string; pid: number; startTime: string } | { id: string; dir: string };

export function processHolder(pid = process.pid, kind = 'proc'): Holder {
  return { id: `${kind}-${pid}-${processStartTime(pid)}`, pid, startTime: processStartTime(pid) };
}

export function jobHolder(runtimeDir: string): Holder {
  return { id: `job-${Buffer.from(runtimeDir).toString('base64url').slice(-40)}`, dir: runtimeDir };
}

function holderAlive(h: Holder): boolean {
  if ('dir' in h) return fs.existsSync(h.dir);
  return processStartTime(h.pid) === h.startTime;
}

function holdersDir(dir: string, base: string): string {
  return path.join(dir, CacheFiles.inUse, base);
}

/** Marks layers in use by `holder`. Call it under the layer's lock, after checking the layer is valid. */
export function holdLayer(dir: string, base: string, holder: Holder): void {
  const d = holdersDir(dir, base);
  fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(d, `${holder.id}.json`), JSON.stringify(holder));
}

/** Removes a holder from every layer (a job's post step, a stopped VM). */
export function releaseHolder(dir: string, holderId: string): void {
  const root = path.join(dir, CacheFiles.inUse);
  let bases: string[] = [];
  try {
    bases = fs.readdirSync(root);
  } catch {
    return;
  }
  for (const b of bases) fs.rmSync(path.join(root, b, `${holderId}.json`), { force: true });
}

/** Live holders of a layer; dead ones are removed on the way. */
export function liveHolders(dir: string, base: string): Holder[] {
  const d = holdersDir(dir, base);
  let files: string[] = [];
  try {
    files = fs.readdirSync(d);
  } catch {
    return [];
  }
  const alive: Holder[] = [];
  for (const f of files) {
    let h: Holder;
    try {
      h = JSON.parse(fs.readFileSync(path.join(d, f), 'utf8')) as Holder;
    } catch {
      continue;
    }
    if (holderAlive(h)) alive.push(h);
    else fs.rmSync(path.join(d, f), { force: true });
  }
  return alive;
}

// ---- size and eviction ------------------------------------------------------------------------

export interface LayerEntry {
  base: string;
  layer: LayerName;
  id: string;
  parentId?: string;
  files: string[];
  bytes: number;
  lastUse: number;
}

/** Every recorded layer in the dir (a manifest with its files). */
export function listLayers(dir: string): LayerEntry[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => n.endsWith(MANIFEST_SUFFIX));
  } catch {
    return [];
  }
  const out: LayerEntry[] = [];
  for (const n of names) {
    const base = n.slice(0, -MANIFEST_SUFFIX.length);
    const file = path.join(dir, n);
    const m = readManifest(file);
    if (!m) continue;
    const bytes = m.files.reduce((s, f) => s + fileBytes(path.join(dir, f.name)), 0);
    out.push({ base, layer: m.layer, id: m.id, parentId: m.parentId, files: m.files.map((f) => f.name), bytes, lastUse: fs.statSync(file).mtimeMs });
  }
  return out;
}

function fileBytes(f: string): number {
  try {
    return fs.statSync(f).blocks * 512;
  } catch {
    return 0;
  }
}

/** Bytes on disk under `dir` (allocated blocks, as du counts them). */
export function dirBytes(dir: string): number {
  let total = 0;
  let entries: fs.Dirent[] = [];
  try {
    entries = fs.readdirSync(dir, { recursive: true, withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) if (e.isFile()) total += fileBytes(path.join(e.parentPath, e.name));
  return total;
}

export interface Eviction {
  base: string;
  layer: LayerName;
  bytes: number;
}

/** Layers whose disk is an overlay on their parent's image: they cannot outlive it. */
const BACKED: ReadonlySet<LayerName> = new Set(['snapshot', 'browser-snapshot']);

/**
 * Evicts least-recently-used layers until the dir fits `maxBytes` (0: no budget). A layer in use
 * — held by a live job or VM, or the backing image of a snapshot in use — is never evicted; a
 * snapshot goes with the image it sits on (prepared and browser images are standalone copies, so
 * they outlive the raw image they were built from). Each removal happens under the layer's lock,
 * after checking again that nobody holds it.
 */
export async function evict(dir: string, maxBytes: number): Promise<{ evicted: Eviction[]; bytes: number }> {
  let bytes = dirBytes(dir);
  const evicted: Eviction[] = [];
  if (!maxBytes || bytes <= maxBytes) return { evicted, bytes };
  const layers = listLayers(dir);
  const byId = new Map(layers.map((l) => [l.id, l]));
  const inUse = new Set<string>();
  for (const l of layers) {
    if (!liveHolders(dir, l.base).length) continue;
    // The layer and its backing chain.
    for (let x: LayerEntry | undefined = l; x && !inUse.has(x.base); x = BACKED.has(x.layer) && x.parentId ? byId.get(x.parentId) : undefined) inUse.add(x.base);
  }
  const childrenOf = (l: LayerEntry) => layers.filter((c) => c.parentId === l.id && BACKED.has(c.layer));
  for (const l of [...layers].sort((a, b) => a.lastUse - b.lastUse)) {
    if (bytes <= maxBytes) break;
    if (inUse.has(l.base) || evicted.some((e) => e.base === l.base)) continue;
    const family = [l, ...descendants(l, childrenOf)];
    if (family.some((x) => inUse.has(x.base))) continue;
    for (const x of family.reverse()) {
      if (evicted.some((e) => e.base === x.base)) continue;
      const gone = await withLayerLock(dir, x.base, 2000, async () => {
        if (liveHolders(dir, x.base).length) return false;
        removeLayer(dir, x.base, x.files);
        return true;
      }).catch(() => false);
      if (!gone) continue;
      evicted.push({ base: x.base, layer: x.layer, bytes: x.bytes });
      bytes = dirBytes(dir);
      log.info(`evicted ${x.layer} layer ${x.base} (${(x.bytes / 2 ** 20).toFixed(0)} MiB, last used ${new Date(x.lastUse).toISOString()})`);
    }
  }
  return { evicted, bytes };
}

function descendants(l: LayerEntry, childrenOf: (l: LayerEntry) => LayerEntry[]): LayerEntry[] {
  return childrenOf(l).flatMap((c) => [c, ...descendants(c, childrenOf)]);
}
