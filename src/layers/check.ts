// The image checks a layer restored from a remote tier passes in its staging dir before it is
// placed (ensure.ts layerEntry): every qcow2 is a plain qcow2 with its data inside and no backing
// file but the one the layer may have (a snapshot disk's parent, pointed at by the caller).
import * as path from 'node:path';
import { checkImage, imageInfo } from '../vm/images.js';

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
