// ensureLayers(): per layer, use it when its manifest says it is valid for this run, else restore it
// from a remote tier (the Actions cache, then an OCI registry) or build it, under the layer's lock;
// then save what was built, evict over the size budget, and write the run record. What a tier
// restores is checked in a private staging dir before it is placed (cache/confine.ts, check.ts).
// Layers a tier lacks but this run has (local or from another tier) are saved to it afterwards:
// in the action's post step, so the warm path stays short. Planning is pure (plan.ts); the local
// tier is cache/local.ts; this file only orchestrates.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Outputs, type OutputValues } from '../contract.js';
import { actionsCache, cacheServiceAvailable, cacheTimeouts } from '../cache/actions.js';
import { stagedFilesProblem } from '../cache/confine.js';
import { registryTier } from '../cache/registry.js';
import type { RemoteTier } from '../cache/tier.js';
import {
  cleanStaleTemps,
  evict,
  dirBytes,
  holdLayer,
  jobHolder,
  placeLayer,
  processHolder,
  recordLayer,
  removeLayer,
  tempPath,
  touchLayer,
  validLayer,
  withLayerLock,
  type Eviction,
} from '../cache/local.js';
import { distroImage } from '../distro.js';
import { NO_HOOKS, type TestHooks } from '../env.js';
import { fallBackToTcg, type Host } from '../host/setup.js';
import { kvmUnusableError } from '../host/platform.js';
import type { Checksum, Config } from '../inputs.js';
import { errorMessage, log } from '../log.js';
import { CacheFiles, manifestPath } from '../names.js';
import { runtimeDir } from '../paths.js';
import { runRecord, writeRecord, type LayerResult, type LayerSource, type RunRecord } from '../record.js';
import { copyFile, rebaseUnsafe } from '../vm/images.js';
import { KvmBootError } from '../vm/boot.js';
import type { KeyPair } from '../vm/ssh.js';
import { BROWSER_CPUS, BROWSER_MEMORY_MB, SOURCE_FILE, browserInstallScript } from './browser.js';
import { backingProblem, stagedLayerProblem } from './check.js';
import { timeoutsFor, type LayerContext, type PendingSave, type Timeouts } from './context.js';
import { hostLayout } from './guest.js';
import { describeFiles, hashOf, loadManifest, readManifest, writeManifest, type LayerName, type Manifest } from '../cache/manifest.js';
import { layerMaxBytes, planLayers, type LayerPlan, type Plan, type Recipes } from './plan.js';
import { CLEAN_FOR_TEMPLATE, buildImage } from './prepared.js';
import { adoptRaw, download, expectedChecksum } from './raw.js';
import { SHRINK_RAM, SNAPSHOT_SETUP, buildSnapshot, type SnapshotBuild } from './snapshot.js';
import { ensureSshKey } from './sshkey.js';

export type { LayerResult, LayerSource } from '../record.js';

const sourceOf = (t: RemoteTier): LayerSource => (t.label.startsWith('registry') ? 'registry' : 'actions cache');

export interface EnsureResult {
  outputs: OutputValues;
  record: RunRecord;
  layers: LayerResult[];
  runtimeDir: string;
  plan: Plan;
  host: Host;
  snapshotBuild?: SnapshotBuild;
  evicted: Eviction[];
  /** Layers this run has that some tier may lack (saved by syncTiers, at once or in the post step). */
  pending: PendingSave[];
}

/** The guest commands the layers' content depends on, for this config. */
export function recipesFor(config: Config, manager: 'apt' | 'dnf', browserScript?: string): Recipes {
  return {
    cleanForTemplate: CLEAN_FOR_TEMPLATE,
    snapshotSetup: SNAPSHOT_SETUP,
    shrinkRam: SHRINK_RAM,
    browserScript: browserScript ?? browserInstallScript(config.browserSource, manager),
  };
}

/** A child layer's cache key names its parent's build, so it can only ever restore onto that build. */
export function cacheKeyFor(p: LayerPlan, parentId?: string): string {
  return parentId ? `${p.cacheKey}-${hashOf(parentId).slice(0, 12)}` : p.cacheKey;
}

/** How long a run may wait for another run's lock on a layer: as long as building that layer may take. */
function lockWaitMs(layer: LayerName, t: Timeouts): number {
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

function bytesOf(m: Manifest): number {
  return m.files.reduce((n, f) => n + f.size, 0);
}

function cachePaths(p: LayerPlan): string[] {
  return [...p.files, path.basename(manifestPath('', p.base))];
}

/**
 * Restores a layer from a tier into a private staging dir, checks it there (the files and nothing
 * else, the manifest, every sha256, every qcow2's header; a snapshot's disk pointed at this cache
 * dir's parent image), then moves it in place. An entry refused is said once, and the tier is told.
 */
async function restoreLayer(ctx: LayerContext, tier: RemoteTier, p: LayerPlan, key: string, parentId: string | undefined, backing: string | undefined): Promise<Manifest | undefined> {
  // An entry that exists but arrived broken is fetched once more: a cut transfer is far more
  // likely than a broken entry, and a download costs seconds where a rebuild costs minutes.
  for (let attempt = 1; ; attempt++) {
    const r = await restoreOnce(ctx, tier, p, key, parentId, backing);
    if (typeof r !== 'string') return r;
    if (r === 'miss') return undefined;
    if (r.startsWith('refused: ')) {
      log.warning(`${tier.label} entry ${key} refused: ${r.slice('refused: '.length)}; building the ${p.layer} layer instead`);
      tier.refused?.(key);
      return undefined;
    }
    if (attempt === 2 || !tier.on) {
      log.warning(`${tier.label} entry ${key}: ${r}; building instead`);
      return undefined;
    }
    log.warning(`${tier.label} entry ${key}: ${r}; downloading it once more`);
  }
}

/** One restore into a fresh staging dir: the layer's manifest, 'miss', `refused: why`, or why the transfer failed. */
async function restoreOnce(ctx: LayerContext, tier: RemoteTier, p: LayerPlan, key: string, parentId: string | undefined, backing: string | undefined): Promise<Manifest | string> {
  const staging = tempPath(ctx.dir, `${p.base}-restore`);
  fs.mkdirSync(staging, { mode: 0o700 });
  try {
    const files = cachePaths(p);
    const verified = new Map<string, string>();
    const maxBytes = layerMaxBytes(ctx.config);
    const got = await tier.restore(key, files, staging, { maxBytes, verified });
    if (got === 'miss') return 'miss';
    if (got === 'failed') return 'the download failed';
    if (got !== 'restored') return got;
    // The manifest is read only once the files are known to be plain files of the staging dir.
    const filesWhy = stagedFilesProblem(staging, files);
    if (filesWhy) return `refused: ${filesWhy}`;
    let m = loadManifest(manifestPath(staging, p.base));
    if (typeof m === 'string') return `refused: ${m}`;
    const why = await stagedLayerProblem(staging, p, m, parentId, { backing, verified, maxBytes });
    if (why) return `refused: ${why}`;
    if (backing) {
      m = await pointAt(staging, p, m, backing, { shared: false });
      const off = await backingProblem(path.join(staging, p.files[0]), backing);
      if (off) return `refused: ${p.files[0]} ${off}`;
    }
    placeLayer(ctx.dir, staging, p);
    return m;
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

/** Saves a new layer to every tier at once (so a later failure cannot lose it); says how it went. */
async function saveLayer(ctx: LayerContext, p: LayerPlan, key: string): Promise<string | undefined> {
  if (!ctx.tiers.length) return undefined;
  if (!ctx.config.cacheSave) return 'not saved (cache-save: false)';
  const said: string[] = [];
  for (const tier of ctx.tiers.filter((t) => t.on)) {
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
    for (const tier of tiers.filter((t) => t.on && !s.from.includes(t.label))) {
      if ((await tier.has?.(s.key, s.files).catch(() => undefined)) !== false) continue;
      const r = await log.group(`Saving the ${s.layer} layer to the ${tier.label}, which lacks it (${s.key})`, () => tier.save(s.key, s.files, s.dir));
      if (r === 'saved') saved.push(`${s.layer} → ${tier.label}`);
    }
  }
  return saved;
}

interface LayerHooks {
  parentId?: string;
  /** For a snapshot: the absolute path of the image its disk sits on. */
  backing?: string;
  build: () => Promise<Partial<Manifest> | void>;
  /**
   * Files of this layer left without any manifest (the Rust tool this action replaces kept the
   * same names): returns manifest fields when they check out, else undefined (they are rebuilt).
   */
  adopt?: () => Promise<Partial<Manifest> | undefined>;
}

/**
 * Ensures one layer under its lock: valid → used; else restored from the Actions cache, or built
 * and recorded with a manifest written last — and then saved to the Actions cache at once. Either
 * way the layer is marked in use by this run before the lock is released.
 */
async function ensureLayer(ctx: LayerContext, p: LayerPlan, results: LayerResult[], o: LayerHooks): Promise<Manifest> {
  const start = Date.now();
  const result = (source: LayerSource, m: Manifest, note?: string) =>
    results.push({ layer: p.layer, source, seconds: (Date.now() - start) / 1000, bytes: bytesOf(m), ...(note ? { note } : {}) });
  return withLayerLock(ctx.dir, p.base, lockWaitMs(p.layer, ctx.timeouts), async () => {
    const use = (m: Manifest) => {
      holdLayer(ctx.dir, p.base, ctx.holder);
      touchLayer(ctx.dir, p.base);
      return m;
    };
    const key = cacheKeyFor(p, o.parentId);
    const pending = (from: string[]) => ctx.config.cacheSave && ctx.tiers.length && ctx.pending.push({ layer: p.layer, key, files: cachePaths(p), dir: ctx.dir, from });
    const valid = validLayer(ctx.dir, p, o.parentId);
    if (valid) {
      // A snapshot whose cache dir moved: its disk's header still names the old backing path.
      const have = o.backing ? await pointAt(ctx.dir, p, valid, o.backing, { shared: true }) : valid;
      log.info(`${p.layer}: using ${p.files[0]} (local cache)`);
      result('local', have, Date.now() - start > 1500 ? 'waited for another run' : undefined);
      pending([]);
      return use(have);
    }
    const unrecorded = !fs.existsSync(manifestPath(ctx.dir, p.base)) && p.files.every((f) => fs.existsSync(path.join(ctx.dir, f)));
    const adopted = unrecorded && o.adopt ? await o.adopt() : undefined;
    if (adopted) {
      const m = await record(ctx, p, start, o.parentId, adopted);
      log.info(`${p.layer}: adopted ${p.files[0]} left by an earlier tool (verified)`);
      const saved = await saveLayer(ctx, p, key);
      result('local', m, `adopted an unrecorded file${saved ? ` (${saved})` : ''}`);
      return use(m);
    }
    for (const tier of ctx.tiers) {
      if (!tier.on) continue;
      const restored = await log.group(`Restoring the ${p.layer} layer from the ${tier.label} (${key})`, () => restoreLayer(ctx, tier, p, key, o.parentId, o.backing));
      if (restored) {
        log.info(`${p.layer}: restored ${p.files[0]} from the ${tier.label}`);
        result(sourceOf(tier), restored);
        pending([tier.label]);
        return use(restored);
      }
    }
    const m = await log.group(`Building the ${p.layer} layer (${p.files[0]})`, async () => {
      removeLayer(ctx.dir, p.base, p.files);
      const built = await record(ctx, p, start, o.parentId, { ...((await o.build()) ?? {}), ...(o.backing ? { backing: o.backing } : {}) });
      log.info(`${p.layer}: built ${p.files[0]} in ${((Date.now() - start) / 1000).toFixed(0)} s`);
      return built;
    });
    result('built', m, await saveLayer(ctx, p, key));
    return use(m);
  });
}

/**
 * Points a snapshot layer's disk in `dir` at `backing` (an absolute path) and records it. A disk
 * that may be a hard link another dir shares is rebased as a copy renamed over it.
 */
async function pointAt(dir: string, p: LayerPlan, m: Manifest, backing: string, o: { shared: boolean }): Promise<Manifest> {
  if (m.backing === backing) return m;
  const disk = path.join(dir, p.files[0]);
  if (o.shared) {
    const tmp = tempPath(dir, p.files[0]);
    copyFile(disk, tmp);
    await rebaseUnsafe(tmp, backing);
    fs.renameSync(tmp, disk);
  } else {
    await rebaseUnsafe(disk, backing);
  }
  // The header changed: the recorded digest follows it (a tier checks it at every restore).
  const [described] = await describeFiles(dir, [p.files[0]]);
  return writeManifest(manifestPath(dir, p.base), { ...m, backing, files: m.files.map((f) => (f.name === described.name ? described : f)) });
}

/** Writes a layer's manifest, last, over files already in place. */
async function record(ctx: LayerContext, p: LayerPlan, start: number, parentId: string | undefined, extra: Partial<Manifest>): Promise<Manifest> {
  return recordLayer(ctx.dir, p.base, {
    layer: p.layer,
    key: p.key,
    inputs: p.inputs,
    parentId,
    buildSeconds: Math.round((Date.now() - start) / 1000),
    ...extra,
    // A builder that already read its files says so; else they are hashed here, once.
    files: extra.files ?? (await describeFiles(ctx.dir, p.files)),
  });
}

/** Snapshot on top of `base`; a failure is a warning and VMs cold-boot (the seed's fallback). */
async function ensureSnapshotLayer(
  ctx: LayerContext,
  p: LayerPlan,
  base: string,
  parent: Manifest,
  key: KeyPair,
  results: LayerResult[],
): Promise<{ manifest?: Manifest; build?: SnapshotBuild }> {
  let build: SnapshotBuild | undefined;
  const at = (f: string) => path.join(ctx.dir, f);
  try {
    const manifest = await ensureLayer(ctx, p, results, {
      parentId: parent.id,
      backing: path.resolve(base),
      build: async () => {
        build = await buildSnapshot(ctx, {
          name: p.base,
          base,
          out: { disk: at(p.files[0]), efivars: at(p.files[1]), seed: at(p.files[2]) },
          key,
          memoryMb: ctx.config.memoryMb,
          cpus: ctx.config.cpus,
          diskSize: ctx.config.diskSize,
        });
        return { layout: build.layout, stateBytes: build.stateBytes };
      },
    });
    return { manifest, build };
  } catch (err) {
    // KVM failing at its first boot is not this layer's failure: the whole run falls back to TCG.
    if (err instanceof KvmBootError) throw err;
    log.warning(`failed to create the ${p.layer} (VMs will cold-boot instead): ${errorMessage(err)}`);
    results.push({ layer: p.layer, source: 'failed', seconds: 0, bytes: 0, note: errorMessage(err).replace(/\s*\n\s*/g, ' ').slice(0, 240) });
    return {};
  }
}

/**
 * The remote tiers for this config, in lookup order: the Actions cache (when `cache` is on and the
 * job has one; its worker already starting, so call this before the host is set up), then the
 * registry. ensureLayers closes them.
 */
export function openTiers(config: Config, hooks: TestHooks = NO_HOOKS): RemoteTier[] {
  const useCache = config.cache && cacheServiceAvailable();
  if (config.cache && !useCache) log.info('Actions cache: not available in this environment; using the local cache only');
  const tiers: RemoteTier[] = [];
  if (useCache) tiers.push(actionsCache(cacheTimeouts(hooks)));
  if (config.registry) tiers.push(registryTier({ repository: config.registry, token: config.registryToken }));
  for (const t of tiers) t.prestart?.();
  return tiers;
}

/**
 * Every layer this config needs. Under `kvm: auto`, a first boot that fails under KVM (QEMU exits
 * early, or the guest stalls) records the verdict, warns once, and the run goes on under TCG.
 */
export async function ensureLayers(config: Config, hostSetup: Host | Promise<Host>, opened?: RemoteTier[], o: { deferSaves?: boolean; hooks?: TestHooks } = {}): Promise<EnsureResult> {
  const hooks = o.hooks ?? NO_HOOKS;
  const tiers = opened ?? openTiers(config, hooks);
  // The host may still be being set up: the SSH key needs none of it.
  Promise.resolve(hostSetup).catch(() => {});
  const dir = config.cacheDir;
  fs.mkdirSync(dir, { recursive: true });
  cleanStaleTemps(dir);
  const rt = runtimeDir();
  fs.mkdirSync(rt, { recursive: true });
  const holder = process.env.GITHUB_ACTIONS === 'true' ? jobHolder(rt) : processHolder();
  try {
    const key = await withLayerLock(dir, CacheFiles.sshKey, 10 * 60_000, () => ensureSshKey(dir, tiers, config.cacheSave));
    let host = await hostSetup;
    for (;;) {
      try {
        const result = await ensureOnce(config, host, key, tiers, holder, rt, hooks);
        if (!o.deferSaves && result.pending.length) await syncTiers(result.pending, tiers);
        return result;
      } catch (err) {
        if (!(err instanceof KvmBootError)) throw err;
        if (host.kvmMode !== 'auto') throw new Error(kvmUnusableError(err.cause));
        host = fallBackToTcg(host, dir, err.cause);
      }
    }
  } finally {
    for (const t of tiers) t.close();
  }
}

async function ensureOnce(config: Config, host: Host, key: KeyPair, tiers: RemoteTier[], holder: LayerContext['holder'], rt: string, hooks: TestHooks): Promise<EnsureResult> {
  const dir = config.cacheDir;
  const recipes = recipesFor(config, distroImage(config.distro, config.arch).guestPackageManager, hooks.browserScript);
  const plan = planLayers(config, host, key.publicKey, recipes);
  const ctx: LayerContext = { config, host, image: plan.image, dir, timeouts: timeoutsFor(host.accel.accel, hooks.timeoutScale), tiers, hooks, holder, pending: [] };
  const results: LayerResult[] = [];
  const at = (f: string) => path.join(dir, f);

  if (config.redownload) {
    log.info('redownload: removing the raw, prepared and browser layers');
    for (const p of [plan.raw, plan.prepared, plan.browser]) {
      await withLayerLock(dir, p.base, lockWaitMs(p.layer, ctx.timeouts), async () => removeLayer(dir, p.base, p.files));
    }
  }

  const prepared = await ensureLayer(ctx, plan.prepared, results, {
    build: async () => {
      // Fetched once: adoption and the download check against the same published digest.
      let expectedRaw: Promise<Checksum> | undefined;
      const expected = () => (expectedRaw ??= expectedChecksum(plan.image, config.imageChecksum));
      // The raw image is read once: the verified digest and the manifest's sha256 come from that read.
      const rawFile = at(plan.raw.files[0]);
      const recorded = (e: Checksum, sha256: string) => ({
        digest: `${e.algorithm}:${e.hex}`,
        files: [{ name: plan.raw.files[0], size: fs.statSync(rawFile).size, sha256 }],
      });
      const raw = await ensureLayer(ctx, plan.raw, results, {
        // The seed's download under the same name is used when its digest is the published one.
        adopt: async () => {
          const e = await expected();
          const ok = await adoptRaw(rawFile, e);
          return ok ? recorded(e, ok.sha256) : undefined;
        },
        build: async () => {
          const url = config.imageUrl ?? plan.image.url;
          const e = await expected();
          log.info(`Downloading ${url}`);
          const { sha256 } = await download(url, rawFile, `${rawFile}.partial`, e);
          return recorded(e, sha256);
        },
      });
      await buildImage(ctx, {
        name: plan.prepared.base,
        base: rawFile,
        out: at(plan.prepared.files[0]),
        packages: plan.packages,
        scripts: config.prepareScript ? [{ label: 'the prepare script', text: config.prepareScript }] : [],
        memoryMb: 2048,
        cpus: 2,
        sshTimeoutMs: ctx.timeouts.prepareSshMs,
      });
      return { parentId: raw.id };
    },
  });

  let snap: { manifest?: Manifest; build?: SnapshotBuild } = {};
  if (config.snapshot) snap = await ensureSnapshotLayer(ctx, plan.snapshot, at(plan.prepared.files[0]), prepared, key, results);

  let browserSnap: { manifest?: Manifest } = {};
  let browser: Manifest | undefined;
  if (config.browser) {
    browser = await ensureLayer(ctx, plan.browser, results, {
      parentId: prepared.id,
      build: async () => {
        const source = await buildImage(ctx, {
          name: plan.browser.base,
          base: at(plan.prepared.files[0]),
          out: at(plan.browser.files[0]),
          packages: [],
          scripts: [{ label: 'the browser install script', text: recipes.browserScript }],
          result: `cat ${SOURCE_FILE} 2>/dev/null || echo custom`,
          memoryMb: BROWSER_MEMORY_MB,
          cpus: BROWSER_CPUS,
          sshTimeoutMs: ctx.timeouts.bootSshMs,
        });
        log.info(`  browser layer installed from: ${source}`);
        return { source };
      },
    });
    if (config.snapshot) browserSnap = await ensureSnapshotLayer(ctx, plan.browserSnapshot, at(plan.browser.files[0]), browser, key, results);
  }

  const { evicted, bytes } = await evict(dir, config.cacheMaxBytes).catch((err) => {
    log.warning(`cache eviction failed: ${errorMessage(err)}`);
    return { evicted: [] as Eviction[], bytes: dirBytes(dir) };
  });

  const { outputs, record } = runRecord({ config, host, plan, dir, rt, publicKey: key.publicKey, results, evicted, cacheDirBytes: bytes, coldLayout: hostLayout(ctx, { memoryMb: config.memoryMb, cpus: config.cpus }), snapshot: snap.manifest, browser, browserSnapshot: browserSnap.manifest });
  writeRecord(outputs[Outputs.Manifest], record);
  return { outputs, record, layers: results, runtimeDir: rt, plan, host, snapshotBuild: snap.build, evicted, pending: ctx.pending };
}
