// The bundled action run the way the runner runs it (node dist/main.js, later steps, dist/post.js,
// with the runner's environment), against the project's local cache service driven by the real
// @actions/cache: an empty runner builds and saves every layer (the suite's light configuration,
// built here in the shared cache dir), a second empty runner restores them and builds nothing and
// its later steps use ryra-vm, v1 works too, faults end green with no corrupt layer used, and
// cache: false never contacts the service.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { startCacheServer, type CacheServer } from '../support/cache-server.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { runner, type Runner } from '../support/runner.js';
import { restoreRecord } from '../support/vm.js';
import { LIGHT, configInputs, sharedDir } from '../support/shared.js';

const root = tempRoot('action');
let server: CacheServer;
let fx: Fixture;
const figures: string[] = [];

before(async () => {
  fx = ensureFixture('amd64');
  server = await startCacheServer({ dir: root.dir });
});
after(async () => {
  await server?.close();
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`action figures: ${figures.join('; ')}`);
  assert.deepEqual(left, []);
});

function newRunner(name: string, protocol?: 'v1' | 'v2'): Runner {
  return runner(root.dir, name, protocol ? server.env(protocol) : {});
}

const sources = (r?: RunRecord) => Object.fromEntries((r?.layers ?? []).map((l) => [l.layer, l.source]));

async function restoresToSsh(rec: RunRecord): Promise<number> {
  const { machine, readyMs } = await restoreRecord(rec, root.dir, 'from-outputs');
  try {
    assert.equal((await machine.check('whoami', 'whoami')).stdout.trim(), 'ryra');
  } finally {
    await machine.destroy();
  }
  return readyMs;
}

describe('action end to end (amd64, TCG)', { timeout: 80 * 60_000 }, () => {
  let run1: RunRecord;

  test('v2, empty runner: builds every layer and saves every entry', async () => {
    const r = newRunner('run1', 'v2');
    // The shared cache dir: the files after this one use this configuration from it.
    const res = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': sharedDir() });
    await r.post();
    assert.equal(res.code, 0, res.stdout.slice(-5000));
    run1 = res.record!;
    // The raw image is the one the full-list configuration (the other lane) uses: built by whichever came first.
    const { raw, ...above } = sources(run1);
    assert.deepEqual(above, { prepared: 'built', snapshot: 'built' });
    assert.ok(raw === 'built' || raw === 'local', raw);
    assert.equal(res.outputs['cache-hit'], 'false');
    assert.equal(res.outputs['cache-hit-layers'], '');
    assert.equal(res.outputs.snapshot, 'true');
    const keys = server.entries().map((e) => e.key).sort();
    // A layer built is saved at once; a raw image the other lane built first is local here, and the
    // post step saves it (the service lacked it).
    assert.equal(keys.length, 4, `every layer the service lacked is saved: ${keys.join(', ')}`);
    assert.ok(keys.includes('ryra-vm-v2-ssh-key'), 'the SSH key every snapshot accepts is shared too');
    assert.ok(keys.some((k) => /^ryra-vm-v2-prepared-debian-13-amd64-/.test(k)));
    assert.ok(keys.some((k) => /^ryra-vm-v2-snapshot-debian-13-amd64-m1024-/.test(k)));
    const summary = r.summary();
    assert.match(summary, /<th>layer<\/th>.*<td>prepared<\/td><td>built/s);
    // The size in MiB or GiB: this cache dir is the test run's, which may hold the other lane's layers already.
    assert.match(summary, /<td>cache dir<\/td><td>.*\((\d+ MiB|\d+\.\d\d GiB)\)<\/td>.*<td>evicted<\/td><td>nothing<\/td>/s);
    assert.equal(fs.statSync(res.outputs['ssh-key']).mode & 0o777, 0o600);
    figures.push(`run1 (raw + prepared + snapshot, saved) ${(res.ms / 1000).toFixed(0)} s`);
  });

  test('v2, another empty runner: restores, builds nothing, same outputs; later steps use ryra-vm; post cleans up', async () => {
    const local = path.join(root.dir, 'payload');
    fs.mkdirSync(path.join(local, 'sub', 'deeper'), { recursive: true });
    fs.writeFileSync(path.join(local, 'a.bin'), Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7919) % 251)));
    fs.writeFileSync(path.join(local, 'sub', 'b.txt'), 'hello\n');
    fs.writeFileSync(path.join(local, 'sub', 'deeper', 'empty'), '');
    const r = newRunner('run2', 'v2');
    const res = await r.action(configInputs(LIGHT, fx));
    assert.equal(res.code, 0, res.stdout.slice(-5000));
    const run2 = res.record!;
    let post = '';
    try {
      assert.deepEqual(sources(run2), { prepared: 'actions cache', snapshot: 'actions cache' });
      assert.equal(res.outputs['cache-hit'], 'true');
      assert.equal(res.outputs['cache-hit-layers'], 'prepared,snapshot');
      // Two VMs from one snapshot at once: distinct ports and disks.
      const [a, b] = await Promise.all([r.cli(['boot', '--name', 'a', '--json']), r.cli(['boot', '--name', 'b', '--json'])]);
      assert.equal(a.code, 0, a.stderr);
      assert.equal(b.code, 0, b.stderr);
      const va = JSON.parse(a.stdout);
      const vb = JSON.parse(b.stdout);
      assert.notEqual(va.port, vb.port);
      assert.equal(va.mode, 'restore');
      assert.equal((await r.cli(['ssh', 'a', '--', 'echo only-in-a > ~/mark'])).code, 0);
      assert.equal((await r.cli(['ssh', 'a', '--', 'cat ~/mark'])).stdout.trim(), 'only-in-a');
      assert.equal((await r.cli(['ssh', 'b', '--', 'test -e ~/mark'])).code, 1, 'a file written in one VM is absent in the other');
      assert.equal((await r.cli(['cp', local, 'a:/tmp/payload'])).code, 0);
      const back = path.join(root.dir, 'back');
      assert.equal((await r.cli(['cp', 'a:/tmp/payload', back])).code, 0);
      const tree = (d: string) => Object.fromEntries(fs.readdirSync(d, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => [path.relative(d, path.join(e.parentPath, e.name)), fs.readFileSync(path.join(e.parentPath, e.name)).toString('base64')]));
      assert.deepEqual(tree(back), tree(local), 'cp in and out round-trips the directory byte-for-byte');
      const t0 = Date.now() / 1000;
      const guest = Number((await r.cli(['ssh', 'b', '--', 'date +%s.%N'])).stdout.trim());
      assert.ok(guest > t0 - 2 && guest < Date.now() / 1000 + 2, `guest clock ${guest} vs host ${t0}`);
      assert.equal((await r.cli(['ssh', 'a', '--', 'false'])).code, 1);
      const unknown = await r.cli(['ssh', 'nope', '--', 'true']);
      assert.equal(unknown.code, 2);
      assert.equal(unknown.stderr.trim(), 'ryra-vm: no VM named nope (running: a, b)');
      assert.match((await r.cli(['list'])).stdout, /^a\s+\d+\s+\d+\s+\d+s\s+debian-13-prepared-amd64-[0-9a-f]{12}\.qcow2$/m);
      assert.equal((await r.cli(['stop', 'b'])).code, 0);
      assert.equal(JSON.parse((await r.cli(['list', '--json'])).stdout).length, 1);
      // a stays running: the post step must stop it.
      figures.push(`run2 main ${(res.ms / 1000).toFixed(1)} s (run1/run2 ${(run1.layers.reduce((s, l) => s + l.seconds, 0) / run2.layers.reduce((s, l) => s + l.seconds, 0.001)).toFixed(0)}× by layer time), ryra-vm boot → SSH ${(va.readyMs / 1000).toFixed(1)} s, ${(vb.readyMs / 1000).toFixed(1)} s`);
    } finally {
      post = (await r.post()).stdout;
    }
    const norm = (o: Record<string, string>) => {
      const dir = path.dirname(o.image);
      return Object.fromEntries(Object.entries(o).filter(([k]) => !['manifest', 'cache-hit', 'cache-hit-layers'].includes(k)).map(([k, v]) => [k, v.replaceAll(dir, '<cache>')]));
    };
    assert.deepEqual(norm(run2.outputs), norm(run1.outputs));
    assert.equal(fs.readFileSync(run2.outputs['ssh-key'], 'utf8'), fs.readFileSync(run1.outputs['ssh-key'], 'utf8'));
    assert.match(post, /stopped VM a \(left running by a later step\)/);
    assert.deepEqual(qemuProcessesUnder(root.dir), [], 'post left no VM running');
    assert.match(r.summary(), /<th>VM<\/th>.*<td>a<\/td><td>restore<\/td>/s);
  });

  test('cache: false never contacts the service; snapshot: false says so; ryra-vm stop --all leaves no qemu', async () => {
    const before = server.requests.length;
    const r = newRunner('run5', 'v2');
    const res = await r.action({ ...configInputs(LIGHT, fx), cache: 'false', 'cache-dir': sharedDir() });
    try {
      assert.equal(res.code, 0, res.stdout.slice(-3000));
      assert.deepEqual(sources(res.record), { prepared: 'local', snapshot: 'local' });
      assert.equal((await r.cli(['boot'])).code, 0);
      assert.equal((await r.cli(['boot'])).code, 0);
      assert.deepEqual(JSON.parse((await r.cli(['list', '--json'])).stdout).map((v: { name: string }) => v.name), ['vm1', 'vm2']);
      assert.equal((await r.cli(['stop', '--all'])).code, 0);
      assert.deepEqual(qemuProcessesUnder(root.dir), []);
      const off = await r.action({ ...configInputs(LIGHT, fx), cache: 'false', snapshot: 'false', 'cache-dir': sharedDir() });
      assert.equal(off.code, 0, off.stdout.slice(-3000));
      assert.equal(off.outputs.snapshot, 'false');
      assert.equal(off.outputs['snapshot-disk'], '');
      assert.equal(off.record!.restore, undefined);
      assert.deepEqual(sources(off.record), { prepared: 'local' });
    } finally {
      await r.post();
    }
    assert.equal(server.requests.length, before, 'no request reached the cache service');
  });

  test('v1: another empty runner restores every layer through the REST protocol', async () => {
    const before = server.requests.length;
    const r = newRunner('run3', 'v1');
    const res = await r.action(configInputs(LIGHT, fx));
    await r.post();
    assert.equal(res.code, 0, res.stdout.slice(-3000));
    assert.deepEqual(sources(res.record), { prepared: 'actions cache', snapshot: 'actions cache' });
    const ops = new Set(server.requests.slice(before).map((x) => x.op));
    assert.ok(ops.has('v1.getCacheEntry'), [...ops].join());
    assert.ok(!ops.has('twirp.GetCacheEntryDownloadURL'));
    await restoresToSsh(res.record!);
  });

  test('faults: 429 and 503 on lookups, a stalled and a truncated download — green, nothing corrupt used', async () => {
    // The job's downloads, in order: SSH key (stalled mid-body: the streamed restore's 15 s stall bound ends it), SSH key again
    // (adopted after the duplicate save), prepared, snapshot (truncated: rejected), snapshot again (restored).
    const f429 = server.inject({ kind: '429', op: 'twirp.GetCacheEntryDownloadURL', retryAfter: 1 });
    const f503 = server.inject({ kind: '503', op: 'twirp.GetCacheEntryDownloadURL' });
    const gets = new Set<number>();
    const nth = (n: number) => (x: { op: string; seq: number }) => {
      if (x.op !== 'blob.get') return false;
      gets.add(x.seq);
      return [...gets].sort((a, b) => a - b).indexOf(x.seq) === n - 1;
    };
    const stall = server.inject({ kind: 'stall', match: nth(1), afterBytes: 10 });
    const truncate = server.inject({ kind: 'truncate', match: nth(4) });
    const r = newRunner('run4', 'v2');
    const res = await r.action(configInputs(LIGHT, fx));
    await r.post();
    server.clearFaults();
    assert.equal(res.code, 0, res.stdout.slice(-5000));
    for (const [name, f] of Object.entries({ f429, f503, stall, truncate })) assert.equal(f.hits, 1, `${name} was applied`);
    assert.deepEqual(sources(res.record), { prepared: 'actions cache', snapshot: 'actions cache' });
    assert.match(res.stdout, /Actions cache entry \S+: (the download failed|not usable \([^)]*\)); downloading it once more/);
    assert.equal(fs.readFileSync(res.outputs['ssh-key'], 'utf8'), fs.readFileSync(run1.outputs['ssh-key'], 'utf8'), 'the cached key was adopted');
    await restoresToSsh(res.record!);
  });
});
