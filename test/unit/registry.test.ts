// The OCI registry tier against a real registry (Debian's docker-registry, distribution 2.8) on a
// loopback port: layout of the pushed artifact, blob skips, byte-identical pulls, digest checks, the
// Bearer token flow, and the bounded cost of a registry that is down, stalls or refuses the token.
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isLoopback, parseRegistryRef } from '../../src/cache/oci.js';
import { ARTIFACT_TYPE, Annotations, CONFIG_MEDIA_TYPE, FILE_MEDIA_TYPE, FILE_MEDIA_TYPE_ZSTD, registryTier, tagFor, type OciManifest, type RegistryTierOptions } from '../../src/cache/registry.js';
import type { Logger } from '../../src/log.js';
import { InputError, parseConfig } from '../../src/inputs.js';
import { freePort, registryMissing, startRegistry, type TestRegistry } from '../support/registry.js';

const missing = registryMissing();
const MiB = 2 ** 20;
const CHUNK = MiB;
/** The bound a restore gets: far above these small layers. */
const BOUND = { maxBytes: 1 << 30 };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'registry-unit-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A layer's files: a 3.5 MiB incompressible disk (4 chunks), a compressible ISO, small and empty files, its manifest. */
function makeLayer(dir: string): string[] {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'disk.qcow2'), crypto.randomBytes(3.5 * MiB));
  const text = Buffer.from(Array.from({ length: 40_000 }, (_, i) => `line ${i} of the seed iso ${i % 7}\n`).join(''));
  fs.writeFileSync(path.join(dir, 'seed.iso'), text);
  fs.writeFileSync(path.join(dir, 'efivars.qcow2'), Buffer.alloc(64 * 1024, 0));
  fs.writeFileSync(path.join(dir, 'empty.bin'), '');
  fs.writeFileSync(path.join(dir, 'snap.manifest.json'), JSON.stringify({ layer: 'snap', files: ['disk.qcow2'] }));
  return ['disk.qcow2', 'seed.iso', 'efivars.qcow2', 'empty.bin', 'snap.manifest.json'];
}

function capture(): Logger & { warnings: string[]; infos: string[] } {
  const warnings: string[] = [];
  const infos: string[] = [];
  return { warnings, infos, info: (m) => infos.push(m), warning: (m) => warnings.push(m), error: (m) => warnings.push(m), debug: () => {}, group: (_n, fn) => fn() };
}

function get(url: string, headers: http.OutgoingHttpHeaders = {}): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d) => parts.push(d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
      })
      .on('error', reject);
  });
}

const sameFiles = (a: string, b: string, files: string[]) => {
  for (const f of files) assert.ok(fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))), `${f} differs`);
};
const staging = () => fs.mkdtempSync(path.join(tmp, 'staging-'));

describe('OCI registry tier (docker-registry on loopback)', { skip: missing && `skipped: ${missing}` }, () => {
  let reg: TestRegistry;
  const src = path.join(tmp, 'layer');
  let files: string[];
  const key = 'snap-debian-13-amd64-2048m-0123456789abcdef';
  before(async () => {
    reg = await startRegistry();
    files = makeLayer(src);
  });
  after(async () => reg?.close());
  const tier = (o: Partial<RegistryTierOptions> = {}) => {
    const logger = capture();
    return { t: registryTier({ repository: `${reg.host}/ryra/layers`, chunkBytes: CHUNK, logger, ...o }), logger };
  };

  test('push: an OCI image manifest with the artifactType, the layer manifest as config, no blob over the chunk size', async () => {
    const { t, logger } = tier();
    assert.equal(await t.save(key, files, src), 'saved');
    t.close();
    assert.deepEqual(logger.warnings, []);
    const r = await get(`http://${reg.host}/v2/ryra/layers/manifests/${tagFor(key)}`, { accept: 'application/vnd.oci.image.manifest.v1+json' });
    assert.equal(r.status, 200);
    const m = JSON.parse(r.body.toString()) as OciManifest;
    assert.equal(m.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.equal(m.artifactType, ARTIFACT_TYPE);
    assert.equal(m.config.mediaType, CONFIG_MEDIA_TYPE);
    const manifestBytes = fs.readFileSync(path.join(src, 'snap.manifest.json'));
    assert.equal(m.config.digest, `sha256:${crypto.createHash('sha256').update(manifestBytes).digest('hex')}`);
    for (const l of m.layers) assert.ok(l.size <= CHUNK, `blob ${l.digest} has ${l.size} bytes, over the chunk size`);
    const of = (f: string) => m.layers.filter((l) => l.annotations?.[Annotations.title] === f);
    // The random disk: 4 plain chunks whose annotations give their offsets and sha256s.
    const disk = of('disk.qcow2');
    assert.equal(disk.length, 4);
    const diskBytes = fs.readFileSync(path.join(src, 'disk.qcow2'));
    disk.forEach((l, i) => {
      assert.equal(l.mediaType, FILE_MEDIA_TYPE);
      assert.equal(l.annotations![Annotations.chunk], String(i));
      assert.equal(l.annotations![Annotations.offset], String(i * CHUNK));
      assert.equal(l.annotations![Annotations.compressed], 'false');
      const part = diskBytes.subarray(i * CHUNK, (i + 1) * CHUNK);
      assert.equal(l.annotations![Annotations.sha256], crypto.createHash('sha256').update(part).digest('hex'));
      assert.equal(l.digest, `sha256:${l.annotations![Annotations.sha256]}`);
    });
    // The text ISO and the zero efivars compress: zstd blobs, much smaller than the file.
    for (const f of ['seed.iso', 'efivars.qcow2']) {
      const ls = of(f);
      const size = fs.statSync(path.join(src, f)).size;
      assert.ok(ls.every((l) => l.mediaType === FILE_MEDIA_TYPE_ZSTD && l.annotations![Annotations.compressed] === 'true'), f);
      assert.ok(ls.reduce((n, l) => n + l.size, 0) < size / 4, `${f} compressed`);
      assert.equal(ls.reduce((n, l) => n + Number(l.annotations![Annotations.size]), 0), size);
    }
    assert.equal(of('empty.bin').length, 1);
    assert.equal(of('snap.manifest.json').length, 0, 'the layer manifest is the config, not a blob');
    // The blobs are in the registry's storage.
    for (const l of [m.config, ...m.layers]) assert.equal(fs.statSync(reg.blobFile(l.digest)).size, l.size);
  });

  test('a second push of the key uploads nothing; the same files under another key upload no blob', async () => {
    const { t } = tier();
    const uploads = reg.blobUploads();
    assert.ok(uploads > 0);
    assert.equal(await t.save(key, files, src), 'exists');
    assert.equal(reg.blobUploads(), uploads);
    const manifestPuts = () => reg.requests().filter((r) => r.method === 'PUT' && r.uri.includes('/manifests/')).length;
    const puts = manifestPuts();
    assert.equal(await t.save(`${key}-again`, files, src), 'saved');
    t.close();
    assert.equal(reg.blobUploads(), uploads, 'every blob was skipped after a HEAD');
    assert.equal(manifestPuts(), puts + 1);
  });

  test('pull into an empty staging dir: byte-identical files, exactly the named ones', async () => {
    const { t, logger } = tier();
    const dir = staging();
    assert.equal(await t.restore(key, files, dir, BOUND), 'restored');
    t.close();
    assert.deepEqual(fs.readdirSync(dir).sort(), [...files].sort());
    sameFiles(src, dir, files);
    assert.deepEqual(logger.warnings, []);
  });

  test('a pull hands over the sha256 of each single-chunk file, computed from its bytes as written; a file of several chunks is left to the caller', async () => {
    const { t } = tier();
    const dir = staging();
    const verified = new Map<string, string>();
    assert.equal(await t.restore(key, files, dir, { ...BOUND, verified }), 'restored');
    t.close();
    const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex');
    // disk.qcow2 and seed.iso are several chunks of CHUNK; the others one each (efivars.qcow2 compressed).
    const single = files.filter((f) => fs.statSync(path.join(src, f)).size <= CHUNK);
    assert.deepEqual(single.sort(), ['efivars.qcow2', 'empty.bin', 'snap.manifest.json']);
    assert.deepEqual([...verified.keys()].sort(), single);
    for (const [f, hex] of verified) assert.equal(hex, sha(f), f);
    // No temp file of a compressed blob is left beside the files.
    assert.deepEqual(fs.readdirSync(dir).sort(), [...files].sort());
  });

  test('an unknown key is a miss; a different file set is a miss with a warning; the tier stays on', async () => {
    const { t, logger } = tier();
    assert.equal(await t.restore('no-such-layer', files, staging(), BOUND), 'miss');
    assert.deepEqual(logger.warnings, []);
    const dir = staging();
    assert.equal(await t.restore(key, [...files, 'extra.qcow2'], dir, BOUND), 'miss');
    assert.match(logger.warnings.join('\n'), /holds .* not .*extra\.qcow2/);
    assert.deepEqual(fs.readdirSync(dir), []);
    assert.equal(t.on, true);
    t.close();
  });

  test('a tampered blob is refused by its digest: failed, nothing left in staging, the tier stays on', async () => {
    const k = `${key}-tampered`;
    const { t, logger } = tier();
    assert.equal(await t.save(k, files, src), 'saved');
    const m = JSON.parse((await get(`http://${reg.host}/v2/ryra/layers/manifests/${k}`, { accept: 'application/vnd.oci.image.manifest.v1+json' })).body.toString()) as OciManifest;
    // A chunk only this key has (the others are shared with the tests above): the disk's last, rewritten.
    const victim = m.layers.find((l) => l.annotations![Annotations.title] === 'disk.qcow2' && l.annotations![Annotations.chunk] === '3')!;
    const file = reg.blobFile(victim.digest);
    const bytes = fs.readFileSync(file);
    bytes[100] ^= 0xff;
    fs.writeFileSync(file, bytes);
    try {
      const dir = staging();
      assert.equal(await t.restore(k, files, dir, BOUND), 'failed');
      assert.match(logger.warnings.join('\n'), new RegExp(`blob ${victim.digest} of disk\\.qcow2 arrived with sha256:[0-9a-f]{64} .*refused`));
      assert.deepEqual(fs.readdirSync(dir), []);
      assert.equal(t.on, true);
    } finally {
      bytes[100] ^= 0xff;
      fs.writeFileSync(file, bytes);
      t.close();
    }
  });

  /** Puts `m` (edited from a pushed one) under the tag of `k`. */
  async function putManifest(k: string, m: OciManifest): Promise<void> {
    m.annotations![Annotations.key] = k;
    const body = Buffer.from(JSON.stringify(m));
    const status = await new Promise<number>((resolve, reject) =>
      http
        .request(`http://${reg.host}/v2/ryra/layers/manifests/${tagFor(k)}`, { method: 'PUT', headers: { 'content-type': m.mediaType, 'content-length': body.length } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
        .on('error', reject)
        .end(body),
    );
    assert.equal(status, 201);
  }

  test('a chunk whose uncompressed bytes differ from its annotation is refused (the second digest), though its blob digest holds', async () => {
    const accept = { accept: 'application/vnd.oci.image.manifest.v1+json' };
    const m = JSON.parse((await get(`http://${reg.host}/v2/ryra/layers/manifests/${tagFor(key)}`, accept)).body.toString()) as OciManifest;
    const k = `${key}-lying`;
    const iso = m.layers.find((l) => l.annotations![Annotations.title] === 'seed.iso')!;
    iso.annotations![Annotations.sha256] = '0'.repeat(64);
    await putManifest(k, m);
    const { t, logger } = tier();
    const dir = staging();
    assert.equal(await t.restore(k, files, dir, BOUND), 'failed');
    t.close();
    assert.match(logger.warnings.join('\n'), /seed\.iso chunk at 0: uncompressed sha256 [0-9a-f]{64} .*expected 0{64}: refused/);
    assert.deepEqual(fs.readdirSync(dir), []);
  });

  test('a compressed chunk that unpacks to more than its annotation is stopped at the chunk\'s end and refused', async () => {
    const dir = path.join(tmp, 'bomb');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'zeros.bin'), Buffer.alloc(CHUNK));
    const k = `${key}-bomb`;
    const { t, logger } = tier();
    assert.equal(await t.save(`${k}-honest`, ['zeros.bin'], dir), 'saved');
    const m = JSON.parse((await get(`http://${reg.host}/v2/ryra/layers/manifests/${tagFor(`${k}-honest`)}`, { accept: 'application/vnd.oci.image.manifest.v1+json' })).body.toString()) as OciManifest;
    assert.equal(m.layers.length, 1);
    assert.equal(m.layers[0].mediaType, FILE_MEDIA_TYPE_ZSTD, 'zeros compress');
    // It claims 4 KiB (its blob, a few dozen bytes, fits that), yet unpacks to 1 MiB.
    Object.assign(m.layers[0].annotations!, { [Annotations.size]: '4096', [Annotations.fileSize]: '4096' });
    await putManifest(k, m);
    const staged = staging();
    assert.equal(await t.restore(k, ['zeros.bin'], staged, BOUND), 'failed');
    t.close();
    assert.match(logger.warnings.join('\n'), /zeros\.bin chunk at 0 unpacks to more than its chunk: refused|blob sha256:[0-9a-f]+ unpacks to more than its chunk: refused/);
    assert.deepEqual(fs.readdirSync(staged), [], 'nothing left in staging');
  });

  test('a layer whose files add up to more than the bound is refused before a blob is fetched', async () => {
    const { t, logger } = tier();
    const dir = staging();
    const before = reg.requests().length;
    assert.equal(await t.restore(key, files, dir, { maxBytes: MiB }), 'miss');
    t.close();
    assert.match(logger.warnings.join('\n'), /its files add up to \d+ bytes, more than a layer of this configuration holds \(1048576\)/);
    assert.deepEqual(fs.readdirSync(dir), []);
    // The registry logs a request when it completes: give the log a moment.
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(reg.requests().slice(before).filter((r) => r.method === 'GET' && r.uri.includes('/blobs/')), [], 'no blob fetched');
  });

  test('plain Basic auth where the registry asks for it (USER:PASSWORD), and a wrong password is one warning', async () => {
    // A gate in front of the real registry that wants Basic credentials, as htpasswd registries do.
    const want = `Basic ${Buffer.from('ci:s3cret').toString('base64')}`;
    const sockets = new Set<net.Socket>();
    const server = http.createServer((req, res) => {
      if (req.headers.authorization !== want) return void res.writeHead(401, { 'www-authenticate': 'Basic realm="registry"' }).end();
      const up = http.request(`http://${reg.host}${req.url}`, { method: req.method, headers: { ...req.headers, host: reg.host } }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    server.on('connection', (s) => sockets.add(s.on('error', () => {})));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const repository = `127.0.0.1:${(server.address() as net.AddressInfo).port}/ryra/layers`;
    try {
      const good = capture();
      const t = registryTier({ repository, token: 'ci:s3cret', logger: good });
      const dir = staging();
      assert.equal(await t.restore(key, files, dir, BOUND), 'restored');
      sameFiles(src, dir, files);
      t.close();
      assert.deepEqual(good.warnings, []);
      const bad = capture();
      const t2 = registryTier({ repository, token: 'ci:wrong', logger: bad });
      assert.equal(await t2.restore(key, files, staging(), BOUND), 'miss');
      assert.equal(t2.on, false);
      t2.close();
      assert.equal(bad.warnings.length, 1, bad.warnings.join('\n'));
      assert.match(bad.warnings[0], /refused GET .*HTTP 401.*check registry-token/);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    }
  });

  test('a registry that is down: one warning, a miss and a failed save, at once; the tier is off', async () => {
    const port = await freePort();
    const logger = capture();
    const t = registryTier({ repository: `127.0.0.1:${port}/ryra/layers`, logger, connectTimeoutMs: 2000, stallMs: 3000 });
    const start = Date.now();
    assert.equal(await t.restore(key, files, staging(), BOUND), 'miss');
    assert.equal(t.on, false);
    assert.equal(await t.save(key, files, src), 'failed');
    assert.equal(await t.restore(key, files, staging(), BOUND), 'miss');
    t.close();
    assert.ok(Date.now() - start < 5000, `took ${Date.now() - start} ms`);
    assert.equal(logger.warnings.length, 1, logger.warnings.join('\n'));
    assert.match(logger.warnings[0], /connection lost|ECONNREFUSED|off for the rest of this run/);
  });

  test('a registry that stalls: one warning, within the stall bound; later calls return at once', async () => {
    const sockets: net.Socket[] = [];
    const server = net.createServer((s) => sockets.push(s.on('error', () => {})));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const logger = capture();
    const t = registryTier({ repository: `127.0.0.1:${port}/ryra/layers`, logger, connectTimeoutMs: 2000, stallMs: 3000 });
    try {
      const start = Date.now();
      assert.equal(await t.save(key, files, src), 'failed');
      const took = Date.now() - start;
      assert.ok(took >= 2500 && took < 60_000, `took ${took} ms`);
      assert.ok(took < 8000, `the stall bound is 3 s; took ${took} ms`);
      assert.equal(t.on, false);
      const again = Date.now();
      assert.equal(await t.restore(key, files, staging(), BOUND), 'miss');
      // At once: no connection is tried (well under the 3 s stall bound, with room for a loaded CI host).
      assert.ok(Date.now() - again < 1000, `took ${Date.now() - again} ms`);
      assert.equal(logger.warnings.length, 1, logger.warnings.join('\n'));
      assert.match(logger.warnings[0], /stalled: nothing sent or received for 3 s.*off for the rest of this run/);
    } finally {
      t.close();
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    }
  });

  test('a registry that stalls in the middle of a blob: one warning, a miss within the stall bound, nothing left in staging', async () => {
    // A proxy in front of the real registry that sends 64 KiB of each blob, then nothing.
    const sockets = new Set<net.Socket>();
    const server = http.createServer((req, res) => {
      const up = http.request(`http://${reg.host}${req.url}`, { method: req.method, headers: req.headers }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        if (req.method !== 'GET' || !req.url?.includes('/blobs/')) return void ur.pipe(res);
        let sent = 0;
        ur.on('data', (c: Buffer) => {
          if (sent >= 64 * 1024) return void ur.pause();
          res.write(c);
          sent += c.length;
        });
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    server.on('connection', (s) => sockets.add(s.on('error', () => {})));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const logger = capture();
    const t = registryTier({ repository: `127.0.0.1:${(server.address() as net.AddressInfo).port}/ryra/layers`, logger, stallMs: 2000 });
    try {
      const dir = staging();
      const start = Date.now();
      assert.equal(await t.restore(key, files, dir, BOUND), 'miss');
      const took = Date.now() - start;
      assert.ok(took >= 1500 && took < 6000, `the stall bound is 2 s; took ${took} ms`);
      assert.equal(t.on, false);
      assert.equal(logger.warnings.length, 1, logger.warnings.join('\n'));
      assert.match(logger.warnings[0], /stalled: nothing sent or received for 2 s \(GET .*\/blobs\/sha256:.*off for the rest of this run/);
      assert.deepEqual(fs.readdirSync(dir), []);
    } finally {
      t.close();
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});

describe('OCI registry tier with token auth (docker-registry auth: token, a test token server)', { skip: missing && `skipped: ${missing}` }, () => {
  let reg: TestRegistry;
  const src = path.join(tmp, 'auth-layer');
  let files: string[];
  const password = 'ghs_test-token-1234';
  before(async () => {
    reg = await startRegistry({ password, anonymousPull: true });
    files = makeLayer(src);
  });
  after(async () => reg?.close());

  test('Bearer flow: a push and a pull with the token as Basic credentials at the realm', async () => {
    const logger = capture();
    const t = registryTier({ repository: `${reg.host}/org/ryra-vm-layers`, token: password, chunkBytes: CHUNK, logger });
    assert.equal(await t.save('k1', files, src), 'saved');
    const dir = staging();
    assert.equal(await t.restore('k1', files, dir, BOUND), 'restored');
    t.close();
    sameFiles(src, dir, files);
    assert.deepEqual(logger.warnings, []);
    const reqs = reg.token!.requests;
    assert.ok(reqs.length >= 1 && reqs.every((r) => r.auth === 'good'));
    assert.ok(reqs.some((r) => r.scopes.includes('repository:org/ryra-vm-layers:pull,push')), JSON.stringify(reqs));
    // The registry really checks: without a token, the same manifest is a 401 naming the realm.
    const r = await get(`http://${reg.host}/v2/org/ryra-vm-layers/manifests/k1`);
    assert.equal(r.status, 401);
  });

  test('anonymous: no token pulls through an anonymous Bearer token; its push is refused (one warning; saves off, pulls on)', async () => {
    const logger = capture();
    const t = registryTier({ repository: `${reg.host}/org/ryra-vm-layers`, chunkBytes: CHUNK, logger });
    const dir = staging();
    assert.equal(await t.restore('k1', files, dir, BOUND), 'restored');
    sameFiles(src, dir, files);
    assert.ok(reg.token!.requests.some((r) => r.auth === 'none'));
    assert.equal(await t.save('k2', files, src), 'failed');
    assert.equal(await t.save('k3', files, src), 'failed');
    assert.equal(logger.warnings.length, 1, logger.warnings.join('\n'));
    assert.match(logger.warnings[0], /refused .*HTTP 401.*registry-token.*saves to the registry are off/);
    // Pulls go on: a read-only token still restores.
    assert.equal(t.on, true);
    assert.equal(await t.restore('k1', files, staging(), BOUND), 'restored');
    t.close();
  });

  test('a wrong token: one warning and a miss, not a throw; the tier is off', async () => {
    const logger = capture();
    const t = registryTier({ repository: `${reg.host}/org/ryra-vm-layers`, token: 'wrong', chunkBytes: CHUNK, logger });
    assert.equal(await t.restore('k1', files, staging(), BOUND), 'miss');
    assert.equal(t.on, false);
    assert.equal(await t.save('k3', files, src), 'failed');
    t.close();
    assert.equal(logger.warnings.length, 1, logger.warnings.join('\n'));
    assert.match(logger.warnings[0], /token service 127\.0\.0\.1:\d+ refused the credentials \(HTTP 401\): check registry-token/);
  });
});

describe('registry references and tags', () => {
  test('loopback hosts may use plain http, others https only; the name follows the spec grammar', () => {
    assert.deepEqual(parseRegistryRef('ghcr.io/owner/ryra-vm-layers'), { scheme: 'https', host: 'ghcr.io', name: 'owner/ryra-vm-layers' });
    assert.deepEqual(parseRegistryRef('127.0.0.1:5000/a/b'), { scheme: 'http', host: '127.0.0.1:5000', name: 'a/b' });
    assert.deepEqual(parseRegistryRef('localhost:5000/a'), { scheme: 'http', host: 'localhost:5000', name: 'a' });
    assert.deepEqual(parseRegistryRef('[::1]:5000/a'), { scheme: 'http', host: '[::1]:5000', name: 'a' });
    assert.deepEqual(parseRegistryRef('https://localhost:5000/a'), { scheme: 'https', host: 'localhost:5000', name: 'a' });
    assert.throws(() => parseRegistryRef('http://ghcr.io/owner/x'), /plain http is allowed only for loopback/);
    assert.throws(() => parseRegistryRef('ghcr.io/Owner/X'), /repository Owner\/X: lowercase/);
    assert.throws(() => parseRegistryRef('ghcr.io'), /HOST\/REPOSITORY/);
    assert.throws(() => parseRegistryRef('user:pw@ghcr.io/a'), /no credentials in it/);
    assert.equal(isLoopback('127.8.9.10'), true);
    assert.equal(isLoopback('128.0.0.1'), false);
  });

  test('inputs: registry checked up front (naming the input and the fix); registry-token as given, the bare default is none', () => {
    const host = { arch: 'amd64' as const, env: {}, homedir: '/home/x' };
    const config = (inputs: Record<string, string>) => parseConfig((n) => inputs[n], host);
    assert.equal(config({}).registry, undefined);
    assert.equal(config({ registry: 'ghcr.io/owner/ryra-vm-layers', 'registry-token': ' ghs_abc ' }).registry, 'ghcr.io/owner/ryra-vm-layers');
    assert.equal(config({ 'registry-token': ' ghs_abc ' }).registryToken, 'ghs_abc');
    assert.equal(config({ 'registry-token': '${{ github.token }}' }).registryToken, undefined);
    assert.throws(() => config({ registry: 'http://ghcr.io/owner/x' }), (e: Error) => e instanceof InputError && /^invalid registry: "http:\/\/ghcr.io\/owner\/x" \(plain http is allowed only for loopback .*e\.g\. ghcr\.io\/OWNER\/ryra-vm-layers/.test(e.message));
    assert.throws(() => config({ registry: 'ghcr.io/Owner' }), /invalid registry: .*lowercase/);
  });

  test('tags: a key that fits the tag grammar is its own tag; others are sanitized and hashed, distinctly', () => {
    assert.equal(tagFor('base-debian-13-amd64-abc123'), 'base-debian-13-amd64-abc123');
    const re = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
    const long = 'x'.repeat(200);
    for (const k of ['a/b', 'a-b/', 'layer:with:colons', long, '.hidden', '/', 'ü']) assert.match(tagFor(k), re, k);
    assert.notEqual(tagFor('a/b'), tagFor('a:b'));
    assert.notEqual(tagFor(long), tagFor(`${long}y`));
  });
});
