// The one ensure step every layer goes through, under the layer's lock: a valid local layer is
// used; else one left by an earlier tool is adopted; else it is restored through the one restore
// path (cache/staged.ts), checked against what the plan computes; else it is built. Then it is
// recorded (its manifest written last, from the plan's own values), saved to the tiers, and held
// for this run. A layer is described as data (LayerSpec); the pipeline only walks the graph.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { plannedPath } from '../cache/confine.js';
import { holdLayer, placeLayer, recordLayer, removeLayer, tempPath, touchLayer, validLayer, withLayerLock } from '../cache/local.js';
import { describeFiles, fileDigests, hashOf, loadManifest, manifestMismatch, writeManifest, type LayerName, type Manifest } from '../cache/manifest.js';
import { restoreEntry, type Accepted, type PlannedEntry } from '../cache/staged.js';
import type { RemoteTier } from '../cache/tier.js';
import { log } from '../log.js';
import { manifestPath } from '../names.js';
import type { LayerResult, LayerSource } from '../record.js';
import { copyFile, rebaseUnsafe } from '../vm/images.js';
import { backingProblem, imageProblem } from './check.js';
import { sayOtherBuild } from './drift.js';
import type { LayerContext, PendingSave, Timeouts } from './context.js';
import { expectedOf, layerMaxBytes, type LayerPlan } from './plan.js';

/** One layer as data: its plan, the build it sits on, and how to make it. */
export interface LayerSpec {
  plan: LayerPlan;
  /** The parent build's id (a child can only ever restore onto that build). */
  parentId?: string;
  /** A snapshot: the absolute path of the image its disk sits on (the parent layer's file here). */
  backing?: string;
  /** A snapshot: its RAM state holds the run's SSH key, so it goes only to tiers that hold that key. */
  keyed?: boolean;
  build: () => Promise<Partial<Manifest> | void>;
  /**
   * Files of this layer left without any manifest (the Rust tool this action replaces kept the
   * same names): returns manifest fields when they check out, else undefined (they are rebuilt).
   */
  adopt?: () => Promise<Partial<Manifest> | undefined>;
}

const sourceOf = (t: RemoteTier): LayerSource => (t.label.startsWith('registry') ? 'registry' : 'actions cache');

/** A child layer's cache key names its parent's build, so it can only ever restore onto that build. */
export function cacheKeyFor(p: LayerPlan, parentId?: string): string {
  return parentId ? `${p.cacheKey}-${hashOf(parentId).slice(0, 12)}` : p.cacheKey;
}

/** How long a run may wait for another run's lock on a layer: as long as building that layer may take. */
export function lockWaitMs(layer: LayerName, t: Timeouts): number {
  const margin = 15 * 60_000;
  switch (layer) {
    case 'raw':
      return 60 * 60_000 + margin;
    case 'prepared':
      return t.prepareSshMs + t.packagesMs + margin;
    case 'browser':
      return t.bootSshMs + t.packagesMs + margin;
    default:
      return t.bootSshMs + t.restoreSshMs + margin;
  }
}

const bytesOf = (m: Manifest) => m.files.reduce((n, f) => n + f.size, 0);
const manifestName = (p: LayerPlan) => path.basename(manifestPath('', p.base));

/** The layer's files and its manifest: what a tier holds for it. */
export function cachePaths(p: LayerPlan): string[] {
  return [...p.files, manifestName(p)];
}

/** The tiers a layer may be saved to: a keyed layer only to those that hold this run's key. */
function tiersFor(ctx: LayerContext, s: LayerSpec): RemoteTier[] {
  return ctx.tiers.filter((t) => t.on && (!s.keyed || !ctx.keyTiers || ctx.keyTiers.includes(t.label)));
}

/**
 * Checks a layer staged in `staging` against what the plan computes: its manifest equals the plan
 * in every field (one refusal naming the first that differs), every file has the recorded size and
 * sha256, every qcow2 is self-contained or sits on the parent layer only; a snapshot's disk is then
 * pointed at `s.backing`. Gives the manifest the layer is placed with: written anew from the plan's
 * values and the checked files, so nothing else of the entry's manifest is kept.
 */
export async function checkStagedLayer(s: LayerSpec, staging: string, verified: ReadonlyMap<string, string>, maxBytes: number): Promise<Accepted<Parameters<typeof writeManifest>[1]>> {
  const p = s.plan;
  const files = cachePaths(p);
  const at = (name: string) => plannedPath(staging, files, name);
  const m = loadManifest(at(manifestName(p)));
  if (typeof m === 'string') return { field: 'manifest', why: m };
  const off = manifestMismatch(m, expectedOf(p, s.parentId));
  if (off) return off;
  // Before any file is read: a sparse file may claim any size for a few bytes on disk.
  const total = bytesOf(m);
  if (total > maxBytes) return { field: 'files', why: `they add up to ${total} bytes, more than a layer of this configuration holds (${maxBytes})` };
  const recorded = p.files.map((name) => m.files.find((f) => f.name === name)!);
  for (const f of recorded) {
    const size = fs.statSync(at(f.name)).size;
    if (size !== f.size) return { field: 'files', why: `${f.name} is ${size} bytes, the manifest says ${f.size}` };
  }
  if (p.digest && m.digest !== p.digest) return { field: 'digest', why: `${JSON.stringify(m.digest ?? null)}, not the configured ${p.digest}` };
  const digests = await Promise.all(recorded.map(async (f) => verified.get(f.name) ?? (await fileDigests(at(f.name), ['sha256'])).sha256));
  const bad = recorded.findIndex((f, i) => digests[i] !== f.sha256);
  if (bad >= 0) return { field: 'files', why: `${recorded[bad].name} does not have the sha256 its manifest records` };
  // Side by side (each is a few qemu-img runs); the first problem in file order is the one said.
  const images = p.files.filter((x) => x.endsWith('.qcow2'));
  const problems = await Promise.all(images.map((f) => imageProblem(at(f), f === p.files[0] ? p.backingName : undefined)));
  const i = problems.findIndex(Boolean);
  if (i >= 0) return { field: images[i], why: problems[i]! };
  let described = recorded;
  if (s.backing) {
    // The disk's header names its parent in the saver's dir: pointed at this cache dir's.
    await rebaseUnsafe(at(p.files[0]), s.backing);
    const off2 = await backingProblem(at(p.files[0]), s.backing);
    if (off2) return { field: p.files[0], why: off2 };
    const [disk] = await describeFiles(staging, [p.files[0]]);
    described = recorded.map((f) => (f.name === disk.name ? disk : f));
  }
  return {
    ok: {
      ...planned(s, m.buildSeconds),
      id: m.id,
      files: described,
      ...(m.digest && p.layer === 'raw' ? { digest: m.digest } : {}),
      ...(typeof m.source === 'string' && p.layer === 'browser' ? { source: m.source } : {}),
      ...(m.stateBytes !== undefined && p.layout ? { stateBytes: m.stateBytes } : {}),
    },
  };
}

/** The layer as a planned entry of the one restore path: checked (checkStagedLayer), then placed. */
export function layerEntry(ctx: LayerContext, s: LayerSpec, key: string): PlannedEntry<Manifest> {
  const p = s.plan;
  const files = cachePaths(p);
  const maxBytes = layerMaxBytes(ctx.config);
  return {
    key,
    files,
    maxBytes,
    what: `the ${p.layer} layer`,
    async accept(staging, verified): Promise<Accepted<Manifest>> {
      const checked = await checkStagedLayer(s, staging, verified, maxBytes);
      if (!('ok' in checked)) return checked;
      const placed = writeManifest(plannedPath(staging, files, manifestName(p)), checked.ok);
      placeLayer(ctx.dir, staging, p);
      return { ok: placed };
    },
  };
}

/** The manifest fields the plan gives a layer (never taken from an entry). */
function planned(s: LayerSpec, buildSeconds: number) {
  const p = s.plan;
  return {
    layer: p.layer,
    key: p.key,
    inputs: p.inputs,
    ...(s.parentId ? { parentId: s.parentId } : {}),
    ...(p.layout ? { layout: p.layout } : {}),
    ...(s.backing ? { backing: s.backing } : {}),
    buildSeconds,
  };
}

/** Saves a new layer to every tier at once (so a later failure cannot lose it); says how it went. */
async function saveLayer(ctx: LayerContext, s: LayerSpec, key: string): Promise<string | undefined> {
  if (!ctx.tiers.length) return undefined;
  if (!ctx.config.cacheSave) return 'not saved (cache-save: false)';
  const p = s.plan;
  const said: string[] = [];
  const allowed = tiersFor(ctx, s);
  for (const tier of ctx.tiers.filter((t) => t.on)) {
    if (!allowed.includes(tier)) {
      said.push(`not saved to the ${tier.label}, which holds another SSH key`);
      continue;
    }
    const saved = await log.group(`Saving the ${p.layer} layer to the ${tier.label} (${key})`, () => tier.save(key, cachePaths(p), ctx.dir));
    said.push(saved === 'saved' ? `saved to the ${tier.label}` : saved === 'exists' ? `the ${tier.label} had it` : `not saved to the ${tier.label}`);
  }
  return said.join('; ') || undefined;
}

/**
 * Saves each pending layer to the tiers that lack it (asked first: a save of a key a tier has
 * costs a whole archive). Never fails: a tier that cannot answer is skipped.
 */
export async function syncTiers(pending: PendingSave[], tiers: RemoteTier[]): Promise<string[]> {
  const saved: string[] = [];
  for (const s of pending) {
    for (const tier of tiers.filter((t) => t.on && !s.from.includes(t.label) && (!s.only || s.only.includes(t.label)))) {
      if ((await tier.has?.(s.key, s.files).catch(() => undefined)) !== false) continue;
      const r = await log.group(`Saving the ${s.layer} layer to the ${tier.label}, which lacks it (${s.key})`, () => tier.save(s.key, s.files, s.dir));
      if (r === 'saved') saved.push(`${s.layer} → ${tier.label}`);
    }
  }
  return saved;
}

/**
 * Ensures one layer under its lock: valid → used; else adopted, restored or built and recorded
 * with a manifest written last, then saved to the tiers at once. Either way the layer is marked in
 * use by this run before the lock is released.
 */
export async function ensureLayer(ctx: LayerContext, s: LayerSpec, results: LayerResult[]): Promise<Manifest> {
  const p = s.plan;
  const start = Date.now();
  const result = (source: LayerSource, m: Manifest, note?: string) =>
    results.push({ layer: p.layer, source, seconds: (Date.now() - start) / 1000, bytes: bytesOf(m), ...(note ? { note } : {}) });
  return withLayerLock(ctx.dir, p.base, lockWaitMs(p.layer, ctx.timeouts), async () => {
    const use = (m: Manifest) => {
      holdLayer(ctx.dir, p.base, ctx.holder);
      touchLayer(ctx.dir, p.base);
      return m;
    };
    const key = cacheKeyFor(p, s.parentId);
    const pending = (from: string[]) => {
      if (!ctx.config.cacheSave || !ctx.tiers.length) return;
      const only = s.keyed && ctx.keyTiers ? { only: [...ctx.keyTiers] } : {};
      ctx.pending.push({ layer: p.layer, key, files: cachePaths(p), dir: ctx.dir, from, ...only });
    };
    const valid = ctx.fresh?.includes(p.layer) ? undefined : validLayer(ctx.dir, p, s.parentId);
    if (valid) {
      // A snapshot whose cache dir moved: its disk's header still names the old backing path.
      const have = s.backing ? await pointAt(ctx.dir, p, valid, s.backing) : valid;
      log.info(`${p.layer}: using ${p.files[0]} (local cache)`);
      result('local', have, Date.now() - start > 1500 ? 'waited for another run' : undefined);
      pending([]);
      return use(have);
    }
    const unrecorded = !fs.existsSync(manifestPath(ctx.dir, p.base)) && p.files.every((f) => fs.existsSync(path.join(ctx.dir, f)));
    const adopted = unrecorded && s.adopt && !ctx.fresh?.includes(p.layer) ? await s.adopt() : undefined;
    if (adopted) {
      const m = await record(ctx, s, start, adopted);
      log.info(`${p.layer}: adopted ${p.files[0]} left by an earlier tool (verified)`);
      const saved = await saveLayer(ctx, s, key);
      result('local', m, `adopted an unrecorded file${saved ? ` (${saved})` : ''}`);
      return use(m);
    }
    const tiers = ctx.fresh?.includes(p.layer) ? [] : ctx.tiers.filter((t) => t.on);
    const found = tiers.length
      ? await log.group(`Restoring the ${p.layer} layer (${key})`, () => restoreEntry(ctx.dir, tiers, layerEntry(ctx, s, key), `building the ${p.layer} layer instead`))
      : undefined;
    if (found) {
      log.info(`${p.layer}: restored ${p.files[0]} from the ${found.tier.label}`);
      result(sourceOf(found.tier), found.value);
      pending([found.tier.label]);
      return use(found.value);
    }
    // A snapshot from another QEMU, CPU or key has another name: say which inputs differ.
    sayOtherBuild(ctx.dir, p);
    const m = await log.group(`Building the ${p.layer} layer (${p.files[0]})`, async () => {
      removeLayer(ctx.dir, p.base, p.files);
      const built = await record(ctx, s, start, { ...((await s.build()) ?? {}) });
      log.info(`${p.layer}: built ${p.files[0]} in ${((Date.now() - start) / 1000).toFixed(0)} s`);
      return built;
    });
    result('built', m, await saveLayer(ctx, s, key));
    return use(m);
  });
}

/**
 * Points a snapshot layer's disk in `dir` at `backing` (an absolute path) and records it. The disk
 * may be a hard link another dir shares: it is rebased as a copy renamed over it.
 */
async function pointAt(dir: string, p: LayerPlan, m: Manifest, backing: string): Promise<Manifest> {
  if (m.backing === backing) return m;
  const disk = path.join(dir, p.files[0]);
  const tmp = tempPath(dir, p.files[0]);
  copyFile(disk, tmp);
  await rebaseUnsafe(tmp, backing);
  fs.renameSync(tmp, disk);
  // The header changed: the recorded digest follows it (a tier checks it at every restore).
  const [described] = await describeFiles(dir, [p.files[0]]);
  return writeManifest(manifestPath(dir, p.base), { ...m, backing, files: m.files.map((f) => (f.name === described.name ? described : f)) });
}

/** Writes a layer's manifest, last, over files already in place: the plan's fields, then the build's. */
async function record(ctx: LayerContext, s: LayerSpec, start: number, extra: Partial<Manifest>): Promise<Manifest> {
  const p = s.plan;
  const { layout: _built, ...rest } = extra;
  return recordLayer(ctx.dir, p.base, {
    ...planned(s, Math.round((Date.now() - start) / 1000)),
    ...rest,
    // A builder that already read its files says so; else they are hashed here, once.
    files: extra.files ?? (await describeFiles(ctx.dir, p.files)),
  });
}
