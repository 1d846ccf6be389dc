// Layers shared by a fleet through an OCI registry: the bundled action against Debian's
// docker-registry (the CNCF distribution registry) on loopback, with `auth: token` and the tests'
// own token server, the Actions cache off (amd64, TCG, the light configuration from the shared
// cache dir):
// - runner A, its layers all local, pushes them in its post step as OCI artifacts (no blob over
//   512 MiB); a second run pushes no blob;
// - runner B, an empty disk, pulls every layer and builds nothing; its snapshot boots from a QEMU
//   command line of its own; its main step is timed against a plain `curl | zstd -d` of the blobs;
// - a registry that is down costs one warning and a bounded wait, and the job stays green.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { freePort } from '../../src/vm/machine.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { registryMissing, startRegistry, type TestRegistry } from '../support/registry.js';
import { exec, runner } from '../support/runner.js';
import { LIGHT, configInputs, linkLayers, sharedDir, sharedLayers } from '../support/shared.js';
import { withRecipeRestore } from '../support/vm.js';

const missing = registryMissing();
const root = tempRoot('registry');
const PASSWORD = 'registry-token-for-tests';
const REPO = 'ryra/layers';
let reg: TestRegistry;
let fx: Fixture;
let shared: RunRecord;
const figures: string[] = [];

before(async () => {
  if (missing) return;
  fx = ensureFixture('amd64');
  reg = await startRegistry({ password: PASSWORD });
  shared = (await sharedLayers(LIGHT, path.join(root.dir, 'rt-shared'))).record;
});
after(async () => {
  await reg?.close();
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`registry figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

const sources = (r?: RunRecord) => Object.fromEntries((r?.layers ?? []).map((l) => [l.layer, l.source]));
const warnings = (out: string) => out.split('\n').filter((l) => l.startsWith('::warning::'));
const inputs = (dir: string, registry = `${reg.host}/${REPO}`) => ({ ...configInputs(LIGHT, fx), cache: 'false', 'cache-dir': dir, registry, 'registry-token': PASSWORD });

// (fetch, not a child curl: the token server runs in this process.)
/** A pull token from the tests' token server, as a plain client gets one. */
async function pullToken(): Promise<string> {
  const realm = new URL(reg.token!.url);
  realm.searchParams.set('service', 'ryra-test-registry');
  realm.searchParams.set('scope', `repository:${REPO}:pull`);
  const res = await fetch(realm, { headers: { Authorization: `Basic ${Buffer.from(`x:${PASSWORD}`).toString('base64')}` } });
  assert.equal(res.status, 200);
  return ((await res.json()) as { token: string }).token;
}
async function getJson<T>(uri: string, token: string, accept = 'application/vnd.oci.image.manifest.v1+json'): Promise<T> {
  const res = await fetch(`http://${reg.host}/v2/${REPO}/${uri}`, { headers: { Authorization: `Bearer ${token}`, Accept: accept } });
  assert.equal(res.status, 200, uri);
  return (await res.json()) as T;
}
interface Manifest {
  mediaType: string;
  artifactType: string;
  config: { mediaType: string; digest: string; size: number };
  layers: { mediaType: string; digest: string; size: number }[];
}

describe('an OCI registry tier (amd64, TCG)', { skip: missing, timeout: 30 * 60_000 }, () => {
  const dirA = path.join(root.dir, 'cache-a');
  let manifests: Manifest[] = [];

  test('runner A, its layers all local, pushes them after the job as OCI artifacts with no blob over 512 MiB; a second run pushes no blob', async () => {
    linkLayers(sharedDir(), dirA, (n) => n.startsWith(path.basename(shared.outputs.image, '.qcow2')) || n.startsWith(path.basename(shared.restore!.disk, '.qcow2')) || n === 'test-ssh-key' || n === 'test-ssh-key.pub');
    const r = runner(root.dir, 'a');
    const res = await r.action(inputs(dirA));
    await r.post();
    assert.equal(res.code, 0, res.stdout.slice(-4000));
    assert.deepEqual(sources(res.record), { prepared: 'local', snapshot: 'local' });
    assert.deepEqual(warnings(res.stdout), []);
    const token = await pullToken();
    const tags = (await getJson<{ tags: string[] }>('tags/list', token, 'application/json')).tags;
    assert.equal(tags.length, 3, `the SSH key, the prepared layer, the snapshot: ${tags.join(', ')}`);
    manifests = await Promise.all(tags.map((t) => getJson<Manifest>(`manifests/${t}`, token)));
    for (const m of manifests) {
      assert.equal(m.mediaType, 'application/vnd.oci.image.manifest.v1+json');
      assert.equal(m.artifactType, 'application/vnd.ryra-vm.layer.v1');
      assert.ok(m.layers.length > 0);
      for (const l of m.layers) assert.ok(l.size <= 512 * 2 ** 20, `${l.digest}: ${l.size} bytes`);
    }
    const uploads = reg.blobUploads();
    assert.ok(uploads > 0);
    const again = runner(root.dir, 'a2');
    const res2 = await again.action(inputs(dirA));
    await again.post();
    assert.equal(res2.code, 0, res2.stdout.slice(-4000));
    assert.equal(reg.blobUploads(), uploads, 'the second run uploads no blob');
    figures.push(`A (all local) main ${(res.ms / 1000).toFixed(1)} s`);
  });

  test('runner B, an empty disk and no Actions cache: pulls every layer, builds nothing; timed against a plain curl | zstd -d of its blobs; its snapshot boots from a command line of its own', async () => {
    // The floor: every blob of the three artifacts through curl, zstd -d where it was compressed, into files.
    const token = await pullToken();
    const floorDir = fs.mkdtempSync(path.join(root.dir, 'floor-'));
    const script = manifests
      .flatMap((m) => m.layers)
      .map((l, i) => `curl -sSf -H "Authorization: Bearer $T" http://${reg.host}/v2/${REPO}/blobs/${l.digest} ${l.mediaType.endsWith('+zstd') ? '| zstd -d -q' : ''} > ${floorDir}/${i}`)
      .join('\n');
    // Three rounds, alternated (each on an empty disk): the medians of the main step and of the floor.
    const mains: number[] = [];
    const floors: number[] = [];
    let rec: RunRecord | undefined;
    for (let i = 0; i < 3; i++) {
      const r = runner(root.dir, `b${i}`);
      const res = await r.action(inputs(path.join(root.dir, `cache-b${i}`)));
      await r.post();
      assert.equal(res.code, 0, res.stdout.slice(-4000));
      assert.deepEqual(sources(res.record), { prepared: 'registry', snapshot: 'registry' });
      assert.equal(res.outputs['cache-hit'], 'true');
      assert.deepEqual(warnings(res.stdout), []);
      mains.push(res.ms);
      rec ??= res.record;
      const t0 = Date.now();
      const floor = await exec('bash', ['-eo', 'pipefail', '-c', script], { ...process.env, T: token });
      floors.push(Date.now() - t0);
      assert.equal(floor.code, 0, floor.stderr);
    }
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[1];
    const ratio = median(mains) / median(floors);
    figures.push(`B pull-all main step ${(median(mains) / 1000).toFixed(2)} s (${mains.join(', ')} ms) vs curl | zstd -d ${(median(floors) / 1000).toFixed(2)} s (${floors.join(', ')} ms) = ${ratio.toFixed(2)}x`);
    // Measured quiet: 1.8-2.3x (was 4.4x before the curl pull); under the other lane's TCG guest it
    // swings more, so CI guards against a regression at 3x and the bench measures the 2x side by side.
    assert.ok(ratio <= 3.0, `main step ${median(mains)} ms, plain curl | zstd -d ${median(floors)} ms: ${ratio.toFixed(2)}x`);
    await withRecipeRestore(rec!, root.dir, async (c) => {
      assert.match((await c.exec('jq --version')).stdout, /^jq-1/);
    });
  });

  test('a registry that is down: one warning, a bounded wait, the job green', async () => {
    const dirC = path.join(root.dir, 'cache-c');
    linkLayers(dirA, dirC, (n) => !n.endsWith('.shared'));
    const r = runner(root.dir, 'c');
    const res = await r.action(inputs(dirC, `127.0.0.1:${await freePort()}/${REPO}`));
    const post = await r.post();
    assert.equal(res.code, 0, res.stdout.slice(-4000));
    assert.deepEqual(sources(res.record), { prepared: 'local', snapshot: 'local' });
    assert.equal(warnings(res.stdout).length, 1, res.stdout);
    assert.match(warnings(res.stdout)[0], /registry 127\.0\.0\.1:\d+\/ryra\/layers: .*off for the rest of this run/);
    assert.ok(res.ms + post.ms < 60_000, `${res.ms} + ${post.ms} ms`);
    figures.push(`registry down: main ${(res.ms / 1000).toFixed(1)} s, post ${(post.ms / 1000).toFixed(1)} s`);
  });
});
