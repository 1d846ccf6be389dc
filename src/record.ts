// The run record: one JSON file per configuration prepared in a job (the `manifest` output), written
// by the pipeline and read by `ryra-vm`, the tests and the bench through these types. It holds the
// outputs, how to restore the snapshot (the exact QEMU recipe) and how to cold-boot the image.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Outputs, type OutputValues } from './contract.js';
import { GUEST_USER, type Arch } from './distro.js';
import type { Accel } from './host/platform.js';
import type { Host } from './host/setup.js';
import { InputError, type Config, type SyncMode } from './inputs.js';
import { hashOf, type LayerName, type Manifest } from './cache/manifest.js';
import type { LayerPlan, Plan } from './layers/plan.js';
import { CacheFiles, RuntimeFiles } from './names.js';
import { recipe } from './vm/spec.js';
import type { RestoreOptions } from './vm/boot.js';
import type { VmLayout } from './vm/spec.js';

export type LayerSource = 'local' | 'actions cache' | 'registry' | 'built' | 'failed' | 'skipped';

/** How a run got one layer (the job summary is a table of these). */
export interface LayerResult {
  layer: LayerName;
  source: LayerSource;
  seconds: number;
  bytes: number;
  note?: string;
}

/** How to restore a snapshot layer: its files, the image its disk sits on, and the recipe. */
export interface SnapshotRecord {
  /** QEMU's arguments; only {disk} {efivars} {ssh-port} {serial-log} {share-dir} vary per VM. */
  argv: string[];
  disk: string;
  efivars: string;
  seed: string;
  /** The image the disk's overlay sits on (its header names it by this absolute path). */
  backing: string;
  layout: VmLayout;
  /** The layer's base name (what a VM holds while it runs, what a failed restore invalidates). */
  base: string;
  /** The backing layer's base name. */
  backingBase: string;
}

/** How to cold-boot an image of this run (when there is no snapshot, or a restore fails). */
export interface ColdRecord {
  image: string;
  base: string;
  layout: VmLayout;
}

export interface RunRecord {
  version: 2;
  /** One per configuration: the hash of its layer keys. */
  id: string;
  outputs: OutputValues;
  cacheDir: string;
  distro: string;
  arch: Arch;
  qemu: string;
  accel: Accel;
  firmware: { code: string; vars: string; format: 'raw' | 'qcow2' };
  guestPackageManager: 'apt' | 'dnf';
  restore?: SnapshotRecord;
  browserRestore?: SnapshotRecord;
  cold: ColdRecord;
  browserCold?: ColdRecord;
  /** Settings of later steps (`ryra-vm boot` and `run`) chosen by the action's inputs. */
  run: { environmentVariables: string[]; sync: SyncMode; diskSize: string; bootTimeoutMs?: number; syncMaxBytes?: number };
  layers: LayerResult[];
  cacheDirBytes: number;
  evicted: { base: string; layer: string; bytes: number }[];
}

/** What a restore of this record's snapshot (or browser snapshot) needs from it, logging in with the shared key. */
export function restoreFrom(r: RunRecord, browser = false): Pick<RestoreOptions, 'qemu' | 'recipe' | 'files' | 'backing' | 'key' | 'user'> {
  const snap = browser ? r.browserRestore : r.restore;
  if (!snap) throw new InputError(`the run record ${r.outputs.manifest} has no ${browser ? 'browser ' : ''}snapshot`);
  return {
    qemu: r.qemu,
    recipe: snap.argv,
    files: snap,
    backing: snap.backing,
    key: { privateKey: fs.readFileSync(r.outputs['ssh-key'], 'utf8'), publicKey: r.outputs['ssh-public-key'] },
    user: r.outputs['ssh-user'],
  };
}

export function recordPath(runtimeDir: string, id: string): string {
  return path.join(runtimeDir, `${RuntimeFiles.recordPrefix}${id}.json`);
}

export function writeRecord(file: string, r: RunRecord): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(r, null, 2) + '\n');
  fs.renameSync(tmp, file);
}

/**
 * A record from a file: the file the `manifest` output names, or the JSON that `ryra-vm prepare
 * --json` printed (its `manifest` key names the record).
 */
export function readRecord(file: string): RunRecord {
  let j: Partial<RunRecord> & { manifest?: string };
  try {
    j = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof j;
  } catch (err) {
    throw new InputError(`cannot read the run record ${file}: ${(err as Error).message}`);
  }
  if (j.version === 2 && j.outputs) return j as RunRecord;
  if (typeof j.manifest === 'string' && j.manifest !== file) return readRecord(j.manifest);
  throw new InputError(`${file} is neither a run record (the manifest output) nor the JSON of ryra-vm prepare --json`);
}

/** The newest record in the runtime dir, optionally for one cache dir. */
export function newestRecord(runtimeDir: string, cacheDir?: string): RunRecord {
  const files = (fs.existsSync(runtimeDir) ? fs.readdirSync(runtimeDir) : [])
    .filter((f) => f.startsWith(RuntimeFiles.recordPrefix) && f.endsWith('.json'))
    .map((f) => path.join(runtimeDir, f))
    .map((f) => ({ t: fs.statSync(f).mtimeMs, r: readRecord(f) }))
    .filter((x) => !cacheDir || path.resolve(x.r.cacheDir) === path.resolve(cacheDir))
    .sort((a, b) => b.t - a.t);
  if (!files.length) throw new InputError(`no prepared layers recorded in ${runtimeDir}: run the action (or ryra-vm prepare) first, or name a record with --config`);
  return files[0].r;
}

/** What a run's layers come to: the action's outputs and the run record (written by the caller). */
export function runRecord(o: {
  config: Config;
  host: Host;
  plan: Plan;
  dir: string;
  rt: string;
  publicKey: string;
  results: LayerResult[];
  evicted: RunRecord['evicted'];
  cacheDirBytes: number;
  coldLayout: VmLayout;
  snapshot?: Manifest;
  browser?: Manifest;
  browserSnapshot?: Manifest;
}): { outputs: OutputValues; record: RunRecord } {
  const { config, host, plan, results } = o;
  const at = (f: string) => path.join(o.dir, f);
  // The recipe is the plan's: a snapshot layer's manifest only had to equal it (ensure.ts).
  const snapshotRecord = (p: LayerPlan, m: Manifest | undefined, backing: LayerPlan): SnapshotRecord | undefined =>
    m && p.layout && {
      argv: recipe(p.layout, { efiCode: host.firmware.code, seedIso: at(p.files[2]) }),
      disk: at(p.files[0]),
      efivars: at(p.files[1]),
      seed: at(p.files[2]),
      backing: at(backing.files[0]),
      layout: p.layout,
      base: p.base,
      backingBase: backing.base,
    };
  const restore = snapshotRecord(plan.snapshot, o.snapshot, plan.prepared);
  const browserRestore = snapshotRecord(plan.browserSnapshot, o.browserSnapshot, plan.browser);
  const id = hashOf({ prepared: plan.prepared.key, snapshot: restore ? plan.snapshot.key : null, browser: o.browser ? plan.browser.key : null }).slice(0, 16);
  const remote = (r: LayerResult) => r.source === 'actions cache' || r.source === 'registry';
  const outputs: OutputValues = {
    [Outputs.Image]: at(plan.prepared.files[0]),
    [Outputs.EfiCode]: host.firmware.code,
    [Outputs.EfiVarsTemplate]: host.firmware.vars,
    [Outputs.Prepared]: 'true',
    [Outputs.Snapshot]: String(!!restore),
    [Outputs.SnapshotDisk]: restore?.disk ?? '',
    [Outputs.SnapshotEfivars]: restore?.efivars ?? '',
    [Outputs.SnapshotSeedIso]: restore?.seed ?? '',
    [Outputs.SnapshotMemoryMb]: restore ? String(config.memoryMb) : '',
    [Outputs.SshKey]: at(CacheFiles.sshKey),
    [Outputs.SshPublicKey]: o.publicKey,
    [Outputs.SshUser]: GUEST_USER,
    [Outputs.BrowserImage]: o.browser ? at(plan.browser.files[0]) : '',
    [Outputs.BrowserSnapshotDisk]: browserRestore?.disk ?? '',
    [Outputs.BrowserSnapshotEfivars]: browserRestore?.efivars ?? '',
    [Outputs.BrowserSnapshotSeedIso]: browserRestore?.seed ?? '',
    [Outputs.Accel]: host.accel.accel,
    [Outputs.Qemu]: host.qemu.path,
    [Outputs.CacheHit]: String(results.every((r) => r.source === 'local' || remote(r))),
    [Outputs.CacheHitLayers]: results.filter(remote).map((r) => r.layer).join(','),
    [Outputs.Manifest]: recordPath(o.rt, id),
  };
  const record: RunRecord = {
    version: 2,
    id,
    outputs,
    cacheDir: o.dir,
    distro: config.distro,
    arch: config.arch,
    qemu: host.qemu.path,
    accel: host.accel.accel,
    firmware: { code: host.firmware.code, vars: host.firmware.vars, format: host.firmware.format },
    guestPackageManager: plan.image.guestPackageManager,
    ...(restore ? { restore } : {}),
    ...(browserRestore ? { browserRestore } : {}),
    cold: { image: at(plan.prepared.files[0]), base: plan.prepared.base, layout: o.coldLayout },
    ...(o.browser ? { browserCold: { image: at(plan.browser.files[0]), base: plan.browser.base, layout: o.coldLayout } } : {}),
    run: { environmentVariables: config.environmentVariables, sync: config.sync, syncMaxBytes: config.syncMaxBytes, diskSize: config.diskSize, bootTimeoutMs: config.bootTimeoutMs },
    layers: results,
    cacheDirBytes: o.cacheDirBytes,
    evicted: o.evicted,
  };
  return { outputs, record };
}
