// Whoever can write an Actions cache entry the job reads (a default-branch job, a
// pull_request_target workflow, a compromised dependency) hands the runner data, never
// instructions. The bundled action against the project's cache service (amd64, TCG, the light
// configuration from the shared cache dir):
// 1. a runner whose layers are all local saves every layer the service lacks (in its post step);
// 2. the SSH-key entry is swapped for an archive with a `../` name, an absolute name and a write
//    through a symlink beside the real key files, the snapshot entry for one whose disk is backed
//    by a host file (its manifest recording that disk's size and sha256): only the planned names
//    are unpacked (the key is taken, nothing else created), the snapshot is refused in one warning
//    naming its disk, rebuilt, nothing is written outside the cache and temp dirs, and it boots;
// 3. a runner on another empty disk restores every layer (the refused snapshot from its successor,
//    once its base entry is refused again: the base key wins while it is valid);
// 4. the snapshot's successor entry swapped for one whose manifest names a file beside the cache
//    dir: refused in one warning, that file untouched, the snapshot rebuilt and saved as the next;
// 5. a runner with every layer and the key local, and a cache service that has lost its entries:
//    it saves the layers and the key; a runner on an empty disk then restores every layer and
//    builds nothing.
// The runner of 2 holds its SSH key already (a key restored from the service would change the
// snapshot's key, and the swapped snapshot entry would never be read).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { startCacheServer, type CacheServer } from '../support/cache-server.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { runner } from '../support/runner.js';
import { LIGHT, configInputs, linkLayers, sharedDir, sharedLayers } from '../support/shared.js';
import { inRestoredVm } from '../support/vm.js';

const root = tempRoot('hostile-cache');
let server: CacheServer;
let fx: Fixture;
let shared: RunRecord;
const figures: string[] = [];

before(async () => {
  fx = ensureFixture('amd64');
  server = await startCacheServer({ dir: root.dir });
  shared = (await sharedLayers(LIGHT, path.join(root.dir, 'rt-shared'))).record;
});
after(async () => {
  await server?.close();
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`hostile-cache figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

const sources = (r?: RunRecord) => Object.fromEntries((r?.layers ?? []).map((l) => [l.layer, l.source]));
const warnings = (out: string) => out.split('\n').filter((l) => l.startsWith('::warning::'));
const KEY_FILES = ['test-ssh-key', 'test-ssh-key.pub'];

/** A zstd tar: `steps` are tar runs (-P: names stored as given) appended one after another. */
function archive(dir: string, steps: { cwd: string; members: string[] }[]): Buffer {
  const tar = path.join(dir, `a-${Date.now()}.tar`);
  steps.forEach((s, i) => execFileSync('tar', ['--posix', '-P', i === 0 ? '-c' : '-r', '-f', tar, '-C', s.cwd, ...s.members]));
  return execFileSync('zstd', ['-q', '-c', tar], { maxBuffer: 1 << 30 });
}

describe('hostile Actions cache entries (amd64, TCG)', { timeout: 40 * 60_000 }, () => {
  const dirA = path.join(root.dir, 'cache-a');
  let keys: { ssh: string; prepared: string; snapshot: string };

  test('a runner whose layers are all local saves every layer the service lacks, after the job (post step)', async () => {
    const base = path.basename(shared.outputs.image, '.qcow2');
    const snap = path.basename(shared.restore!.disk, '.qcow2');
    const mine = [`${base}.qcow2`, `${base}.manifest.json`, ...KEY_FILES, ...[shared.restore!.disk, shared.restore!.efivars, shared.restore!.seed].map((f) => path.basename(f)), `${snap}.manifest.json`];
    linkLayers(sharedDir(), dirA, (n) => mine.includes(n));
    const r = runner(root.dir, 'a', server.env('v2'));
    const res = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': dirA });
    assert.equal(res.code, 0, res.stdout.slice(-4000));
    assert.deepEqual(sources(res.record), { prepared: 'local', snapshot: 'local' });
    assert.deepEqual(server.entries().map((e) => e.key), [`ryra-vm-v2-ssh-key`], 'the main step saves only the key (its snapshot needs it)');
    await r.post();
    const all = server.entries().map((e) => e.key);
    const find = (re: RegExp) => all.find((k) => re.test(k))!;
    keys = { ssh: 'ryra-vm-v2-ssh-key', prepared: find(/-prepared-debian-13-amd64-/), snapshot: find(/-snapshot-debian-13-amd64-m1024-/) };
    assert.equal(all.length, 3, all.join(', '));
    assert.ok(keys.prepared && keys.snapshot, all.join(', '));
    figures.push(`all-local main step ${(res.ms / 1000).toFixed(1)} s`);
  });

  test('entries swapped for hostile archives under their own keys: each refused in one warning, the snapshot rebuilt, nothing written outside, its snapshot boots', async () => {
    const evil = fs.mkdtempSync(path.join(root.dir, 'evil-'));
    const outside = fs.mkdtempSync(path.join(root.dir, 'outside-'));
    // The SSH-key entry: the real key files, then `../`, an absolute name, and a write through a symlink.
    const keyDir = path.join(evil, 'key');
    fs.mkdirSync(keyDir);
    for (const f of KEY_FILES) fs.copyFileSync(path.join(dirA, f), path.join(keyDir, f));
    fs.writeFileSync(path.join(evil, 'dotdot-escape'), 'escaped by ..\n');
    const absolute = path.join(root.dir, 'absolute-escape');
    fs.writeFileSync(absolute, 'escaped by an absolute name\n');
    fs.symlinkSync(outside, path.join(keyDir, 'lnk'));
    const viaLink = path.join(evil, 'through');
    fs.mkdirSync(path.join(viaLink, 'lnk'), { recursive: true });
    fs.writeFileSync(path.join(viaLink, 'lnk', 'written-through-link'), 'escaped through a symlink\n');
    const keyArchive = archive(evil, [
      { cwd: keyDir, members: [...KEY_FILES, '../dotdot-escape', absolute, 'lnk'] },
      { cwd: viaLink, members: ['lnk/written-through-link'] },
    ]);
    fs.rmSync(absolute);
    await server.replace(keys.ssh, keyArchive);

    // The snapshot entry: its own efivars, seed and manifest, but a disk backed by a host file,
    // which the manifest records (an attacker writes the manifest too).
    const snapDir = path.join(evil, 'snap');
    fs.mkdirSync(snapDir);
    const snapBase = path.basename(shared.restore!.disk, '.qcow2');
    const files = [shared.restore!.disk, shared.restore!.efivars, shared.restore!.seed].map((f) => path.basename(f));
    for (const f of files.slice(1)) fs.copyFileSync(path.join(dirA, f), path.join(snapDir, f));
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/hostname', '-F', 'raw', path.join(snapDir, files[0]), '20G']);
    const manifest = JSON.parse(fs.readFileSync(path.join(dirA, `${snapBase}.manifest.json`), 'utf8'));
    const disk = fs.readFileSync(path.join(snapDir, files[0]));
    manifest.files = manifest.files.map((f: { name: string }) => (f.name === files[0] ? { name: f.name, size: disk.length, sha256: createHash('sha256').update(disk).digest('hex') } : f));
    fs.writeFileSync(path.join(snapDir, `${snapBase}.manifest.json`), JSON.stringify(manifest));
    await server.replace(keys.snapshot, archive(evil, [{ cwd: snapDir, members: [...files, `${snapBase}.manifest.json`] }]));

    const dirB = path.join(root.dir, 'cache-b');
    fs.mkdirSync(dirB);
    for (const f of KEY_FILES) fs.copyFileSync(path.join(dirA, f), path.join(dirB, f));
    const r = runner(root.dir, 'b', server.env('v2'));
    const res = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': dirB });
    await r.post();
    assert.equal(res.code, 0, res.stdout.slice(-5000));
    assert.deepEqual(sources(res.record), { prepared: 'actions cache', snapshot: 'built' });
    const refused = warnings(res.stdout).filter((l) => /refused/.test(l));
    assert.equal(refused.length, 1, refused.join('\n'));
    assert.match(refused[0], new RegExp(`${keys.snapshot} refused: its ${files[0].replace(/\./g, '\\.')}: is backed by /etc/hostname \\(raw\\), not by its parent layer`));
    // Nothing landed outside: not beside the cache dir, not at the absolute name, not through the link.
    assert.equal(fs.existsSync(path.join(path.dirname(dirB), 'dotdot-escape')), false);
    assert.equal(fs.existsSync(absolute), false);
    assert.deepEqual(fs.readdirSync(outside), []);
    assert.deepEqual(fs.readdirSync(dirB).filter((n) => n.includes('.ryra-tmp-')), [], 'no staging dir left');
    // Every backing chain stays in the cache dir.
    for (const f of fs.readdirSync(dirB).filter((n) => n.endsWith('.qcow2'))) {
      const chain = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--backing-chain', '--output=json', path.join(dirB, f)], { encoding: 'utf8' })) as { filename: string; format: string }[];
      for (const c of chain) assert.ok(path.dirname(c.filename) === dirB && c.format === 'qcow2', `${f}: ${c.filename} (${c.format})`);
    }
    assert.match(await inRestoredVm(res.record!, root.dir, 'jq --version'), /^jq-1/);
    const all = server.entries().map((e) => e.key);
    assert.ok(all.includes(`${keys.snapshot}-r1`), `successor key saved: ${all.join(', ')}`);
    assert.ok(!all.includes(`${keys.ssh}-r1`), 'the key entry was taken (only its planned names unpacked)');
    figures.push(`hostile run (prepared restored, snapshot rebuilt) ${(res.ms / 1000).toFixed(0)} s`);
  });

  test('a runner on another empty disk restores every layer, the refused one from its successor', async () => {
    const r = runner(root.dir, 'c', server.env('v2'));
    const res = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': path.join(root.dir, 'cache-c') });
    await r.post();
    assert.equal(res.code, 0, res.stdout.slice(-4000));
    assert.deepEqual(sources(res.record), { prepared: 'actions cache', snapshot: 'actions cache' });
    assert.equal(res.outputs['cache-hit'], 'true');
    const said = warnings(res.stdout);
    assert.equal(said.length, 1, said.join('\n'));
    assert.match(said[0], new RegExp(`${keys.snapshot} refused: its .*; looking for a successor entry`));
    figures.push(`empty disk, all restored ${(res.ms / 1000).toFixed(1)} s`);
  });

  test('a successor entry whose manifest names a file outside the cache dir: refused in one warning, nothing outside touched, the snapshot rebuilt and saved under the next successor', async () => {
    // The snapshot's own files, and a manifest naming one of them as a file beside the cache dir
    // (eviction deletes what a manifest names, joined to the cache dir).
    const evil = fs.mkdtempSync(path.join(root.dir, 'evil-manifest-'));
    const snapBase = path.basename(shared.restore!.disk, '.qcow2');
    const files = [shared.restore!.disk, shared.restore!.efivars, shared.restore!.seed].map((f) => path.basename(f));
    for (const f of files) fs.copyFileSync(path.join(dirA, f), path.join(evil, f));
    const victim = path.join(root.dir, 'victim.txt');
    fs.writeFileSync(victim, 'untouched\n');
    const manifest = JSON.parse(fs.readFileSync(path.join(dirA, `${snapBase}.manifest.json`), 'utf8'));
    manifest.files = manifest.files.map((f: { name: string }) => (f.name === files[1] ? { ...f, name: '../victim.txt' } : f));
    fs.writeFileSync(path.join(evil, `${snapBase}.manifest.json`), JSON.stringify(manifest));
    await server.replace(`${keys.snapshot}-r1`, archive(evil, [{ cwd: evil, members: [...files, `${snapBase}.manifest.json`] }]));

    const dirE = path.join(root.dir, 'cache-e');
    const base = path.basename(shared.outputs.image, '.qcow2');
    linkLayers(dirA, dirE, (n) => [`${base}.qcow2`, `${base}.manifest.json`, ...KEY_FILES].includes(n));
    const r = runner(root.dir, 'e', server.env('v2'));
    const res = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': dirE });
    await r.post();
    assert.equal(res.code, 0, res.stdout.slice(-5000));
    assert.deepEqual(sources(res.record), { prepared: 'local', snapshot: 'built' }, `${JSON.stringify(res.record?.layers)}\n${res.stdout.slice(-3000)}`);
    // The base entry (backed by a host file) is refused again, then its successor.
    const said = warnings(res.stdout).filter((l) => /refused/.test(l));
    assert.equal(said.length, 2, warnings(res.stdout).join('\n'));
    assert.match(said[1], new RegExp(`${keys.snapshot} refused: its manifest: its manifest names "\\.\\./victim\\.txt", not a plain file name in its dir; building the snapshot layer instead`));
    assert.equal(fs.readFileSync(victim, 'utf8'), 'untouched\n');
    assert.deepEqual(fs.readdirSync(dirE).filter((n) => n.includes('.ryra-tmp-')), [], 'no staging dir left');
    assert.ok(server.entries().some((e) => e.key === `${keys.snapshot}-r2`), 'saved under the next successor');
    figures.push(`refused manifest, snapshot rebuilt ${(res.ms / 1000).toFixed(0)} s`);
  });

  test('a cache service that lost its entries gets every layer and the key again from a runner that has them; an empty disk then restores all of them and builds nothing', async () => {
    fs.mkdirSync(path.join(root.dir, 'lost'));
    const lost = await startCacheServer({ dir: path.join(root.dir, 'lost') });
    try {
      const dirF = path.join(root.dir, 'cache-f');
      // Every layer and the key local, and the marker an earlier version kept to skip the lookup.
      linkLayers(dirA, dirF, () => true);
      fs.writeFileSync(path.join(dirF, 'test-ssh-key.shared'), 'ryra-vm-v2-ssh-key\n');
      const r = runner(root.dir, 'f', lost.env('v2'));
      const res = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': dirF });
      await r.post();
      assert.equal(res.code, 0, res.stdout.slice(-4000));
      assert.deepEqual(sources(res.record), { prepared: 'local', snapshot: 'local' });
      const saved = lost.entries().map((e) => e.key);
      assert.ok(saved.includes(keys.ssh) && saved.some((k) => k.startsWith(keys.prepared.replace(/-r\d+$/, ''))) && saved.some((k) => k.startsWith(keys.snapshot)), saved.join(', '));
      const g = runner(root.dir, 'g', lost.env('v2'));
      const res2 = await g.action({ ...configInputs(LIGHT, fx), 'cache-dir': path.join(root.dir, 'cache-g') });
      await g.post();
      assert.equal(res2.code, 0, res2.stdout.slice(-4000));
      assert.deepEqual(sources(res2.record), { prepared: 'actions cache', snapshot: 'actions cache' });
      assert.equal(res2.outputs['cache-hit'], 'true');
      assert.deepEqual(warnings(res2.stdout), []);
      figures.push(`lost service refilled ${(res.ms / 1000).toFixed(1)} s; empty disk restored all ${(res2.ms / 1000).toFixed(1)} s`);
    } finally {
      await lost.close();
    }
  });

  test('cache-save: false only reads: not one save request, in the main step or the post step', async () => {
    const before = server.requests.length;
    const dirD = path.join(root.dir, 'cache-d');
    linkLayers(dirA, dirD, (n) => !n.endsWith('.shared'));
    const r = runner(root.dir, 'd', server.env('v2'));
    const res = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': dirD, 'cache-save': 'false' });
    await r.post();
    assert.equal(res.code, 0, res.stdout.slice(-4000));
    assert.deepEqual(sources(res.record), { prepared: 'local', snapshot: 'local' });
    const ops = server.requests.slice(before).map((x) => x.op);
    assert.ok(ops.includes('twirp.GetCacheEntryDownloadURL'), 'it still reads (the SSH key)');
    assert.deepEqual(ops.filter((o) => /Create|Finalize|reserve|commit|upload|put/i.test(o)), [], ops.join(', '));
  });
});
