import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { accelArgs } from '../../src/host/platform.js';
import type { Host } from '../../src/host/setup.js';
import { parseConfig, type Checksum } from '../../src/inputs.js';
import { hashOf, invalidReason, readManifest, writeManifest } from '../../src/cache/manifest.js';
import { cleanStaleTemps, tempPath, withLayerLock } from '../../src/cache/local.js';
import { timeoutsFor } from '../../src/layers/context.js';
import { cacheKeyFor, recipesFor } from '../../src/layers/pipeline.js';
import { preparedPackages, planLayers as plan0 } from '../../src/layers/plan.js';
import { parseChecksumFile, download } from '../../src/layers/raw.js';
import { createHash } from 'node:crypto';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'layers-unit-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const host = (over: Partial<Host> = {}): Host => ({
  qemuArch: 'aarch64',
  qemu: { binary: 'qemu-system-aarch64', path: '/usr/bin/qemu-system-aarch64', version: '7.2.22', machine: 'virt-7.2' },
  accel: accelArgs('aarch64', 'tcg'),
  firmware: { code: '/fw/code.fd', vars: '/fw/vars.fd', format: 'raw', source: 'known path', size: 67108864 },
  cpuIdentity: 'tcg',
  kvmMode: 'false',
  identity: 'kernel 6.1, qemu-system-aarch64 7.2.22, CPU x',
  accelReason: 'kvm: false',
  ...over,
});
/** The digest the catalogue's checksum file lists in these tests (the pipeline reads it each run). */
const LISTED: Checksum = { algorithm: 'sha512', hex: 'b'.repeat(128) };
const planLayers = (c: ReturnType<typeof cfg>, h: Host, key: string, listed = LISTED) => plan0(c, h, key, recipesFor(c, 'apt'), c.imageChecksum ?? listed);
const cfg = (inputs: Record<string, string> = {}) => {
  const all: Record<string, string> = { arch: 'arm64', 'cache-dir': tmp, ...inputs };
  return parseConfig((n) => all[n], { arch: 'arm64', env: {}, homedir: '/h' });
};

describe('layer plan', () => {
  test('file names carry the layer key; the catalogue image keeps the seed name; readable exact cache keys', () => {
    const p = planLayers(cfg(), host(), 'ssh-ed25519 AAAA k');
    const k = (l: { key: string }) => l.key.slice(0, 12);
    assert.deepEqual(p.raw.files, ['debian-13-generic-arm64.qcow2']);
    assert.deepEqual(p.prepared.files, [`debian-13-prepared-arm64-${k(p.prepared)}.qcow2`]);
    assert.deepEqual(p.snapshot.files, [`debian-13-arm64-snapshot-2048-${k(p.snapshot)}.qcow2`, `debian-13-arm64-snapshot-2048-${k(p.snapshot)}-efivars.qcow2`, `debian-13-arm64-snapshot-2048-${k(p.snapshot)}-seed.iso`]);
    assert.deepEqual(p.browser.files, [`debian-13-browser-arm64-${k(p.browser)}.qcow2`]);
    assert.equal(p.browserSnapshot.files[0], `debian-13-browser-arm64-snapshot-2048-${k(p.browserSnapshot)}.qcow2`);
    assert.match(p.snapshot.cacheKey, /^ryra-vm-v2-snapshot-debian-13-arm64-m2048-[0-9a-f]{20}$/);
    assert.match(p.prepared.cacheKey, /^ryra-vm-v2-prepared-debian-13-arm64-[0-9a-f]{20}$/);
    // A custom image gets a keyed raw name too.
    const custom = planLayers(cfg({ 'image-url': '/m/x.qcow2', 'image-checksum': `sha256:${'a'.repeat(64)}` }), host(), 'k');
    assert.deepEqual(custom.raw.files, [`debian-13-generic-arm64-${k(custom.raw)}.qcow2`]);
    assert.ok(p.snapshot.cacheKey.length <= 512 && !p.snapshot.cacheKey.includes(','));
    assert.deepEqual(p.packages, ['podman', 'podman-compose', 'uidmap', 'git', 'systemd-container', 'curl', 'postgresql-client', 'restic']);
  });

  test('what changes a layer changes its key, and only its own and its children’s', () => {
    const base = planLayers(cfg(), host(), 'k');
    const differs = (p: ReturnType<typeof planLayers>) => (['raw', 'prepared', 'snapshot', 'browser'] as const).filter((l) => p[l].key !== base[l].key);
    assert.deepEqual(differs(planLayers(cfg({ packages: 'jq' }), host(), 'k')), ['prepared', 'snapshot', 'browser']);
    assert.deepEqual(differs(planLayers(cfg({ memory: '4096' }), host(), 'k')), ['snapshot']);
    assert.deepEqual(differs(planLayers(cfg({ cpus: '4' }), host(), 'k')), ['snapshot']);
    assert.deepEqual(differs(planLayers(cfg(), host({ qemu: { ...host().qemu, version: '8.2.0' } }), 'k')), ['snapshot']);
    assert.deepEqual(differs(planLayers(cfg(), host({ qemu: { ...host().qemu, machine: 'virt-8.2' } }), 'k')), ['snapshot']);
    assert.deepEqual(differs(planLayers(cfg(), host({ accel: accelArgs('aarch64', 'kvm'), cpuIdentity: 'arm 0x41' }), 'k')), ['snapshot']);
    assert.deepEqual(differs(planLayers(cfg(), host(), 'other key')), ['snapshot']);
    const img = { 'image-url': '/m/x.qcow2', 'image-checksum': `sha256:${'a'.repeat(64)}` };
    assert.deepEqual(differs(planLayers(cfg(img), host(), 'k')), ['raw', 'prepared', 'snapshot', 'browser']);
    assert.deepEqual(differs(planLayers(cfg({ 'base-packages': 'false' }), host(), 'k')), ['prepared', 'snapshot', 'browser']);
    // The image republished under the same URL: new layers all the way up, the raw file keeps the seed's name.
    const republished = planLayers(cfg(), host(), 'k', { algorithm: 'sha512', hex: 'c'.repeat(128) });
    assert.deepEqual(differs(republished), ['raw', 'prepared', 'snapshot', 'browser']);
    assert.deepEqual(republished.raw.files, base.raw.files);
    assert.equal(republished.raw.digest, `sha512:${'c'.repeat(128)}`);
    assert.deepEqual(differs(planLayers(cfg({ prepare: 'echo hi' }), host(), 'k')), ['prepared', 'snapshot', 'browser']);
    assert.deepEqual(differs(planLayers(cfg({ 'disk-size': '40G' }), host(), 'k')), ['snapshot']);
    assert.deepEqual(differs(planLayers(cfg({ 'browser-source': 'registries' }), host(), 'k')), ['browser']);
    // Two configurations never share a file name above the raw layer.
    const a = planLayers(cfg({ packages: 'jq' }), host(), 'k');
    const b = planLayers(cfg({ packages: 'jq tree' }), host(), 'k');
    for (const l of ['prepared', 'snapshot', 'browser', 'browserSnapshot'] as const) assert.equal(a[l].files.filter((f) => b[l].files.includes(f)).length, 0, l);
  });

  test('a child’s cache key names its parent build', () => {
    const p = planLayers(cfg(), host(), 'k');
    assert.notEqual(cacheKeyFor(p.snapshot, 'build-a'), cacheKeyFor(p.snapshot, 'build-b'));
    assert.ok(cacheKeyFor(p.snapshot, 'build-a').startsWith(p.snapshot.cacheKey));
    assert.equal(cacheKeyFor(p.raw), p.raw.cacheKey);
  });

  test('base-packages: false leaves only `packages`; a package in both lists is installed once', () => {
    const img = planLayers(cfg(), host(), 'k').image;
    assert.deepEqual(preparedPackages(img, { basePackages: false, packages: ['jq'] }), ['jq']);
    assert.deepEqual(planLayers(cfg({ 'base-packages': 'false', packages: 'jq' }), host(), 'k').packages, ['jq']);
    assert.deepEqual(preparedPackages(img, { basePackages: true, packages: ['git'] }).filter((x) => x === 'git').length, 1);
    assert.deepEqual(preparedPackages(img, { basePackages: true, packages: ['jq'] }), [...img.packages, 'jq']);
  });
});

describe('guest time limits', () => {
  test('each one is longer under TCG than under KVM, and the timeout-scale hook multiplies every one', () => {
    const kvm = timeoutsFor('kvm');
    const tcg = timeoutsFor('tcg');
    for (const k of Object.keys(kvm) as (keyof typeof kvm)[]) assert.ok(tcg[k] > kvm[k], `${k}: TCG ${tcg[k]} ms, KVM ${kvm[k]} ms`);
    // The seed's TCG bounds to SSH; a guest step (snapshot setup, zeroing, shutdown) gets 15 min under TCG.
    assert.deepEqual([tcg.prepareSshMs, tcg.bootSshMs, tcg.stepMs], [900_000, 600_000, 900_000]);
    const scaled = timeoutsFor('tcg', 0.5);
    for (const k of Object.keys(tcg) as (keyof typeof tcg)[]) assert.equal(scaled[k], tcg[k] / 2, k);
  });
});

describe('manifests', () => {
  test('valid only with matching inputs, key, parent and sizes; the reason says which', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'm-'));
    fs.writeFileSync(path.join(dir, 'a.qcow2'), 'data');
    const inputs = { qemu: '7.2.22', memoryMb: 2048 };
    const want = { layer: 'prepared' as const, key: hashOf(inputs), inputs, files: ['a.qcow2'] };
    writeManifest(path.join(dir, 'a.manifest.json'), { layer: 'prepared', key: want.key, inputs, parentId: 'p1', files: [{ name: 'a.qcow2', size: 4, sha256: 'a'.repeat(64) }], buildSeconds: 1 });
    const m = readManifest(path.join(dir, 'a.manifest.json'))!;
    assert.equal(invalidReason(m, dir, { ...want, parentId: 'p1' }), undefined);
    assert.equal(invalidReason(undefined, dir, want), 'no manifest');
    assert.match(invalidReason(m, dir, { ...want, parentId: 'p2' })!, /parent layer was rebuilt/);
    assert.match(invalidReason({ ...m, inputs: { ...inputs, qemu: '6.2.0' } }, dir, want)!, /built with other qemu \("6\.2\.0" ≠ "7\.2\.22"\)/);
    assert.match(invalidReason({ ...m, layer: 'raw' }, dir, want)!, /its layer: "raw", not "prepared"/);
    assert.match(invalidReason(m, dir, { ...want, files: ['b.qcow2'] })!, /its files: it names \["a\.qcow2"\], not \["b\.qcow2"\]/);
    fs.appendFileSync(path.join(dir, 'a.qcow2'), '!');
    assert.match(invalidReason(m, dir, { ...want, parentId: 'p1' })!, /a\.qcow2 is 5 bytes, the manifest says 4/);
    fs.rmSync(path.join(dir, 'a.qcow2'));
    assert.match(invalidReason(m, dir, { ...want, parentId: 'p1' })!, /a\.qcow2 is missing/);
  });

  test('stale temps of dead processes are removed, live ones kept', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 't-'));
    const mine = tempPath(dir, 'x');
    fs.writeFileSync(mine, '');
    fs.mkdirSync(path.join(dir, 'work.ryra-tmp-999999999-abcd'));
    fs.writeFileSync(path.join(dir, 'keep.qcow2'), '');
    cleanStaleTemps(dir);
    assert.deepEqual(fs.readdirSync(dir).sort(), [path.basename(mine), 'keep.qcow2'].sort());
  });

  test('the layer lock serialises holders', async () => {
    const order: string[] = [];
    const hold = (name: string, ms: number) =>
      withLayerLock(tmp, 'lk', 60_000, async () => {
        order.push(`${name}+`);
        await new Promise((r) => setTimeout(r, ms));
        order.push(`${name}-`);
      });
    await Promise.all([hold('a', 300), hold('b', 10)]);
    assert.ok(order.join() === 'a+,a-,b+,b-' || order.join() === 'b+,b-,a+,a-', order.join());
  });

  test('nested locks of different layers (raw inside prepared) are independent', async () => {
    const inner = await withLayerLock(tmp, 'outer', 60_000, async () => {
      const v = await withLayerLock(tmp, 'inner', 60_000, async () => 'inner done');
      // The outer lock is still held and still refreshed after the inner one is released.
      await new Promise((r) => setTimeout(r, 5500));
      assert.ok(fs.existsSync(path.join(tmp, 'outer.lock')));
      return v;
    });
    assert.equal(inner, 'inner done');
    assert.equal(fs.existsSync(path.join(tmp, 'outer.lock')), false);
    assert.equal(fs.existsSync(path.join(tmp, 'inner.lock')), false);
  });
});

describe('raw layer', () => {
  test('checksum files: Debian SHA512SUMS and Fedora CHECKSUM', () => {
    const h = 'ab'.repeat(64);
    assert.deepEqual(parseChecksumFile(`${'cd'.repeat(64)}  debian-13-generic-amd64.qcow2\n${h}  debian-13-generic-arm64.qcow2\n`, 'sha512sums', 'debian-13-generic-arm64.qcow2'), { algorithm: 'sha512', hex: h });
    const f = `# Fedora-Cloud-43\nSHA256 (Fedora-Cloud-Base-Generic-43-1.1.aarch64.qcow2) = ${'EF'.repeat(32)}\n`;
    assert.deepEqual(parseChecksumFile(f, 'fedora-checksum', 'Fedora-Cloud-Base-Generic-43-1.1.aarch64.qcow2'), { algorithm: 'sha256', hex: 'ef'.repeat(32) });
    assert.equal(parseChecksumFile(f, 'fedora-checksum', 'other.qcow2'), undefined);
  });

  test('download verifies while streaming; a mismatch deletes the file and names both digests', async () => {
    const src = path.join(tmp, 'img.bin');
    fs.writeFileSync(src, Buffer.alloc(3 << 20, 1));
    const good = createHash('sha256').update(fs.readFileSync(src)).digest('hex');
    const dest = path.join(tmp, 'out.qcow2');
    await download(`file://${src}`, dest, `${dest}.partial`, { algorithm: 'sha256', hex: good });
    assert.ok(fs.readFileSync(dest).equals(fs.readFileSync(src)));
    // A sha512-published image: verified with sha512, and the manifest's sha256 comes from the same read.
    const sha512 = createHash('sha512').update(fs.readFileSync(src)).digest('hex');
    const dest3 = path.join(tmp, 'out3.qcow2');
    assert.deepEqual(await download(src, dest3, `${dest3}.partial`, { algorithm: 'sha512', hex: sha512 }), { bytes: 3 << 20, sha256: good });
    const dest2 = path.join(tmp, 'out2.qcow2');
    await assert.rejects(download(src, dest2, `${dest2}.partial`, { algorithm: 'sha256', hex: '0'.repeat(64) }), new RegExp(`expected sha256:${'0'.repeat(64)}, got sha256:${good}`));
    assert.equal(fs.existsSync(dest2), false);
    assert.equal(fs.existsSync(`${dest2}.partial`), false);
  });
});

describe('adoption of an unrecorded raw image', () => {
  test('adopted only when its digest is the published one', async () => {
    const { adoptRaw } = await import('../../src/layers/raw.js');
    const f = path.join(tmp, 'debian-13-generic-arm64.qcow2');
    fs.writeFileSync(f, Buffer.alloc(1 << 16, 3));
    const sha512 = createHash('sha512').update(fs.readFileSync(f)).digest('hex');
    const sha256 = createHash('sha256').update(fs.readFileSync(f)).digest('hex');
    assert.deepEqual(await adoptRaw(f, { algorithm: 'sha512', hex: sha512 }), { sha256 });
    fs.appendFileSync(f, 'tampered');
    assert.equal(await adoptRaw(f, { algorithm: 'sha512', hex: sha512 }), undefined);
  });
});

describe('downloads honour the runner\'s proxy', () => {
  test('http_proxy: the image comes through the proxy, verified as usual; no_proxy bypasses it', async () => {
    const http = await import('node:http');
    const net = await import('node:net');
    const body = Buffer.alloc(1 << 20, 7);
    const digest = createHash('sha256').update(body).digest('hex');
    // The origin only the proxy can reach (its name does not resolve).
    const origin = http.createServer((_, res) => res.end(body));
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    const originPort = (origin.address() as import('node:net').AddressInfo).port;
    const seen: string[] = [];
    const proxy = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      const up = http.request({ host: '127.0.0.1', port: originPort, path: new URL(req.url!).pathname, method: req.method }, (r) => r.pipe(res));
      req.pipe(up);
    });
    proxy.on('connect', (req, sock, head) => {
      seen.push(`CONNECT ${req.url}`);
      const up = net.connect(originPort, '127.0.0.1', () => {
        sock.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        up.write(head);
        up.pipe(sock);
        sock.pipe(up);
      });
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const saved = { http_proxy: process.env.http_proxy, no_proxy: process.env.no_proxy };
    process.env.http_proxy = `http://127.0.0.1:${(proxy.address() as import('node:net').AddressInfo).port}`;
    try {
      const dest = path.join(tmp, 'proxied.qcow2');
      await download('http://images.ryra-origin.invalid/img.qcow2', dest, `${dest}.partial`, { algorithm: 'sha256', hex: digest });
      assert.ok(fs.readFileSync(dest).equals(body));
      assert.equal(seen.length, 1, seen.join(', '));
      assert.match(seen[0], /images\.ryra-origin\.invalid/);
      process.env.no_proxy = 'ryra-origin.invalid';
      await assert.rejects(download('http://images.ryra-origin.invalid/img.qcow2', dest, `${dest}.partial`, { algorithm: 'sha256', hex: digest }), /ENOTFOUND|EAI_AGAIN|getaddrinfo/);
      assert.equal(seen.length, 1, 'no_proxy: not through the proxy');
    } finally {
      process.env.http_proxy = saved.http_proxy ?? '';
      process.env.no_proxy = saved.no_proxy ?? '';
      if (!saved.http_proxy) delete process.env.http_proxy;
      if (!saved.no_proxy) delete process.env.no_proxy;
      proxy.close();
      origin.close();
    }
  });
});

describe('qemu-img check of a restored layer', () => {
  test('an overlay is checked without its backing file; corruption is still found', async () => {
    const { checkImage, createOverlay } = await import('../../src/vm/images.js');
    const { execFileSync } = await import('node:child_process');
    const d = fs.mkdtempSync(path.join(tmp, 'qc-'));
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(d, 'base.qcow2'), '64M']);
    fs.mkdirSync(path.join(d, 'staging'));
    await createOverlay(path.join(d, 'base.qcow2'), path.join(d, 'staging', 'top.qcow2'), { relative: true });
    // In the staging dir the relative backing path points nowhere, as it does for a restored snapshot.
    assert.equal(await checkImage(path.join(d, 'staging', 'top.qcow2')), true);
    const fd = fs.openSync(path.join(d, 'staging', 'top.qcow2'), 'r+');
    fs.writeSync(fd, Buffer.from('x'), 0, 1, 20);
    fs.closeSync(fd);
    assert.equal(await checkImage(path.join(d, 'staging', 'top.qcow2')), false);
  });
});

test('internal snapshots are listed with their tags and VM state sizes', async () => {
  const { listSnapshots } = await import('../../src/vm/images.js');
  const { execFileSync } = await import('node:child_process');
  const f = path.join(tmp, 'snaps.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', f, '16M']);
  assert.deepEqual(await listSnapshots(f), []);
  execFileSync('qemu-img', ['snapshot', '-c', 'ready', f]);
  // A snapshot made by qemu-img holds no VM state; savevm's do (measured by the bench and the e2e tests).
  assert.deepEqual(await listSnapshots(f), [{ tag: 'ready', vmStateBytes: 0 }]);
});
