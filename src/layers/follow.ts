// Layers follow their image: the raw layer is keyed by the image's digest, read each run from the
// publisher's checksum file (the catalogue's, or `image-checksum-url`), so an image republished
// under the same URL gives new layers on every tier. When the file cannot be read, the newest
// valid raw layer of this distro and arch in the cache dir is used, said in one warning with its age.
import * as fs from 'node:fs';
import { expectedOf, planRaw } from './plan.js';
import { publishedChecksum, publishedDigest, CHECKSUM_FETCH_MS } from './raw.js';
import { distroImage } from '../distro.js';
import { invalidReason, loadManifest, type Manifest } from '../cache/manifest.js';
import { MANIFEST_SUFFIX } from '../names.js';
import { parseChecksum, type Checksum, type Config } from '../inputs.js';
import { errorMessage, log } from '../log.js';

export type ImageConfig = Pick<Config, 'distro' | 'arch' | 'imageUrl' | 'imageChecksum' | 'imageChecksumUrl'>;

/** The image digest the layers are keyed by this run. */
export async function imageDigest(config: ImageConfig, dir: string, boundMs = CHECKSUM_FETCH_MS): Promise<Checksum> {
  if (config.imageChecksum) return config.imageChecksum;
  const image = distroImage(config.distro, config.arch);
  const src = publishedChecksum(image, config.imageUrl, config.imageChecksumUrl);
  if (!src) throw new Error('no digest and no checksum file for the image (image-checksum or image-checksum-url)');
  try {
    const d = await publishedDigest(src, boundMs);
    log.info(`Image ${src.file}: ${d.algorithm}:${d.hex.slice(0, 16)}… as ${src.url} lists it now`);
    return d;
  } catch (err) {
    const newest = newestLocalRaw(config, dir);
    if (!newest) {
      throw new Error(`cannot read the image's checksum file ${src.url} (${errorMessage(err)}), and ${dir} holds no raw layer of ${config.distro} ${config.arch} to go on with; retry when it can be read, or give image-checksum`);
    }
    log.warning(
      `cannot read the image's checksum file ${src.url} (${errorMessage(err)}): going on with the newest raw layer here, ` +
        `${newest.m.files[0]?.name} of ${age(newest.m.createdAt)} (${newest.m.digest?.slice(0, 23)}…), and the layers built on it; a newer image is not looked for this run`,
    );
    return newest.digest;
  }
}

/**
 * The newest raw layer of this distro, arch and image source in `dir` that is valid as the plan
 * computes it for the digest it records (its name, key and files), or undefined. The local dir is
 * the runner user's own; its digest still only counts where the plan's key for it matches.
 */
export function newestLocalRaw(config: ImageConfig, dir: string): { m: Manifest; digest: Checksum } | undefined {
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => n.endsWith(MANIFEST_SUFFIX));
  } catch {
    return undefined;
  }
  const found: { m: Manifest; digest: Checksum; at: number }[] = [];
  for (const n of names) {
    const m = loadManifest(`${dir}/${n}`);
    if (typeof m === 'string' || m.layer !== 'raw' || typeof m.digest !== 'string') continue;
    let digest: Checksum;
    try {
      digest = parseChecksum(m.digest);
    } catch {
      continue;
    }
    const p = planRaw(config, digest);
    if (`${p.base}${MANIFEST_SUFFIX}` !== n || invalidReason(m, dir, expectedOf(p))) continue;
    found.push({ m, digest, at: Date.parse(m.createdAt) || 0 });
  }
  found.sort((a, b) => b.at - a.at);
  return found[0];
}

function age(createdAt: string, now = Date.now()): string {
  const s = Math.max(0, (now - (Date.parse(createdAt) || now)) / 1000);
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 2 * 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}
