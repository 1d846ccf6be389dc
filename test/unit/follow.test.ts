// Layers follow their image: the digest the raw layer is keyed by comes from the publisher's
// checksum file, read each run within a bound; without it, the newest valid local raw layer.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, afterEach, beforeEach, describe, test } from 'node:test';
import { writeManifest } from '../../src/cache/manifest.js';
import { parseConfig } from '../../src/inputs.js';
import { imageDigest, newestLocalRaw } from '../../src/layers/follow.js';
import { planRaw } from '../../src/layers/plan.js';
import { log, setLogger, type Logger } from '../../src/log.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ryra-follow-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const said = { info: [] as string[], warnings: [] as string[] };
const original = log;
beforeEach(() => {
  said.info = [];
  said.warnings = [];
  const l: Logger = { info: (m) => said.info.push(m), warning: (m) => said.warnings.push(m), error: () => {}, debug: () => {}, group: (_n, fn) => fn() };
  setLogger(l);
});
afterEach(() => setLogger(original));

const A = 'a1'.repeat(64);
const B = 'b2'.repeat(64);

/** A checksum file host: `body` served at /SUMS (or nothing at all when `silent`). */
async function host(o: { body?: () => string; silent?: boolean } = {}) {
  const server = http.createServer((req, res) => {
    if (o.silent) return; // never answers
    if (req.url !== '/SUMS') return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'text/plain' }).end(o.body?.() ?? '');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return { url: `http://127.0.0.1:${port}/SUMS`, close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))) };
}

function config(dir: string, inputs: Record<string, string>) {
  const all: Record<string, string> = { arch: 'amd64', 'cache-dir': dir, ...inputs };
  return parseConfig((n) => all[n], { arch: 'amd64', env: {}, homedir: '/h' });
}

/** A raw layer in `dir` as the pipeline leaves it for `hex`, made `hoursAgo` ago. */
function rawLayer(dir: string, c: ReturnType<typeof config>, hex: string, hoursAgo: number) {
  const p = planRaw(c, { algorithm: 'sha512', hex });
  fs.writeFileSync(path.join(dir, p.files[0]), hex);
  const file = path.join(dir, `${p.base}.manifest.json`);
  writeManifest(file, { layer: 'raw', key: p.key, inputs: p.inputs, digest: p.digest, files: [{ name: p.files[0], size: hex.length, sha256: 'e'.repeat(64) }], buildSeconds: 1 });
  const m = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.writeFileSync(file, JSON.stringify({ ...m, createdAt: new Date(Date.now() - hoursAgo * 3600_000).toISOString() }));
  return p;
}

describe('the image digest the layers follow', () => {
  test('a custom image with image-checksum-url: the digest its publisher lists now, read each run; republished, another', async () => {
    let listed = A;
    const h = await host({ body: () => `${'0'.repeat(128)}  other.qcow2\n${listed}  img.qcow2\n` });
    try {
      const c = config(tmp, { 'image-url': 'http://127.0.0.1:9/images/img.qcow2', 'image-checksum-url': h.url });
      assert.deepEqual(await imageDigest(c, tmp), { algorithm: 'sha512', hex: A });
      listed = B;
      const d = await imageDigest(c, tmp);
      assert.deepEqual(d, { algorithm: 'sha512', hex: B });
      assert.notEqual(planRaw(c, d).key, planRaw(c, { algorithm: 'sha512', hex: A }).key);
      assert.match(said.info.at(-1)!, new RegExp(`img\\.qcow2: sha512:${B.slice(0, 16)}… as ${h.url} lists it now`));
      // SHA256SUMS and Fedora's CHECKSUM are read too, with no format named.
      listed = 'ab'.repeat(32);
      assert.deepEqual(await imageDigest(c, tmp), { algorithm: 'sha256', hex: 'ab'.repeat(32) });
    } finally {
      await h.close();
    }
  });

  test('a fixed image-checksum is used as given, with nothing fetched', async () => {
    const c = config(tmp, { 'image-url': '/x/img.qcow2', 'image-checksum': `sha512:${A}` });
    assert.deepEqual(await imageDigest(c, tmp), { algorithm: 'sha512', hex: A });
    assert.deepEqual(said.info, []);
  });

  test('checksum file unreadable: the newest valid local raw layer, in one warning naming its age; none: an error naming the file and the fix', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cache-'));
    const h = await host();
    await h.close(); // nothing listens there now
    const c = config(dir, { 'image-url': 'http://127.0.0.1:9/img.qcow2', 'image-checksum-url': h.url });
    await assert.rejects(imageDigest(c, dir, 500), (e: Error) => {
      assert.match(e.message, new RegExp(`cannot read the image's checksum file ${h.url} \\(.+\\), and ${dir} holds no raw layer of debian-13 amd64 to go on with; retry when it can be read, or give image-checksum`));
      return true;
    });
    rawLayer(dir, c, A, 72);
    const newer = rawLayer(dir, c, B, 5);
    // Another image source's raw layer (the catalogue's) is not this image's.
    rawLayer(dir, config(dir, {}), 'cc'.repeat(64), 1);
    // A newest one whose file was cut is not valid.
    const cut = rawLayer(dir, c, 'dd'.repeat(64), 0);
    fs.truncateSync(path.join(dir, cut.files[0]), 3);
    assert.equal(newestLocalRaw(c, dir)?.m.key, newer.key);
    said.warnings = [];
    assert.deepEqual(await imageDigest(c, dir, 500), { algorithm: 'sha512', hex: B });
    assert.equal(said.warnings.length, 1);
    assert.match(said.warnings[0], new RegExp(`cannot read the image's checksum file ${h.url} .*: going on with the newest raw layer here, ${newer.files[0]} of 5 h ago \\(sha512:${B.slice(0, 16)}…\\)`));
  });

  test('a checksum host that never answers costs at most the bound (two attempts)', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cache-'));
    const h = await host({ silent: true });
    try {
      const c = config(dir, { 'image-url': '/x/img.qcow2', 'image-checksum-url': h.url });
      rawLayer(dir, c, A, 30);
      const t0 = Date.now();
      assert.deepEqual(await imageDigest(c, dir, 400), { algorithm: 'sha512', hex: A });
      const ms = Date.now() - t0;
      assert.ok(ms >= 800 && ms < 5000, `${ms} ms`);
      assert.match(said.warnings[0], /did not finish within .* of 30 h ago/);
    } finally {
      await h.close();
    }
  });

  test('the catalogue image: its own checksum file (unreachable here), and the raw layer it left under the seed name', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cache-'));
    const c = config(dir, {});
    const p = rawLayer(dir, c, A, 49);
    assert.equal(p.files[0], 'debian-13-generic-amd64.qcow2');
    assert.deepEqual(await imageDigest(c, dir, 300), { algorithm: 'sha512', hex: A });
    assert.match(said.warnings[0], /cannot read the image's checksum file https:\/\/cloud\.debian\.org\/images\/cloud\/trixie\/latest\/SHA512SUMS .*debian-13-generic-amd64\.qcow2 of 2 days ago/);
  });
});

describe('image-checksum-url input', () => {
  test('needs image-url, excludes image-checksum, and is a URL or path', () => {
    assert.throws(() => config(tmp, { 'image-checksum-url': 'https://x/SUMS' }), /image-checksum-url https:\/\/x\/SUMS without image-url: it names the checksum file of a custom image/);
    assert.throws(() => config(tmp, { 'image-url': '/i.qcow2', 'image-checksum-url': 'https://x/SUMS', 'image-checksum': `sha512:${A}` }), /both image-checksum and image-checksum-url given: give one/);
    assert.throws(() => config(tmp, { 'image-url': '/i.qcow2', 'image-checksum-url': 'ftp://x/SUMS' }), /invalid image-checksum-url: "ftp:\/\/x\/SUMS"/);
    assert.throws(() => config(tmp, { 'image-url': '/i.qcow2' }), /missing image-checksum for image-url \/i\.qcow2 \(give sha512:HEX or sha256:HEX, or image-checksum-url/);
    assert.equal(config(tmp, { 'image-url': '/i.qcow2', 'image-checksum-url': 'sums/SHA256SUMS' }).imageChecksumUrl, path.resolve('sums/SHA256SUMS'));
  });
});
