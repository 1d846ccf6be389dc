// The checks a layer restored from a remote tier passes in its staging dir before it is placed:
// its manifest names exactly the planned files and is valid for this run, every file has the
// sha256 recorded when it was made, and every qcow2 is a plain qcow2 with its data inside and no
// backing file but the one the layer may have (a snapshot disk's parent, pointed at by the caller).
import * as path from 'node:path';
import { checkImage, imageInfo } from '../vm/images.js';
import { fileDigests, invalidReason, type Manifest } from '../cache/manifest.js';

export interface Planned {
  layer: string;
  files: string[];
  key: string;
  inputs: Record<string, unknown>;
}

/**
 * Why the layer in `staging` may not be used, or undefined when it may. `backing`: the parent image a snapshot's disk sits on here; the
 * saver's header names the same layer file in its cache dir. `maxBytes`: the most its files may
 * add up to.
 */
export async function stagedLayerProblem(
  staging: string,
  p: Planned,
  m: Manifest | undefined,
  parentId: string | undefined,
  { backing, verified, maxBytes }: { backing?: string; verified?: ReadonlyMap<string, string>; maxBytes: number },
): Promise<string | undefined> {
  if (!m) return 'no valid manifest';
  const named = m.files.map((f) => f.name).sort();
  if (named.join('\0') !== [...p.files].sort().join('\0')) return `its manifest names ${JSON.stringify(named)}, not ${JSON.stringify([...p.files].sort())}`;
  // Before any file is read: a sparse file may claim any size for a few bytes on disk.
  const total = m.files.reduce((n, f) => n + f.size, 0);
  if (total > maxBytes) return `its files add up to ${total} bytes, more than a layer of this configuration holds (${maxBytes})`;
  const invalid = invalidReason(m, staging, p, parentId);
  if (invalid) return invalid;
  // A digest the tier computed from the bytes it wrote (`verified`) stands for reading the file again.
  const digests = await Promise.all(m.files.map(async (f) => ({ f, sha256: verified?.get(f.name) ?? (await fileDigests(path.join(staging, f.name), ['sha256'])).sha256 })));
  const bad = digests.find((d) => d.sha256 !== d.f.sha256);
  if (bad) return `${bad.f.name} does not have the sha256 its manifest records`;
  // Side by side (each is a few qemu-img runs); the first problem in file order is the one said.
  const qcow2 = p.files.filter((x) => x.endsWith('.qcow2'));
  const problems = await Promise.all(qcow2.map((f) => imageProblem(path.join(staging, f), f === p.files[0] ? backing : undefined)));
  const i = problems.findIndex(Boolean);
  return i < 0 ? undefined : `${qcow2[i]} ${problems[i]}`;
}

/**
 * Why a qcow2 file is not a self-contained image, or, with `parent`, not an overlay on a qcow2 file
 * of that layer's name (in whatever dir it was saved from).
 */
export async function imageProblem(file: string, parent?: string): Promise<string | undefined> {
  const info = await imageInfo(file).catch(() => undefined);
  if (!info) return 'is not an image qemu-img can read';
  if (info.format !== 'qcow2') return `is ${info.format}, not qcow2`;
  if (info.dataFile) return `keeps its data in another file (${info.dataFile})`;
  if (info.backingFile && (!parent || path.basename(info.backingFile) !== path.basename(parent) || info.backingFormat !== 'qcow2')) {
    return `is backed by ${info.backingFile}${info.backingFormat ? ` (${info.backingFormat})` : ''}, ${parent ? `not by its parent layer ${path.basename(parent)}` : 'where it may have no backing file'}`;
  }
  if (!(await checkImage(file))) return 'fails qemu-img check';
  return undefined;
}

/** Why a snapshot disk does not sit on exactly `backing` (a qcow2 in this cache dir), or undefined. */
export async function backingProblem(disk: string, backing: string): Promise<string | undefined> {
  const info = await imageInfo(disk);
  if (info.backingFile !== backing || info.backingFormat !== 'qcow2') return `is backed by ${info.backingFile ?? 'nothing'} (${info.backingFormat ?? 'no format'}), not ${backing}`;
  return undefined;
}
