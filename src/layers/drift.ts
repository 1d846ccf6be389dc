// Why a snapshot is built anew beside one that is already here. A layer's file name carries its
// key, so a snapshot made by another QEMU, CPU, firmware or SSH key never has the name this run
// looks for: without this line, a new QEMU would rebuild it silently. When the plan's snapshot (or
// browser snapshot) is missing locally, the local layer of the same kind, distro/arch and memory
// used last is compared with the plan and the inputs that differ are said in one line.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { manifestMismatch, readManifest, type Manifest } from '../cache/manifest.js';
import { log } from '../log.js';
import { MANIFEST_SUFFIX } from '../names.js';
import { NAME_KEY_LENGTH, type LayerPlan } from './plan.js';

/** A local layer's manifest and its base name (its file names without the suffixes). */
export interface LocalBuild {
  base: string;
  manifest: Manifest;
}

/** The base names of `p`'s layers under any key: `<snapshotBase>-snapshot-<memory>-` and the key's characters. */
function namePrefix(p: Pick<LayerPlan, 'base' | 'key'>): string | undefined {
  const k = p.key.slice(0, NAME_KEY_LENGTH);
  return p.base.endsWith(`-${k}`) ? p.base.slice(0, -k.length) : undefined;
}

/**
 * The line to say when `p` is built while `others` (local layers, the most recently used first)
 * are here: the first of its kind under another key, and the inputs it was built with that differ
 * from the plan's (`built with other qemu ("7.2.0" ≠ "8.2.2")`, manifestMismatch's words).
 * Undefined when there is none. Pure.
 */
export function otherBuildLine(p: Pick<LayerPlan, 'layer' | 'base' | 'key' | 'inputs' | 'files'>, others: readonly LocalBuild[]): string | undefined {
  const prefix = namePrefix(p);
  if (!prefix) return undefined;
  const name = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[0-9a-f]{${NAME_KEY_LENGTH}}$`);
  const other = others.find((o) => o.base !== p.base && name.test(o.base) && o.manifest.layer === p.layer && o.manifest.key !== p.key);
  if (!other) return undefined;
  const off = manifestMismatch(other.manifest, { layer: p.layer, key: p.key, inputs: p.inputs, files: p.files });
  return off ? `${p.layer}: building ${p.base} beside the local ${other.base}, which was ${off.why}` : undefined;
}

/** The layers in `dir` named like `p` under another key, the most recently used first (a use touches the manifest). */
export function localBuilds(dir: string, p: Pick<LayerPlan, 'base' | 'key'>): LocalBuild[] {
  const prefix = namePrefix(p);
  if (!prefix) return [];
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const found: (LocalBuild & { used: number })[] = [];
  for (const n of names) {
    if (!n.startsWith(prefix) || !n.endsWith(MANIFEST_SUFFIX)) continue;
    const base = n.slice(0, -MANIFEST_SUFFIX.length);
    if (base === p.base) continue;
    const file = path.join(dir, n);
    const manifest = readManifest(file);
    if (!manifest) continue;
    let used = 0;
    try {
      used = fs.statSync(file).mtimeMs;
    } catch {
      continue;
    }
    found.push({ base, manifest, used });
  }
  return found.sort((a, b) => b.used - a.used).map(({ base, manifest }) => ({ base, manifest }));
}

/** Says, in one line, why a snapshot layer is built beside the one already here (nothing when there is none). */
export function sayOtherBuild(dir: string, p: LayerPlan): void {
  if (!p.layout) return;
  const line = otherBuildLine(p, localBuilds(dir, p));
  if (line) log.info(line);
}
