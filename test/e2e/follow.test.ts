// Layers follow their image (amd64, TCG, the action as the runner runs it): a local HTTP server is
// the image's publisher (`image-url` + `image-checksum-url`). Image A is the test image, so the
// suite's light layers are this configuration's (the raw key is the digest, fetched or given);
// then the server publishes image B under the same URL and the next run builds raw and prepared
// layers from B; with the server down, a run goes on with B's layers in one warning; and
// `redownload: true` on an empty disk, with an Actions cache holding B's layers, downloads the
// image and rebuilds without restoring them, then saves what it built.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { startCacheServer, type CacheServer } from '../support/cache-server.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { runner } from '../support/runner.js';
import { LIGHT, linkLayers, sharedDir, sharedLayers } from '../support/shared.js';

const root = tempRoot('follow');
const cacheDir = path.join(root.dir, 'cache');
let fx: Fixture;
let cache: CacheServer;
let publisher: { url: string; publish: (file: string) => string; close: () => Promise<void> };
const figures: string[] = [];
const IMAGE = 'debian-13-generic-amd64.qcow2';

/** The publisher: the image at /images/IMAGE and its SHA512SUMS beside it, both from the file last published. */
async function startPublisher() {
  let image = '';
  let sums = '';
  const server = http.createServer((req, res) => {
    if (req.url === `/images/${IMAGE}`) {
      res.writeHead(200, { 'content-length': fs.statSync(image).size });
      fs.createReadStream(image).pipe(res);
    } else if (req.url === '/images/SHA512SUMS') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end(sums);
    } else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/images`;
  return {
    url,
    publish(file: string) {
      image = file;
      const sha512 = createHash('sha512').update(fs.readFileSync(file)).digest('hex');
      sums = `${'0'.repeat(128)}  debian-13-generic-arm64.qcow2\n${sha512}  ${IMAGE}\n`;
      return sha512;
    },
    close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
  };
}

before(async () => {
  fx = ensureFixture('amd64');
  cache = await startCacheServer({ dir: root.dir });
  publisher = await startPublisher();
  // Image A is the test image: the suite's light layers (raw and prepared) are this configuration's.
  const { outputs } = await sharedLayers(LIGHT, path.join(root.dir, 'rt-shared'));
  const prepared = path.basename(outputs.image, '.qcow2');
  linkLayers(sharedDir(), cacheDir, (n) => n.startsWith('debian-13-generic-amd64') || n.startsWith(prepared));
});
after(async () => {
  await publisher?.close();
  await cache?.close();
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`follow figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

const sources = (r?: RunRecord) => Object.fromEntries((r?.layers ?? []).map((l) => [l.layer, l.source]));
const warnings = (out: string) => out.split('\n').filter((l) => l.startsWith('::warning::'));
const manifestOf = (file: string) => JSON.parse(fs.readFileSync(file.replace(/\.qcow2$/, '.manifest.json'), 'utf8'));

function inputs(dir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    arch: 'amd64',
    kvm: 'false',
    'install-deps': 'false',
    memory: LIGHT.memory,
    packages: LIGHT.packages,
    'base-packages': 'false',
    snapshot: 'false',
    'image-url': `${publisher.url}/${IMAGE}`,
    'image-checksum-url': `${publisher.url}/SHA512SUMS`,
    'cache-dir': dir,
    ...extra,
  };
}

async function action(name: string, dir: string, extra: Record<string, string> = {}) {
  const r = runner(root.dir, name, cache.env('v2'));
  const res = await r.action(inputs(dir, extra));
  assert.equal(res.code, 0, `${JSON.stringify(res.record?.layers)}\n${res.stdout.slice(-5000)}`);
  await r.post();
  return res;
}

describe('layers follow their image', { concurrency: false }, () => {
  let preparedA = '';
  let preparedB = '';
  let digestB = '';

  test('image A, its digest read from the checksum file: the layers made with the digest given are this run’s', async () => {
    const digestA = publisher.publish(fx.image);
    assert.equal(`sha512:${digestA}`, fx.checksum);
    const res = await action('a', cacheDir);
    assert.deepEqual(sources(res.record), { prepared: 'local' }, res.stdout.split('\n').filter((l) => !l.startsWith('::debug::')).join('\n').slice(0, 6000));
    assert.match(res.stdout, new RegExp(`Image ${IMAGE}: sha512:${digestA.slice(0, 16)}… as ${publisher.url}/SHA512SUMS lists it now`));
    preparedA = res.outputs.image;
  });

  test('image B under the same URL: the next run downloads it and builds new raw and prepared layers from it', async () => {
    const b = path.join(root.dir, 'image-b.qcow2');
    // The same guest in another qcow2 layout: other bytes, another digest.
    execFileSync('qemu-img', ['convert', '-O', 'qcow2', '-o', 'cluster_size=131072', fx.image, b]);
    digestB = publisher.publish(b);
    assert.notEqual(`sha512:${digestB}`, fx.checksum);
    const res = await action('b', cacheDir);
    assert.deepEqual(sources(res.record), { raw: 'built', prepared: 'built' });
    preparedB = res.outputs.image;
    assert.notEqual(preparedB, preparedA);
    const raws = fs.readdirSync(cacheDir).filter((n) => n.startsWith('debian-13-generic-amd64') && n.endsWith('.manifest.json')).map((n) => JSON.parse(fs.readFileSync(path.join(cacheDir, n), 'utf8')));
    assert.deepEqual(raws.map((m) => m.digest).sort(), [fx.checksum, `sha512:${digestB}`].sort(), 'a raw layer per image');
    const raw = raws.find((m) => m.digest === `sha512:${digestB}`);
    assert.equal(manifestOf(preparedB).parentId, raw.id, 'the prepared layer sits on image B');
    assert.ok(fs.existsSync(preparedA), 'the layers of image A stay (eviction decides)');
    figures.push(`image B: raw + prepared built ${(res.ms / 1000).toFixed(0)} s`);
  });

  test('the publisher down: the run goes on with image B’s layers (the newest), in one warning naming their age', async () => {
    await publisher.close();
    const res = await action('c', cacheDir);
    assert.deepEqual(sources(res.record), { prepared: 'local' });
    assert.equal(res.outputs.image, preparedB);
    const said = warnings(res.stdout);
    assert.equal(said.length, 1, said.join('\n'));
    assert.match(said[0], new RegExp(`cannot read the image's checksum file ${publisher.url}/SHA512SUMS \\(.+\\): going on with the newest raw layer here, debian-13-generic-amd64-[0-9a-f]{12}\\.qcow2 of \\d+ min ago \\(sha512:${digestB.slice(0, 16)}…\\)`));
    figures.push(`publisher down: all local ${(res.ms / 1000).toFixed(1)} s`);
  });

  test('redownload: true with an Actions cache holding every layer: the image is downloaded again, raw and prepared rebuilt without a restore; an empty disk then restores them', async () => {
    publisher = await startPublisher();
    // The publisher is back on another port: the same image B, so the same layer keys.
    const b = path.join(root.dir, 'image-b.qcow2');
    assert.equal(publisher.publish(b), digestB);
    const saved = cache.entries().map((e) => e.key);
    assert.ok(saved.some((k) => k.startsWith('ryra-vm-v2-prepared-')) && saved.some((k) => k.startsWith('ryra-vm-v2-raw-')), saved.join(', '));
    const before = cache.requests.length;
    const res = await action('d', path.join(root.dir, 'cache-d'), { redownload: 'true' });
    assert.deepEqual(sources(res.record), { raw: 'built', prepared: 'built' });
    assert.equal(res.outputs['cache-hit-layers'], '');
    assert.equal(res.outputs['cache-hit'], 'false');
    assert.match(res.stdout, /redownload: downloading the image and building every layer anew/);
    const downloads = cache.requests.slice(before).filter((x) => x.op === 'twirp.GetCacheEntryDownloadURL').map((x) => JSON.stringify(x.body));
    assert.ok(downloads.every((d) => !/prepared|raw-/.test(d)), `no layer lookup: ${downloads.join('\n')}`);
    // The same image and inputs make the same keys: the cache's entries are those layers, and the next run gets them.
    const next = await action('e', path.join(root.dir, 'cache-e'));
    assert.deepEqual(sources(next.record), { prepared: 'actions cache' });
    assert.equal(next.outputs['cache-hit'], 'true');
    // An entry is immutable: the cache keeps the first save of a key (image B's first build), which the rebuild equals in every input.
    const sha = (f: string) => manifestOf(f).files[0].sha256;
    assert.equal(sha(next.outputs.image), sha(preparedB));
    figures.push(`redownload: raw + prepared rebuilt ${(res.ms / 1000).toFixed(0)} s; empty disk restored ${(next.ms / 1000).toFixed(1)} s`);
  });
});
