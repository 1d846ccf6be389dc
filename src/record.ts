// The run record: one JSON file per configuration prepared in a job (the `manifest` output), written
// by the pipeline and read by `ryra-vm`, the tests and the bench through these types. It holds the
// outputs, how to restore the snapshot (the exact QEMU recipe) and how to cold-boot the image.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { OutputValues } from './contract.js';
import type { Arch } from './distro.js';
import type { Accel } from './host/platform.js';
import { InputError, type SyncMode } from './inputs.js';
import type { LayerResult } from './layers/pipeline.js';
import { RuntimeFiles } from './names.js';
import type { RestoreOptions } from './vm/boot.js';
import type { VmLayout } from './vm/spec.js';

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
