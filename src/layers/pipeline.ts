// ensureLayers(): per layer, use it when its manifest says it is valid for this run, else build it
// under a lock. Planning (names, keys) is pure; building happens only for what is missing.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Outputs, type OutputValues } from '../contract.js';
import { distroImage, GUEST_USER, type DistroImage } from '../distro.js';
import type { Host } from '../host/setup.js';
import type { Checksum, Config } from '../inputs.js';
import { errorMessage, log } from '../log.js';
import { runtimeDir } from '../paths.js';
import { ensureKeyFile, type KeyPair } from '../vm/ssh.js';
import { actionsCache, cacheServiceAvailable, type ActionsCache } from '../cache/actions.js';
import { userData } from '../vm/seed.js';
import { BROWSER_CPUS, BROWSER_MEMORY_MB, browserInstallScript } from './browser.js';
import { timeoutsFor, type LayerContext } from './context.js';
import {
  cleanStaleTemps,
  MANIFEST_SUFFIX,
  tempPath,
  describeFiles,
  fileDigests,
  hashOf,
  invalidReason,
  manifestPath,
  readManifest,
  removeLayer,
  withLayerLock,
  writeManifest,
  type LayerName,
  type Manifest,
} from './manifest.js';
import { CLEAN_FOR_TEMPLATE, buildImage } from './prepared.js';
import { checkImage } from '../vm/images.js';
import { download, expectedChecksum } from './raw.js';
import { SHRINK_RAM, SNAPSHOT_SETUP, buildSnapshot, type SnapshotBuild } from './snapshot.js';

/** Bump when a recipe changes what a layer contains; it is part of every key. */
export const RECIPE_VERSION = 1;
export const SSH_KEY_FILE = 'test-ssh-key';

export interface LayerPlan {
  layer: LayerName;
  /** Manifest base name (the layer's main file without .qcow2). */
  base: string;
  files: string[];
  key: string;
  /** Readable, exact Actions cache key. */
  cacheKey: string;
  inputs: Record<string, unknown>;
}

export interface Plan {
  image: DistroImage;
  packages: string[];
  raw: LayerPlan;
  prepared: LayerPlan;
  snapshot: LayerPlan;
  browser: LayerPlan;
  browserSnapshot: LayerPlan;
}

function plan1(layer: LayerName, base: string, files: string[], inputs: Record<string, unknown>, suffix: string): LayerPlan {
  const key = hashOf({ layer, recipe: RECIPE_VERSION, ...inputs });
  return { layer, base, files, key, cacheKey: `ryra-vm-v${RECIPE_VERSION}-${layer}-${suffix}-${key}`, inputs };
}

/** Packages of the prepared layer: the catalogue's (or a test's replacement list) plus `packages`. */
export function basePackages(image: DistroImage, extra: string[], env: NodeJS.ProcessEnv = process.env): string[] {
  const base = env.RYRA_VM_BASE_PACKAGES !== undefined ? env.RYRA_VM_BASE_PACKAGES.split(/\s+/).filter(Boolean) : [...image.packages];
  return [...new Set([...base, ...extra])];
}

/** Pure: every layer's file names, keys and cache keys for this config, host and SSH key. */
export function planLayers(config: Config, host: Host, publicKey: string, env: NodeJS.ProcessEnv = process.env): Plan {
  const image = distroImage(config.distro, config.arch);
  const packages = basePackages(image, config.packages, env);
  const id = `${config.distro}-${config.arch}`;
  const url = config.imageUrl ?? image.url;
  const raw = plan1('raw', stripQcow2(image.rawFile), [image.rawFile], {
    url: config.imageUrl ? 'custom' : url,
    checksum: config.imageChecksum ? `${config.imageChecksum.algorithm}:${config.imageChecksum.hex}` : image.checksumUrl,
  }, id);
  const cloudInit = userData({ publicKey: '<key>', hostname: 'ryra-prepare', packages });
  const prepared = plan1('prepared', stripQcow2(image.preparedFile), [image.preparedFile], {
    raw: raw.key,
    packages,
    cloudInit: hashOf(cloudInit + CLEAN_FOR_TEMPLATE),
  }, id);
  const machineIdentity = {
    qemu: host.qemu.version,
    machine: host.qemu.machine,
    accel: host.accel,
    cpu: host.cpuIdentity,
    // The firmware's identity, not its path: a padded copy lives under the cache dir, which differs per runner.
    firmware: { code: path.basename(host.firmware.code), size: fileSize(host.firmware.code), format: host.firmware.format },
    cpus: config.cpus,
    memoryMb: config.memoryMb,
    sshKey: hashOf(publicKey.trim()),
    setup: hashOf(SNAPSHOT_SETUP + SHRINK_RAM),
  };
  const snapFiles = (b: string) => [`${b}.qcow2`, `${b}-efivars.qcow2`, `${b}-seed.iso`];
  const snapBase = `${image.snapshotBase}-snapshot-${config.memoryMb}`;
  const snapshot = plan1('snapshot', snapBase, snapFiles(snapBase), { prepared: prepared.key, ...machineIdentity }, `${id}-m${config.memoryMb}`);
  const browser = plan1('browser', stripQcow2(image.browserFile), [image.browserFile], {
    prepared: prepared.key,
    script: hashOf(browserInstallScript(env)),
  }, id);
  const bsnapBase = `${image.browserSnapshotBase}-snapshot-${config.memoryMb}`;
  const browserSnapshot = plan1('browser-snapshot', bsnapBase, snapFiles(bsnapBase), { browser: browser.key, ...machineIdentity }, `${id}-m${config.memoryMb}`);
  return { image, packages, raw, prepared, snapshot, browser, browserSnapshot };
}

function stripQcow2(f: string): string {
  return f.replace(/\.qcow2$/, '');
}

function fileSize(f: string): number {
  try {
    return fs.statSync(f).size;
  } catch {
    return -1;
  }
}

export type LayerSource = 'local' | 'actions cache' | 'built' | 'failed' | 'skipped';

export interface LayerResult {
  layer: LayerName;
  source: LayerSource;
  seconds: number;
  bytes: number;
  note?: string;
}

export interface EnsureResult {
  outputs: OutputValues;
  layers: LayerResult[];
  runtimeDir: string;
  plan: Plan;
  snapshotBuild?: SnapshotBuild;
}

/** The valid manifest of a layer, or undefined (with the reason logged). */
export function validLayer(dir: string, p: LayerPlan, parentId?: string): Manifest | undefined {
  const m = readManifest(manifestPath(dir, p.base));
  const why = invalidReason(m, dir, p, parentId);
  if (why && m) log.info(`  ${p.layer} layer ${p.base} not usable: ${why}`);
  return why ? undefined : m;
}

function bytesOf(m: Manifest): number {
  return m.files.reduce((n, f) => n + f.size, 0);
}

/** A child layer's cache key names its parent's build, so it can only ever restore onto that build. */
export function cacheKeyFor(p: LayerPlan, parentId?: string): string {
  return parentId ? `${p.cacheKey}-${hashOf(parentId).slice(0, 12)}` : p.cacheKey;
}

/** Restores a layer from the Actions cache into a scratch dir, validates it, then moves it in place. */
async function restoreLayer(ctx: LayerContext, p: LayerPlan, key: string, parentId?: string): Promise<Manifest | undefined> {
  const staging = tempPath(ctx.dir, `${p.base}-restore`);
  fs.mkdirSync(staging, { recursive: true });
  try {
    if (!(await ctx.cache!.restore(key, cachePaths(p), staging))) return undefined;
    const m = readManifest(manifestPath(staging, p.base));
    const why = invalidReason(m, staging, p, parentId) ?? (await imagesCorrupt(staging, p.files));
    if (why) {
      log.warning(`Actions cache entry ${key} is not usable (${why}); building instead`);
      return undefined;
    }
    removeLayer(ctx.dir, p.base, p.files);
    for (const f of p.files) fs.renameSync(path.join(staging, f), path.join(ctx.dir, f));
    fs.renameSync(manifestPath(staging, p.base), manifestPath(ctx.dir, p.base));
    return m;
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

async function imagesCorrupt(dir: string, files: string[]): Promise<string | undefined> {
  for (const f of files.filter((x) => x.endsWith('.qcow2'))) {
    if (!(await checkImage(path.join(dir, f)))) return `qemu-img check fails on ${f}`;
  }
  return undefined;
}

function cachePaths(p: LayerPlan): string[] {
  return [...p.files, p.base + MANIFEST_SUFFIX];
}

/** Writes a layer's manifest, last, over files already in place. */
async function record(ctx: LayerContext, p: LayerPlan, start: number, parentId: string | undefined, extra: Partial<Manifest>): Promise<Manifest> {
  return writeManifest(manifestPath(ctx.dir, p.base), {
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

/** Saves a new layer to the Actions cache at once (so a later failure cannot lose it); says how it went. */
async function saveLayer(ctx: LayerContext, p: LayerPlan, key: string): Promise<string> {
  if (!ctx.cache) return 'no Actions cache';
  const saved = await log.group(`Saving the ${p.layer} layer to the Actions cache (${key})`, () => ctx.cache!.save(key, cachePaths(p), ctx.dir));
  return saved === 'saved' ? 'saved to the Actions cache' : saved === 'exists' ? 'another job saved it first' : 'not saved to the Actions cache';
}

/**
 * Ensures one layer: valid → used; else, under its lock, checked again (another run may have
 * built it meanwhile), restored from the Actions cache, or built and recorded with a manifest
 * written last — and then saved to the Actions cache at once, so a later failure cannot lose it.
 */
async function ensureLayer(
  ctx: LayerContext,
  p: LayerPlan,
  results: LayerResult[],
  o: {
    parentId?: string;
    build: () => Promise<Partial<Manifest> | void>;
    /**
     * Files of this layer left without any manifest (the Rust tool this action replaces kept the
     * same names): returns manifest fields when they check out, else undefined (they are rebuilt).
     */
    adopt?: () => Promise<Partial<Manifest> | undefined>;
  },
): Promise<Manifest> {
  const start = Date.now();
  const result = (source: LayerSource, m: Manifest, note?: string) =>
    results.push({ layer: p.layer, source, seconds: (Date.now() - start) / 1000, bytes: bytesOf(m), ...(note ? { note } : {}) });
  const have = validLayer(ctx.dir, p, o.parentId);
  if (have) {
    log.info(`${p.layer}: using ${p.files[0]} (local cache)`);
    result('local', have);
    return have;
  }
  return withLayerLock(ctx.dir, p.base, async () => {
    const again = validLayer(ctx.dir, p, o.parentId);
    if (again) {
      log.info(`${p.layer}: ${p.files[0]} was built by another run meanwhile`);
      result('local', again, 'waited for another run');
      return again;
    }
    const key = cacheKeyFor(p, o.parentId);
    const unrecorded = !fs.existsSync(manifestPath(ctx.dir, p.base)) && p.files.every((f) => fs.existsSync(path.join(ctx.dir, f)));
    const adopted = unrecorded && o.adopt ? await o.adopt() : undefined;
    if (adopted) {
      const m = await record(ctx, p, start, o.parentId, adopted);
      log.info(`${p.layer}: adopted ${p.files[0]} left by an earlier tool (verified)`);
      result('local', m, `adopted an unrecorded file (${await saveLayer(ctx, p, key)})`);
      return m;
    }
    if (ctx.cache) {
      const restored = await log.group(`Restoring the ${p.layer} layer from the Actions cache (${key})`, () => restoreLayer(ctx, p, key, o.parentId));
      if (restored) {
        log.info(`${p.layer}: restored ${p.files[0]} from the Actions cache`);
        result('actions cache', restored);
        return restored;
      }
    }
    const m = await log.group(`Building the ${p.layer} layer (${p.files[0]})`, async () => {
      removeLayer(ctx.dir, p.base, p.files);
      const built = await record(ctx, p, start, o.parentId, (await o.build()) ?? {});
      log.info(`${p.layer}: built ${p.files[0]} in ${((Date.now() - start) / 1000).toFixed(0)} s`);
      return built;
    });
    result('built', m, ctx.cache ? await saveLayer(ctx, p, key) : undefined);
    return m;
  });
}

function snapshotPaths(dir: string, p: LayerPlan) {
  return { disk: path.join(dir, p.files[0]), efivars: path.join(dir, p.files[1]), seed: path.join(dir, p.files[2]) };
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
  try {
    const manifest = await ensureLayer(ctx, p, results, {
      parentId: parent.id,
      build: async () => {
        build = await buildSnapshot(ctx, { name: p.base, base, out: snapshotPaths(ctx.dir, p), key, memoryMb: ctx.config.memoryMb, cpus: ctx.config.cpus });
        return { layout: build.layout };
      },
    });
    return { manifest, build };
  } catch (err) {
    log.warning(`failed to create the ${p.layer} (VMs will cold-boot instead): ${errorMessage(err)}`);
    results.push({ layer: p.layer, source: 'failed', seconds: 0, bytes: 0, note: errorMessage(err).replace(/\s*\n\s*/g, ' ').slice(0, 240) });
    return {};
  }
}

/** The SSH key's Actions cache entry: one per repository, so every runner's snapshots share it. */
export const SSH_KEY_CACHE_KEY = `ryra-vm-v${RECIPE_VERSION}-ssh-key`;

/**
 * The shared SSH key, which every snapshot has baked in: the local one; else the one in the
 * Actions cache (so snapshots saved by other runners accept it); else a new one, saved there.
 */
async function ensureSshKey(dir: string, cache: ActionsCache | undefined): Promise<KeyPair> {
  const file = path.join(dir, SSH_KEY_FILE);
  const names = [SSH_KEY_FILE, `${SSH_KEY_FILE}.pub`];
  const local = () => fs.existsSync(file) && fs.existsSync(`${file}.pub`);
  if (local() || !cache) return ensureKeyFile(file);
  const adopt = async (): Promise<boolean> => {
    const staging = tempPath(dir, 'ssh-key-restore');
    fs.mkdirSync(staging);
    try {
      if (!(await cache.restore(SSH_KEY_CACHE_KEY, names, staging))) return false;
      fs.renameSync(path.join(staging, names[1]), `${file}.pub`);
      fs.renameSync(path.join(staging, names[0]), file);
      return true;
    } finally {
      fs.rmSync(staging, { recursive: true, force: true });
    }
  };
  if (await adopt()) {
    log.info('SSH key: restored from the Actions cache');
    return ensureKeyFile(file);
  }
  ensureKeyFile(file);
  // Another job may have saved its key first: then use that one, so all snapshots agree.
  if ((await cache.save(SSH_KEY_CACHE_KEY, names, dir)) === 'exists' && (await adopt())) log.info('SSH key: another job saved one first; using it');
  return ensureKeyFile(file);
}

export async function ensureLayers(config: Config, host: Host): Promise<EnsureResult> {
  const dir = config.cacheDir;
  fs.mkdirSync(dir, { recursive: true });
  cleanStaleTemps(dir);
  const useCache = config.cache && cacheServiceAvailable();
  if (config.cache && !useCache) log.info('Actions cache: not available in this environment; using the local cache only');
  const cache = useCache ? actionsCache() : undefined;
  const key = await withLayerLock(dir, SSH_KEY_FILE, () => ensureSshKey(dir, cache));
  const plan = planLayers(config, host, key.publicKey);
  const ctx: LayerContext = { config, host, image: plan.image, dir, timeouts: timeoutsFor(host.accel.accel), cache };
  const results: LayerResult[] = [];
  const at = (f: string) => path.join(dir, f);

  if (config.redownload) {
    log.info('redownload: removing the raw, prepared and browser layers');
    for (const p of [plan.raw, plan.prepared, plan.browser]) removeLayer(dir, p.base, p.files);
  }

  const prepared = await ensureLayer(ctx, plan.prepared, results, {
    build: async () => {
      // Fetched once: adoption and the download check against the same published digest.
      let expectedRaw: Promise<Checksum> | undefined;
      const expected = () => (expectedRaw ??= expectedChecksum(plan.image, config.imageChecksum));
      // The raw image is read once: the verified digest and the manifest's sha256 come from that read.
      const recorded = (e: Checksum, sha256: string) => ({
        digest: `${e.algorithm}:${e.hex}`,
        files: [{ name: plan.raw.files[0], size: fs.statSync(at(plan.raw.files[0])).size, sha256 }],
      });
      const raw = await ensureLayer(ctx, plan.raw, results, {
        // The seed's download under the same name is used when its digest is the published one.
        adopt: async () => {
          const e = await expected();
          log.info(`${plan.raw.files[0]} has no manifest: checking its ${e.algorithm} before using it`);
          const d = await fileDigests(at(plan.raw.files[0]), [e.algorithm, 'sha256']);
          if (d[e.algorithm] === e.hex) return recorded(e, d.sha256);
          log.info(`  it is not the published image (${e.algorithm}:${d[e.algorithm].slice(0, 16)}…): downloading afresh`);
          return undefined;
        },
        build: async () => {
          const url = config.imageUrl ?? plan.image.url;
          const e = await expected();
          log.info(`Downloading ${url}`);
          const dest = at(plan.raw.files[0]);
          const { sha256 } = await download(url, dest, `${dest}.partial`, e);
          return recorded(e, sha256);
        },
      });
      await buildImage(ctx, {
        name: plan.prepared.base,
        base: at(plan.raw.files[0]),
        out: at(plan.prepared.files[0]),
        packages: plan.packages,
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
  if (config.browser) {
    const browser = await ensureLayer(ctx, plan.browser, results, {
      parentId: prepared.id,
      build: () =>
        buildImage(ctx, {
          name: plan.browser.base,
          base: at(plan.prepared.files[0]),
          out: at(plan.browser.files[0]),
          packages: [],
          install: browserInstallScript(),
          memoryMb: BROWSER_MEMORY_MB,
          cpus: BROWSER_CPUS,
          sshTimeoutMs: ctx.timeouts.bootSshMs,
        }),
    });
    if (config.snapshot) browserSnap = await ensureSnapshotLayer(ctx, plan.browserSnapshot, at(plan.browser.files[0]), browser, key, results);
  }

  const rt = runtimeDir();
  fs.mkdirSync(rt, { recursive: true });
  const manifestFile = path.join(rt, `outputs-${config.distro}-${config.arch}-m${config.memoryMb}.json`);
  const s = snap.manifest ? snapshotPaths(dir, plan.snapshot) : undefined;
  const b = browserSnap.manifest ? snapshotPaths(dir, plan.browserSnapshot) : undefined;
  const outputs: OutputValues = {
    [Outputs.Image]: at(plan.prepared.files[0]),
    [Outputs.EfiCode]: host.firmware.code,
    [Outputs.EfiVarsTemplate]: host.firmware.vars,
    [Outputs.Prepared]: 'true',
    [Outputs.Snapshot]: String(!!s),
    [Outputs.SnapshotDisk]: s?.disk ?? '',
    [Outputs.SnapshotEfivars]: s?.efivars ?? '',
    [Outputs.SnapshotSeedIso]: s?.seed ?? '',
    [Outputs.SnapshotMemoryMb]: s ? String(config.memoryMb) : '',
    [Outputs.SshKey]: at(SSH_KEY_FILE),
    [Outputs.SshPublicKey]: key.publicKey,
    [Outputs.SshUser]: GUEST_USER,
    [Outputs.BrowserImage]: config.browser ? at(plan.browser.files[0]) : '',
    [Outputs.BrowserSnapshotDisk]: b?.disk ?? '',
    [Outputs.BrowserSnapshotEfivars]: b?.efivars ?? '',
    [Outputs.BrowserSnapshotSeedIso]: b?.seed ?? '',
    [Outputs.Accel]: host.accel.accel,
    [Outputs.Qemu]: host.qemu.path,
    [Outputs.CacheHit]: results.filter((r) => r.source === 'actions cache').map((r) => r.layer).join(','),
    [Outputs.Manifest]: manifestFile,
  };
  fs.writeFileSync(
    manifestFile,
    JSON.stringify(
      {
        outputs,
        cacheDir: dir,
        distro: config.distro,
        arch: config.arch,
        machine: host.qemu.machine,
        layout: snap.manifest?.layout,
        browserLayout: browserSnap.manifest?.layout,
        firmware: host.firmware,
        layers: results,
      },
      null,
      2,
    ) + '\n',
  );
  return { outputs, layers: results, runtimeDir: rt, plan, snapshotBuild: snap.build };
}
