// Planning, pure: config + host facts + the SSH key → every layer's key, file names
// and Actions cache key. A layer's file name carries its key, so configurations that differ in
// anything that decides a layer's content (packages, image, recipe, QEMU layout) sit side by side
// in one cache dir and never touch each other's files. The raw layer of the catalogue's own image
// keeps the seed's name, so an image the Rust tool downloaded is still found.
import { distroImage, type DistroImage } from '../distro.js';
import type { Host } from '../host/setup.js';
import { Inputs } from '../contract.js';
import { parseSize, type Checksum, type Config } from '../inputs.js';
import { snapshotFileNames } from '../names.js';
import { userData } from '../vm/seed.js';
import { HOST_KEY_INFO } from '../vm/ssh.js';
import { hashOf, type Expected, type LayerName } from '../cache/manifest.js';
import type { VmLayout } from '../vm/spec.js';

/** Tag of the read-only `images` virtfs share every snapshot's layout carries. */
export const SHARE_TAG = 'images';

/** Bump when a recipe changes what a layer contains; it is part of every key. */
export const RECIPE_VERSION = 2;
/** Characters of a layer key in its file names. */
export const NAME_KEY_LENGTH = 12;

/**
 * The most bytes one layer of this configuration can hold, the bound a remote tier may unpack an
 * entry to: a qcow2 holds at most its virtual size (the disk, or a cloud image larger than a small
 * disk) plus a snapshot's RAM state; the rest (firmware vars, seed, manifest) is small.
 */
export function layerMaxBytes(config: Pick<Config, 'diskSize' | 'memoryMb'>): number {
  return parseSize(Inputs.DiskSize, config.diskSize) + config.memoryMb * 2 ** 20 + 4 * 2 ** 30;
}

/**
 * The guest-side commands a layer's content depends on (defined by prepared.ts, snapshot.ts and
 * browser.ts); their text is hashed into the keys, so a changed command makes a new layer.
 */
export interface Recipes {
  /** prepared: instance-state cleanup before power-off. */
  cleanForTemplate: string;
  /** snapshot: the seed's setup, and the RAM shrink before savevm. */
  snapshotSetup: string;
  shrinkRam: string;
  /** browser: the install script for the requested source. */
  browserScript: string;
}

export interface LayerPlan {
  layer: LayerName;
  /** A snapshot: the device layout its RAM state is bound to, computed here (never read from a manifest). */
  layout?: VmLayout;
  /** A snapshot: the parent layer's file its disk sits on. */
  backingName?: string;
  /** The raw layer: the image digest its manifest must record. */
  digest?: string;
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

/** Packages of the prepared layer: the catalogue's list (unless `base-packages: false`), then `packages`. */
export function preparedPackages(image: DistroImage, config: Pick<Config, 'basePackages' | 'packages'>): string[] {
  return [...new Set([...(config.basePackages ? image.packages : []), ...config.packages])];
}

function plan1(layer: LayerName, name: (key: string) => string, files: (base: string) => string[], inputs: Record<string, unknown>, suffix: string): LayerPlan {
  const key = hashOf({ layer, recipe: RECIPE_VERSION, ...inputs });
  const base = name(key.slice(0, NAME_KEY_LENGTH));
  return { layer, base, files: files(base), key, cacheKey: `ryra-vm-v${RECIPE_VERSION}-${layer}-${suffix}-${key}`, inputs };
}

const qcow2 = (base: string) => [`${base}.qcow2`];

/** The device layout of a guest of this host; a snapshot's layout when `shareTag` is given. */
export function layoutFor(host: Pick<Host, 'qemuArch' | 'qemu' | 'accel' | 'firmware'>, o: { memoryMb: number; cpus: number; shareTag?: string }): VmLayout {
  return {
    arch: host.qemuArch,
    machine: host.qemu.machine,
    accel: host.accel,
    memoryMb: o.memoryMb,
    cpus: o.cpus,
    firmwareFormat: host.firmware.format,
    seed: true,
    ...(o.shareTag ? { shareTag: o.shareTag } : {}),
  };
}

/** What a layer's manifest must equal, for a parent build `parentId` (manifestMismatch). */
export function expectedOf(p: LayerPlan, parentId?: string): Expected {
  return { layer: p.layer, key: p.key, inputs: p.inputs, files: p.files, parentId, layout: p.layout, backingName: p.backingName };
}
const stripQcow2 = (f: string) => f.replace(/\.qcow2$/, '');

/**
 * The raw layer of the image whose digest is `digest` (configured, or what its publisher lists this
 * run): the digest is its key, so a republished image gives new layers on every tier.
 */
export function planRaw(config: Pick<Config, 'distro' | 'arch' | 'imageUrl'>, digest: Checksum): LayerPlan {
  const image = distroImage(config.distro, config.arch);
  const custom = config.imageUrl !== undefined;
  const d = `${digest.algorithm}:${digest.hex}`;
  // The catalogue's image keeps the seed's file name (its downloads are adopted by digest).
  const raw = plan1('raw', (k) => (custom ? `${stripQcow2(image.rawFile)}-${k}` : stripQcow2(image.rawFile)), qcow2, { url: custom ? 'custom' : image.url, digest: d }, `${config.distro}-${config.arch}`);
  return { ...raw, digest: d };
}

export function planLayers(config: Config, host: Host, publicKey: string, recipes: Recipes, digest: Checksum): Plan {
  const image = distroImage(config.distro, config.arch);
  // The list itself is in the prepared layer's key, so base-packages on and off never share a layer.
  const packages = preparedPackages(image, config);
  const id = `${config.distro}-${config.arch}`;
  const raw = planRaw(config, digest);
  const cloudInit = userData({ publicKey: '<key>', hostname: 'ryra-prepare', packages });
  const prepared = plan1('prepared', (k) => `${stripQcow2(image.preparedFile)}-${k}`, qcow2, {
    raw: raw.key,
    packages,
    cloudInit: hashOf(cloudInit + recipes.cleanForTemplate),
    ...(config.prepareScript ? { prepare: hashOf(config.prepareScript) } : {}),
  }, id);
  const machineIdentity = {
    qemu: host.qemu.version,
    machine: host.qemu.machine,
    accel: host.accel,
    cpu: host.cpuIdentity,
    // The firmware's identity, not its path: a padded copy lives under the cache dir, which differs per runner.
    firmware: { code: host.firmware.code.split('/').pop(), size: host.firmware.size, format: host.firmware.format },
    cpus: config.cpus,
    memoryMb: config.memoryMb,
    diskSize: config.diskSize,
    sshKey: hashOf(publicKey.trim()),
    // The guest's SSH host key, derived from the SSH key this way, is in the snapshot's RAM.
    hostKey: HOST_KEY_INFO,
    setup: hashOf(recipes.snapshotSetup + recipes.shrinkRam),
  };
  const layout = layoutFor(host, { memoryMb: config.memoryMb, cpus: config.cpus, shareTag: SHARE_TAG });
  const snapshot = {
    ...plan1('snapshot', (k) => `${image.snapshotBase}-snapshot-${config.memoryMb}-${k}`, snapshotFileNames, { prepared: prepared.key, ...machineIdentity }, `${id}-m${config.memoryMb}`),
    layout,
    backingName: prepared.files[0],
  };
  const browser = plan1('browser', (k) => `${stripQcow2(image.browserFile)}-${k}`, qcow2, {
    prepared: prepared.key,
    source: config.browserSource,
    script: hashOf(recipes.browserScript),
  }, id);
  const browserSnapshot = {
    ...plan1('browser-snapshot', (k) => `${image.browserSnapshotBase}-snapshot-${config.memoryMb}-${k}`, snapshotFileNames, { browser: browser.key, ...machineIdentity }, `${id}-m${config.memoryMb}`),
    layout,
    backingName: browser.files[0],
  };
  return { image, packages, raw, prepared, snapshot, browser, browserSnapshot };
}
