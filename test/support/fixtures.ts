// Debian 13 test images built from Debian packages (cloud.debian.org is unreachable here), cached
// outside the checkout by the builder's hash. The first build of arm64 takes ~17 min alone, ~45 min at idle priority beside the tests (.ci/run).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Arch } from '../../src/distro.js';

const BUILDER = path.resolve('test/fixtures/build-debian-image.sh');

export interface Fixture {
  image: string;
  sha512: string;
  /** `sha512:HEX`, as the image-checksum input takes it. */
  checksum: string;
}

export function ensureFixture(arch: Arch): Fixture {
  const out = execFileSync('bash', [BUILDER, arch], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24 });
  const image = out.trim().split('\n').pop()!;
  const sums = fs.readFileSync(path.join(path.dirname(image), 'SHA512SUMS'), 'utf8');
  const line = sums.split('\n').find((l) => l.trim().endsWith(path.basename(image)));
  if (!line) throw new Error(`no digest for ${image} in its SHA512SUMS`);
  const sha512 = line.split(/\s+/)[0];
  return { image, sha512, checksum: `sha512:${sha512}` };
}

/** Guest arches the end-to-end suites run for: RYRA_TEST_ARCHES="amd64 arm64" (default both). */
export function testArches(): Arch[] {
  const v = process.env.RYRA_TEST_ARCHES?.split(/[\s,]+/).filter(Boolean);
  return (v?.length ? v : ['amd64', 'arm64']) as Arch[];
}
