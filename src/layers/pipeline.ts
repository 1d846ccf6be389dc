// ensureLayers(): per layer, use it when its manifest says it is valid for this run, else restore it
// from a remote tier (the Actions cache, then an OCI registry) or build it, under the layer's lock;
// then save what was built, evict over the size budget, and write the run record. Each layer is
// data (a LayerSpec) handed to the one ensure step (ensure.ts); what a tier restores comes through
// the one restore path (cache/staged.ts), checked against what the plan computes. Layers a tier lacks but this run has (local or from another tier) are saved to it afterwards:
// in the action's post step, so the warm path stays short. Planning is pure (plan.ts); the local
// tier is cache/local.ts; this file only orchestrates.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Outputs, type OutputValues } from '../contract.js';
import { actionsCache, cacheServiceAvailable, cacheTimeouts } from '../cache/actions.js';
import { registryTier } from '../cache/registry.js';
import type { RemoteTier } from '../cache/tier.js';
import { cleanStaleTemps, evict, dirBytes, jobHolder, processHolder, withLayerLock, type Eviction } from '../cache/local.js';
import { distroImage } from '../distro.js';
import { NO_HOOKS, type TestHooks } from '../env.js';
import { fallBackToTcg, type Host } from '../host/setup.js';
import { kvmUnusableError } from '../host/platform.js';
import type { Checksum, Config } from '../inputs.js';
import { errorMessage, log } from '../log.js';
import { CacheFiles } from '../names.js';
import { runtimeDir } from '../paths.js';
import { runRecord, writeRecord, type LayerResult, type RunRecord } from '../record.js';
import { KvmBootError } from '../vm/boot.js';
import type { KeyPair } from '../vm/ssh.js';
import { BROWSER_CPUS, BROWSER_MEMORY_MB, SOURCE_FILE, browserInstallScript } from './browser.js';
import { timeoutsFor, type LayerContext, type PendingSave } from './context.js';
import { ensureLayer, syncTiers } from './ensure.js';
import type { Manifest } from '../cache/manifest.js';
import { layoutFor, planLayers, type LayerPlan, type Plan, type Recipes } from './plan.js';
import { CLEAN_FOR_TEMPLATE, buildImage } from './prepared.js';
import { adoptRaw, download } from './raw.js';
import { imageDigest } from './follow.js';
import { SHRINK_RAM, SNAPSHOT_SETUP, SNAPSHOT_SETUP_SHELL, buildSnapshot, type SnapshotBuild } from './snapshot.js';
import { ensureSshKey } from './sshkey.js';

export type { LayerResult, LayerSource } from '../record.js';
export { cacheKeyFor, syncTiers } from './ensure.js';

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
    snapshotSetup: `${SNAPSHOT_SETUP_SHELL}\n${SNAPSHOT_SETUP}`,
    shrinkRam: SHRINK_RAM,
    browserScript: browserScript ?? browserInstallScript(config.browserSource, manager),
  };
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
    const manifest = await ensureLayer(ctx, {
      plan: p,
      parentId: parent.id,
      backing: path.resolve(base),
      keyed: true,
      build: async () => {
        build = await buildSnapshot(ctx, {
          name: p.base,
          base,
          out: { disk: at(p.files[0]), efivars: at(p.files[1]), seed: at(p.files[2]) },
          key,
          layout: p.layout!,
          diskSize: ctx.config.diskSize,
        });
        return { stateBytes: build.stateBytes };
      },
    }, results);
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
    const { key, keyTiers } = await withLayerLock(dir, CacheFiles.sshKey, 10 * 60_000, () => ensureSshKey(dir, tiers, config.cacheSave));
    const digest = await imageDigest(config, dir);
    let host = await hostSetup;
    for (;;) {
      try {
        const result = await ensureOnce(config, host, key, tiers, holder, rt, hooks, keyTiers, digest);
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

async function ensureOnce(config: Config, host: Host, key: KeyPair, tiers: RemoteTier[], holder: LayerContext['holder'], rt: string, hooks: TestHooks, keyTiers: string[], digest: Checksum): Promise<EnsureResult> {
  const dir = config.cacheDir;
  const recipes = recipesFor(config, distroImage(config.distro, config.arch).guestPackageManager, hooks.browserScript);
  const plan = planLayers(config, host, key.publicKey, recipes, digest);
  // redownload: the image and every layer above it are made anew, neither a local copy nor a tier's used.
  const fresh = config.redownload ? [plan.raw, plan.prepared, plan.snapshot, plan.browser, plan.browserSnapshot].map((p) => p.layer) : undefined;
  if (fresh) log.info('redownload: downloading the image and building every layer anew (no local or remote copy is used)');
  const ctx: LayerContext = { config, host, image: plan.image, dir, timeouts: timeoutsFor(host.accel.accel, hooks.timeoutScale), tiers, hooks, holder, pending: [], keyTiers, fresh };
  const results: LayerResult[] = [];
  const at = (f: string) => path.join(dir, f);

  const prepared = await ensureLayer(ctx, {
    plan: plan.prepared,
    build: async () => {
      // The raw image is read once: the verified digest and the manifest's sha256 come from that read.
      const rawFile = at(plan.raw.files[0]);
      const recorded = (e: Checksum, sha256: string) => ({
        digest: `${e.algorithm}:${e.hex}`,
        files: [{ name: plan.raw.files[0], size: fs.statSync(rawFile).size, sha256 }],
      });
      const raw = await ensureLayer(ctx, {
        plan: plan.raw,
        // The seed's download under the same name is used when its digest is the published one.
        adopt: async () => {
          // Adoption and the download check against the digest the raw layer is keyed by.
          const ok = await adoptRaw(rawFile, digest);
          return ok ? recorded(digest, ok.sha256) : undefined;
        },
        build: async () => {
          const url = config.imageUrl ?? plan.image.url;
          log.info(`Downloading ${url}`);
          const { sha256 } = await download(url, rawFile, `${rawFile}.partial`, digest);
          return recorded(digest, sha256);
        },
      }, results);
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
  }, results);

  let snap: { manifest?: Manifest; build?: SnapshotBuild } = {};
  if (config.snapshot) snap = await ensureSnapshotLayer(ctx, plan.snapshot, at(plan.prepared.files[0]), prepared, key, results);

  let browserSnap: { manifest?: Manifest } = {};
  let browser: Manifest | undefined;
  if (config.browser) {
    browser = await ensureLayer(ctx, {
      plan: plan.browser,
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
    }, results);
    if (config.snapshot) browserSnap = await ensureSnapshotLayer(ctx, plan.browserSnapshot, at(plan.browser.files[0]), browser, key, results);
  }

  const { evicted, bytes } = await evict(dir, config.cacheMaxBytes).catch((err) => {
    log.warning(`cache eviction failed: ${errorMessage(err)}`);
    return { evicted: [] as Eviction[], bytes: dirBytes(dir) };
  });

  const { outputs, record } = runRecord({ config, host, plan, dir, rt, publicKey: key.publicKey, results, evicted, cacheDirBytes: bytes, coldLayout: layoutFor(host, { memoryMb: config.memoryMb, cpus: config.cpus }), snapshot: snap.manifest, browser, browserSnapshot: browserSnap.manifest });
  writeRecord(outputs[Outputs.Manifest], record);
  return { outputs, record, layers: results, runtimeDir: rt, plan, host, snapshotBuild: snap.build, evicted, pending: ctx.pending };
}
