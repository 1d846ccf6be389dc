// The OCI registry tier against a real registry (Debian's docker-registry, distribution 2.8) on a
// loopback port: layout of the pushed artifact, blob skips, byte-identical pulls, digest checks, the
// Bearer token flow, and the bounded cost of a registry that is down, stalls or refuses the token.
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { RegistryError, TunnelAgent, isLoopback, noProxy, parseRegistryRef, proxyFor } from '../../src/cache/oci.js';
import { ARTIFACT_TYPE, Annotations, CONFIG_MEDIA_TYPE, FILE_MEDIA_TYPE, FILE_MEDIA_TYPE_ZSTD, LayerMismatch, planPull, plannedPath, registryTier, tagFor, type OciManifest, type RegistryTierOptions } from '../../src/cache/registry.js';
import type { Logger } from '../../src/log.js';
import { InputError, parseConfig } from '../../src/inputs.js';
import { startProxy, type TestProxy } from '../support/proxy.js';
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

  test('a pull hands over the sha256 of every file, computed from its bytes as written, a file of several chunks included', async () => {
    const { t } = tier();
    const dir = staging();
    const verified = new Map<string, string>();
    assert.equal(await t.restore(key, files, dir, { ...BOUND, verified }), 'restored');
    t.close();
    const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex');
    // disk.qcow2 and seed.iso are several chunks of CHUNK (seed.iso compressed); the others one each.
    const several = files.filter((f) => fs.statSync(path.join(src, f)).size > CHUNK);
    assert.deepEqual(several.sort(), ['disk.qcow2', 'seed.iso']);
    assert.deepEqual([...verified.keys()].sort(), [...files].sort());
    for (const [f, hex] of verified) assert.equal(hex, sha(f), f);
    // And equal to the source's bytes: the hash is of what was sent, not of some other file.
    for (const f of files) assert.equal(verified.get(f), crypto.createHash('sha256').update(fs.readFileSync(path.join(src, f))).digest('hex'), f);
    // No temp file of a compressed blob is left beside the files.
    assert.deepEqual(fs.readdirSync(dir).sort(), [...files].sort());
  });

  test('an unknown key is a miss; a different file set is a miss with a warning; the tier stays on', async () => {
    const { t, logger } = tier();
    assert.equal(await t.restore('no-such-layer', files, staging(), BOUND), 'miss');
    assert.deepEqual(logger.warnings, []);
    const dir = staging();
    assert.equal(await t.restore(key, [...files, 'extra.qcow2'], dir, BOUND), 'miss');
    assert.match(logger.warnings.join('\n'), /it holds no blob for the planned extra\.qcow2/);
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

  test('a hostile manifest is refused from the manifest alone, in one warning naming the field: nothing fetched, nothing written, in staging or outside it', async (t) => {
    const accept = { accept: 'application/vnd.oci.image.manifest.v1+json' };
    const base = JSON.parse((await get(`http://${reg.host}/v2/ryra/layers/manifests/${tagFor(key)}`, accept)).body.toString()) as OciManifest;
    const copy = () => structuredClone(base);
    const layer = (m: OciManifest, f: string, chunk = 0) => m.layers.find((l) => l.annotations![Annotations.title] === f && l.annotations![Annotations.chunk] === String(chunk))!;
    // Where a title that climbs out or is absolute would land: none of these may exist afterwards.
    const outer = fs.mkdtempSync(path.join(tmp, 'outer-'));
    const abs = path.join(tmp, 'absolute-target');
    const cases: [string, (m: OciManifest) => void, RegExp][] = [
      ['config title ../x', (m) => (m.config.annotations![Annotations.title] = '../escaped-config'), /config title "\.\.\/escaped-config" is not the planned snap\.manifest\.json/],
      ['config title absolute', (m) => (m.config.annotations![Annotations.title] = abs), /config title ".*absolute-target" is not the planned snap\.manifest\.json/],
      ['config title another plain name', (m) => (m.config.annotations![Annotations.title] = 'other.manifest.json'), /config title "other\.manifest\.json" is not the planned snap\.manifest\.json/],
      ['config title missing', (m) => delete m.config.annotations, /config title undefined is not the planned snap\.manifest\.json/],
      ['config media type', (m) => (m.config.mediaType = 'application/vnd.oci.image.config.v1+json'), /config media type "application\/vnd\.oci\.image\.config\.v1\+json" is not application\/vnd\.ryra-vm\.layer\.manifest\.v1\+json/],
      ['config size', (m) => (m.config.size = -1), /config size -1 is not a byte count/],
      ['layer title ../x', (m) => (layer(m, 'empty.bin').annotations![Annotations.title] = '../escaped-layer'), /layer \d+ title "\.\.\/escaped-layer" is not one of the planned files/],
      ['layer title absolute', (m) => (layer(m, 'empty.bin').annotations![Annotations.title] = abs), /layer \d+ title ".*absolute-target" is not one of the planned files/],
      ['layer title not planned', (m) => (layer(m, 'empty.bin').annotations![Annotations.title] = 'other.qcow2'), /layer \d+ title "other\.qcow2" is not one of the planned files/],
      ['planned name twice: a blob for the config\'s file', (m) => (layer(m, 'empty.bin').annotations![Annotations.title] = 'snap.manifest.json'), /layer \d+ title "snap\.manifest\.json" names the planned manifest file, which is the config/],
      ['planned name twice: a chunk twice', (m) => m.layers.push(structuredClone(layer(m, 'disk.qcow2', 1))), /layer \d+ \(disk\.qcow2\) annotation vnd\.ryra-vm\.chunk 1: disk\.qcow2 needs chunks 0 to 4, each once/],
      ['planned name missing', (m) => (m.layers = m.layers.filter((l) => l.annotations![Annotations.title] !== 'efivars.qcow2')), /it holds no blob for the planned efivars\.qcow2/],
      ['planned manifest missing (the empty config)', (m) => (m.config = { mediaType: 'application/vnd.oci.empty.v1+json', digest: `sha256:${crypto.createHash('sha256').update('{}').digest('hex')}`, size: 2 }), /config media type "application\/vnd\.oci\.empty\.v1\+json" is not application\/vnd\.ryra-vm\.layer\.manifest\.v1\+json/],
      ['layer media type', (m) => (layer(m, 'disk.qcow2', 2).mediaType = 'application/octet-stream'), /layer \d+ \(disk\.qcow2\) media type "application\/octet-stream" is not application\/vnd\.ryra-vm\.layer\.file\.v1/],
      ['layer size vs its uncompressed size', (m) => (layer(m, 'disk.qcow2', 2).size += 1), /layer \d+ \(disk\.qcow2\) size \d+ disagrees with its vnd\.ryra-vm\.uncompressed-size 1048576/],
      ['layer digest vs its uncompressed sha256', (m) => (layer(m, 'disk.qcow2', 2).annotations![Annotations.sha256] = 'a'.repeat(64)), /layer \d+ \(disk\.qcow2\) digest sha256:[0-9a-f]{64} disagrees with its vnd\.ryra-vm\.uncompressed-sha256 a{64}/],
      ['compressed flag vs media type', (m) => (layer(m, 'disk.qcow2', 2).annotations![Annotations.compressed] = 'true'), /layer \d+ \(disk\.qcow2\) annotation vnd\.ryra-vm\.compressed "true" disagrees with its media type application\/vnd\.ryra-vm\.layer\.file\.v1$/m],
      ['a compressed blob bigger than it unpacks to', (m) => (layer(m, 'seed.iso').size = 10 ** 9), /layer \d+ \(seed\.iso\) size 1000000000 is more than a zstd blob of its vnd\.ryra-vm\.uncompressed-size \d+ can be/],
      ['offset', (m) => (layer(m, 'disk.qcow2', 3).annotations![Annotations.offset] = '0'), /layer \d+ \(disk\.qcow2\) annotation vnd\.ryra-vm\.offset 0 is not 3145728, where chunk 3 of disk\.qcow2 starts/],
      ['file size', (m) => (layer(m, 'disk.qcow2', 3).annotations![Annotations.fileSize] = '4194304'), /layer \d+ \(disk\.qcow2\) annotation vnd\.ryra-vm\.file-size 4194304 disagrees with chunk 0's 3670016/],
      ['sizes that do not add up', (m) => (m.layers = m.layers.filter((l) => l !== layer(m, 'disk.qcow2', 3))), /disk\.qcow2: chunks add up to 3145728 bytes, not its vnd\.ryra-vm\.file-size 3670016/],
      ['a size that is not a whole number', (m) => (layer(m, 'disk.qcow2', 1).annotations![Annotations.size] = '1e6'), /layer \d+ \(disk\.qcow2\) annotation vnd\.ryra-vm\.uncompressed-size "1e6" is not a whole number/],
      ['an empty number', (m) => (layer(m, 'disk.qcow2', 0).annotations![Annotations.offset] = ''), /layer \d+ \(disk\.qcow2\) annotation vnd\.ryra-vm\.offset "" is not a whole number/],
      ['an uncompressed sha256 missing', (m) => delete layer(m, 'seed.iso').annotations![Annotations.sha256], /layer \d+ \(seed\.iso\) annotation vnd\.ryra-vm\.uncompressed-sha256 undefined is not a sha256/],
    ];
    // A layer without a manifest file: its config is the empty one (pushed here, so a hostile manifest can name it).
    const plain = files.filter((f) => !f.endsWith('.manifest.json'));
    const { t: tier0 } = tier();
    assert.equal(await tier0.save(`${key}-no-manifest`, plain, src), 'saved');
    tier0.close();
    const before = reg.requests().length;
    for (const [name, edit, want] of cases) {
      await t.test(name, async () => {
        const k = `${key}-hostile-${name.replace(/[^a-z0-9]+/gi, '-')}`;
        const m = copy();
        edit(m);
        await putManifest(k, m);
        const { t: tier1, logger } = tier();
        const dir = fs.mkdtempSync(path.join(outer, 'staging-'));
        assert.equal(await tier1.restore(k, files, dir, BOUND), 'miss');
        assert.equal(tier1.on, true);
        tier1.close();
        assert.equal(logger.warnings.length, 1, logger.warnings.join('\n'));
        assert.match(logger.warnings[0], want);
        assert.deepEqual(fs.readdirSync(dir), [], 'nothing in staging');
        assert.deepEqual(fs.readdirSync(outer), [path.basename(dir)], 'nothing beside staging');
        for (const target of [path.join(dir, '../escaped-config'), path.join(dir, '../escaped-layer'), abs]) assert.equal(fs.existsSync(target), false, target);
        fs.rmdirSync(dir);
      });
    }
    // The same manifest unedited (and a layer without a manifest file, whose config is the empty one) restores: the edits alone were refused.
    const control = `${key}-hostile-control`;
    await putManifest(control, copy());
    const { t: tier2, logger } = tier();
    const dir = staging();
    assert.equal(await tier2.restore(control, files, dir, BOUND), 'restored');
    sameFiles(src, dir, files);
    const dir2 = staging();
    assert.equal(await tier2.restore(`${key}-no-manifest`, plain, dir2, BOUND), 'restored');
    sameFiles(src, dir2, plain);
    tier2.close();
    assert.deepEqual(logger.warnings, []);
    // The registry logs a request when it completes: give the log a moment. No hostile tag had a blob fetched.
    await new Promise((r) => setTimeout(r, 300));
    const fetched = reg.requests().slice(before).filter((r) => r.method === 'GET' && r.uri.includes('/blobs/'));
    assert.ok(fetched.length > 0, 'the control fetched blobs');
    const hostile = reg.requests().slice(before).filter((r) => r.uri.includes('-hostile-') && !r.uri.includes('-hostile-control'));
    assert.ok(hostile.length >= cases.length, 'each hostile tag was asked for');
    const firstControl = reg.requests().slice(before).findIndex((r) => r.uri.includes('-hostile-control'));
    assert.deepEqual(reg.requests().slice(before, before + firstControl).filter((r) => r.method === 'GET' && r.uri.includes('/blobs/')), [], 'no blob fetched for a hostile manifest');
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

describe('OCI registry tier through the runner\'s proxy (a forward proxy on loopback)', { skip: missing && `skipped: ${missing}` }, () => {
  let reg: TestRegistry;
  let proxy: TestProxy;
  const src = path.join(tmp, 'proxy-layer');
  let files: string[];
  before(async () => {
    reg = await startRegistry();
    proxy = await startProxy();
    files = makeLayer(src);
  });
  after(async () => {
    await proxy?.close();
    await reg?.close();
  });
  const PROXY_VARS = ['http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'no_proxy', 'NO_PROXY', 'all_proxy', 'ALL_PROXY'];
  /** Runs `fn` with exactly `vars` among the proxy variables, then puts them back as they were. */
  async function withProxyEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
    const saved = Object.fromEntries(PROXY_VARS.map((k) => [k, process.env[k]]));
    for (const k of PROXY_VARS) delete process.env[k];
    Object.assign(process.env, vars);
    try {
      return await fn();
    } finally {
      for (const k of PROXY_VARS) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
    }
  }
  const pushPull = async (k: string) => {
    const logger = capture();
    const t = registryTier({ repository: `${reg.host}/ryra/proxied`, chunkBytes: CHUNK, logger });
    assert.equal(await t.save(k, files, src), 'saved');
    const dir = staging();
    assert.equal(await t.restore(k, files, dir, BOUND), 'restored');
    t.close();
    sameFiles(src, dir, files);
    assert.deepEqual(logger.warnings, []);
  };

  test('HTTP_PROXY (uppercase, with credentials), NO_PROXY empty: node:http\'s requests and curl\'s blob GETs all go through the proxy; the pull is byte-identical', async () => {
    const withAuth = proxy.url.replace('http://', 'http://ci:p%40ss@');
    const from = proxy.requests.length;
    await withProxyEnv({ HTTP_PROXY: withAuth, NO_PROXY: '' }, () => pushPull('k1'));
    const seen = proxy.requests.slice(from);
    assert.ok(seen.length > 0, 'nothing went through the proxy');
    const base = `http://${reg.host}/v2/ryra/proxied/`;
    for (const r of seen) {
      assert.ok(r.target.startsWith(base), `${r.method} ${r.target}`);
      assert.equal(r.auth, `Basic ${Buffer.from('ci:p@ss').toString('base64')}`, `${r.method} ${r.target}: the proxy's credentials`);
    }
    const kinds = new Set(seen.map((r) => `${r.method} ${r.target.slice(base.length).split('/')[0]}`));
    for (const k of ['HEAD manifests', 'HEAD blobs', 'POST blobs', 'PUT blobs', 'PUT manifests', 'GET manifests', 'GET blobs']) assert.ok(kinds.has(k), `${k} through the proxy (saw ${[...kinds].join(', ')})`);
    // Every blob of the pull (curl's), the config's included, came through it.
    const m = JSON.parse((await get(`${base}manifests/k1`, { accept: 'application/vnd.oci.image.manifest.v1+json' })).body.toString()) as OciManifest;
    assert.equal(seen.filter((r) => r.method === 'GET' && r.target.includes('/blobs/')).length, m.layers.length + 1);
  });

  test('NO_PROXY=127.0.0.1: the same push and pull bypass the proxy', async () => {
    const from = proxy.requests.length;
    await withProxyEnv({ HTTP_PROXY: proxy.url, NO_PROXY: '127.0.0.1' }, () => pushPull('k2'));
    assert.deepEqual(proxy.requests.slice(from), []);
  });

  test('a proxy that is down: one warning naming it, a miss, the tier off', async () => {
    const port = await freePort();
    const logger = capture();
    await withProxyEnv({ http_proxy: `http://127.0.0.1:${port}` }, async () => {
      const t = registryTier({ repository: `${reg.host}/ryra/proxied`, logger, connectTimeoutMs: 2000 });
      assert.equal(await t.restore('k1', files, staging(), BOUND), 'miss');
      assert.equal(t.on, false);
      t.close();
    });
    assert.equal(logger.warnings.length, 1, logger.warnings.join('\n'));
    assert.match(logger.warnings[0], new RegExp(`ECONNREFUSED.*\\(through the proxy 127\\.0\\.0\\.1:${port}\\).*off for the rest of this run`));
  });

  test('https through a proxy: a CONNECT tunnel (one per kept-alive connection), its credentials; a refusal or a silent proxy is an error within the connect bound', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'tls-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${dir}/k.pem`, '-out', `${dir}/c.pem`, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    const ca = fs.readFileSync(`${dir}/c.pem`);
    const server = https.createServer({ key: fs.readFileSync(`${dir}/k.pem`), cert: ca }, (req, res) => res.end(`tls ${req.url}`));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `https://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const fetch = (agent: https.Agent, p: string) =>
      new Promise<string>((resolve, reject) =>
        https
          .get(`${url}${p}`, { agent }, (res) => {
            let body = '';
            res.on('data', (d) => (body += d));
            res.on('end', () => resolve(body));
          })
          .on('error', reject),
      );
    const refusing = await startProxy({ refuseConnect: '407 Proxy Authentication Required' });
    const silent = await startProxy({ silentConnect: true });
    try {
      const from = proxy.requests.length;
      const agent = new TunnelAgent(new URL(proxy.url.replace('http://', 'http://ci:s3cret@')), 2000, { ca, keepAlive: true, maxSockets: 1 });
      assert.equal(await fetch(agent, '/a'), 'tls /a');
      assert.equal(await fetch(agent, '/b'), 'tls /b');
      agent.destroy();
      assert.deepEqual(proxy.requests.slice(from), [{ method: 'CONNECT', target: url.slice(8), auth: `Basic ${Buffer.from('ci:s3cret').toString('base64')}` }]);

      const a2 = new TunnelAgent(new URL(refusing.url), 2000, { ca });
      await assert.rejects(fetch(a2, '/'), (e: Error) => e instanceof RegistryError && e.kind === 'auth' && new RegExp(`the proxy 127\\.0\\.0\\.1:\\d+ refused CONNECT ${url.slice(8)}: HTTP/1\\.1 407 Proxy Authentication Required`).test(e.message));
      a2.destroy();

      const a3 = new TunnelAgent(new URL(silent.url), 1000, { ca });
      const start = Date.now();
      await assert.rejects(fetch(a3, '/'), (e: Error) => e instanceof RegistryError && e.kind === 'unreachable' && /no tunnel through the proxy 127\.0\.0\.1:\d+ to 127\.0\.0\.1:\d+ within 1 s/.test(e.message));
      assert.ok(Date.now() - start < 3000, `took ${Date.now() - start} ms`);
      a3.destroy();
    } finally {
      await refusing.close();
      await silent.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      fs.rmSync(dir, { recursive: true, force: true });
    }
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
    // Lowercased, as image-tag tools do: the README's ghcr.io/${{ github.repository_owner }}/… works for any owner.
    assert.deepEqual(parseRegistryRef('ghcr.io/Octo-Org/layers'), { scheme: 'https', host: 'ghcr.io', name: 'octo-org/layers' });
    assert.deepEqual(parseRegistryRef('GHCR.io/Octo-Org/Ryra_VM.Layers'), { scheme: 'https', host: 'ghcr.io', name: 'octo-org/ryra_vm.layers' });
    assert.throws(() => parseRegistryRef('ghcr.io/Owner/-X'), /repository Owner\/-X: letters and digits \(taken in lowercase\), separated by/);
    assert.throws(() => parseRegistryRef('ghcr.io/owner//x'), /repository owner\/\/x: letters and digits/);
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
    assert.equal(config({ registry: 'ghcr.io/Octo-Org/layers' }).registry, 'ghcr.io/Octo-Org/layers');
    assert.throws(() => config({ registry: 'ghcr.io/Owner/x_-y' }), /invalid registry: "ghcr\.io\/Owner\/x_-y" \(repository Owner\/x_-y: letters and digits \(taken in lowercase\)/);
  });

  test('a repository with capitals: one line says it is used in lowercase, and pushes and pulls go there', { skip: missing && `skipped: ${missing}` }, async () => {
    const reg = await startRegistry();
    try {
      const src = path.join(tmp, 'octo-layer');
      const files = makeLayer(src);
      const logger = capture();
      const t = registryTier({ repository: `${reg.host}/Octo-Org/Layers`, chunkBytes: CHUNK, logger });
      assert.equal(t.label, `registry ${reg.host}/octo-org/layers`);
      assert.equal(await t.save('k1', files, src), 'saved');
      const dir = staging();
      assert.equal(await t.restore('k1', files, dir, BOUND), 'restored');
      t.close();
      sameFiles(src, dir, files);
      assert.deepEqual(logger.warnings, []);
      assert.deepEqual(logger.infos.filter((l) => /lowercase/.test(l)), [`registry ${reg.host}/Octo-Org/Layers: OCI repository names are lowercase, so it is used as ${reg.host}/octo-org/layers`]);
      assert.equal((await get(`http://${reg.host}/v2/octo-org/layers/manifests/k1`, { accept: 'application/vnd.oci.image.manifest.v1+json' })).status, 200);
    } finally {
      await reg.close();
    }
  });

  test('plannedPath: only a planned plain name becomes a path, joined from the caller\'s own string', () => {
    const files = ['disk.qcow2', 'snap.manifest.json'];
    assert.equal(plannedPath('/s', files, 'disk.qcow2'), '/s/disk.qcow2');
    for (const bad of ['../disk.qcow2', '/etc/passwd', 'other.qcow2', '', 'disk.qcow2/']) assert.throws(() => plannedPath('/s', files, bad), /is not one of the planned plain file names/, bad);
    // A caller's own name that is not plain is no path either.
    assert.throws(() => plannedPath('/s', ['../x'], '../x'), /"\.\.\/x" is not one of the planned plain file names/);
  });

  test('planPull: a typed plan that refers to each planned file by its index; bad digests and a bad planned list refused', () => {
    const sha = (s: string) => crypto.createHash('sha256').update(s).digest('hex');
    const files = ['a.bin', 'x.manifest.json'];
    const manifest = (): OciManifest => ({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      artifactType: ARTIFACT_TYPE,
      config: { mediaType: CONFIG_MEDIA_TYPE, digest: `sha256:${sha('{"x":1}')}`, size: 7, annotations: { [Annotations.title]: 'x.manifest.json' } },
      layers: [
        {
          mediaType: FILE_MEDIA_TYPE,
          digest: `sha256:${sha('hello')}`,
          size: 5,
          annotations: { [Annotations.title]: 'a.bin', [Annotations.chunk]: '0', [Annotations.offset]: '0', [Annotations.fileSize]: '5', [Annotations.compressed]: 'false', [Annotations.size]: '5', [Annotations.sha256]: sha('hello') },
        },
      ],
      annotations: { [Annotations.key]: 'k' },
    });
    const plan = planPull(manifest(), 'k', files, 100);
    assert.equal(plan.files, files);
    assert.equal(plan.bytes, 12);
    assert.deepEqual(plan.entries.map((e) => [e.file, e.chunks.map((c) => [c.offset, c.size, c.compressed])]), [
      [1, [[0, 7, false]]],
      [0, [[0, 5, false]]],
    ]);
    assert.throws(() => planPull(manifest(), 'k', files, 11), /add up to 12 bytes, more than a layer of this configuration holds \(11\)/);
    const m = manifest();
    m.layers[0].digest = 'sha256:../x';
    assert.throws(() => planPull(m, 'k', files, 100), (e: Error) => e instanceof LayerMismatch && /^layer 0 digest "sha256:\.\.\/x" is not a sha256 digest$/.test(e.message));
    const m2 = manifest();
    m2.config.digest = 'sha256:../x';
    assert.throws(() => planPull(m2, 'k', files, 100), /^LayerMismatch: config digest "sha256:\.\.\/x" is not a sha256 digest$/);
    assert.throws(() => planPull(manifest(), 'k', ['a.bin', 'a.bin', 'x.manifest.json'], 100), /planned file "a\.bin" is not a plain file name, or is named twice/);
    assert.throws(() => planPull(manifest(), 'k', ['../a.bin', 'x.manifest.json'], 100), /planned file "\.\.\/a\.bin" is not a plain file name/);
    assert.throws(() => planPull(manifest(), 'other', files, 100), /the tag holds another key \("k"\)/);
  });

  test('no_proxy as curl reads it; proxyFor picks https_proxy or http_proxy by scheme', () => {
    for (const [host, list, want] of [
      ['127.0.0.1', '127.0.0.1', true],
      ['127.0.0.1', '', false],
      ['localhost', undefined, false],
      ['ghcr.io', '*', true],
      ['GHCR.io', 'ghcr.io', true],
      ['pkg.ghcr.io', '.ghcr.io', true],
      ['pkg.ghcr.io', 'example.com, ghcr.io', true],
      ['notghcr.io', 'ghcr.io', false],
      ['10.1.2.3', '10.0.0.0/8', true],
      ['11.1.2.3', '10.0.0.0/8', false],
      ['[::1]', '::1', true],
      ['[::1]', '127.0.0.1', false],
    ] as const) assert.equal(noProxy(host, list), want, `${host} with ${list}`);
    const p = { http: 'http://plain:1', https: 'proxy.corp:3128', no: 'internal.corp' };
    assert.equal(proxyFor(new URL('https://ghcr.io/v2/'), p)?.href, 'http://proxy.corp:3128/');
    assert.equal(proxyFor(new URL('http://127.0.0.1:5000/v2/'), p)?.href, 'http://plain:1/');
    assert.equal(proxyFor(new URL('https://registry.internal.corp/v2/'), p), undefined);
    assert.equal(proxyFor(new URL('https://ghcr.io/v2/'), undefined), undefined);
    assert.throws(() => proxyFor(new URL('https://ghcr.io/v2/'), { https: 'socks5://127.0.0.1:1080' }), (e: Error) => e instanceof RegistryError && /the proxy socks5:\/\/127\.0\.0\.1:1080 is not an http or https proxy/.test(e.message));
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
