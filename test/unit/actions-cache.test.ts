// The Actions cache tier against the project's local cache service, with the real @actions/cache in
// its worker process: exact keys (a successor key only after the key's own entry was refused),
// duplicates, a 429 retried once, and a stalled service that the tier's own timeout stops (the
// toolkit's lookups have none).
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { actionsCache, cacheServiceAvailable } from '../../src/cache/actions.js';
import { stagedFilesProblem } from '../../src/cache/confine.js';
import { entryVersion } from '../../src/cache/stream.js';
import { log, plainLogger, setLogger } from '../../src/log.js';
import { startCacheServer, type CacheServer } from '../support/cache-server.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'actions-cache-'));
let server: CacheServer;
const saved = { ...process.env };

before(async () => {
  server = await startCacheServer({ dir: tmp });
  process.env.RUNNER_TEMP = path.join(tmp, 'runner');
  fs.mkdirSync(process.env.RUNNER_TEMP);
  delete process.env.GITHUB_SERVER_URL;
});
after(async () => {
  await server.close();
  process.env = saved;
  fs.rmSync(tmp, { recursive: true, force: true });
});

function layerDir(name: string, content: string): string {
  const d = fs.mkdtempSync(path.join(tmp, `${name}-`));
  fs.writeFileSync(path.join(d, 'x.qcow2'), content);
  fs.writeFileSync(path.join(d, 'x.manifest.json'), '{}');
  return d;
}
const names = ['x.qcow2', 'x.manifest.json'];
/** The bound a restore gets: far above these small layers. */
const BOUND = { maxBytes: 1 << 30 };

for (const protocol of ['v2', 'v1'] as const) {
  describe(`cache tier over ${protocol}`, () => {
    before(() => Object.assign(process.env, server.env(protocol)));

    test('available only when configured', () => {
      assert.equal(cacheServiceAvailable(), true);
      assert.equal(cacheServiceAvailable({}), false);
      assert.equal(cacheServiceAvailable({ ...process.env, ACTIONS_CACHE_MODE: 'none' }), false);
    });

    test('save, duplicate, restore elsewhere byte-identical, exact keys only', async () => {
      const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
      const key = `ryra-vm-v1-prepared-test-${protocol}-abc`;
      assert.equal(await c.save(key, names, layerDir('src', 'layer bytes')), 'saved');
      assert.equal(await c.save(key, names, layerDir('src2', 'other bytes')), 'exists');
      const dst = fs.mkdtempSync(path.join(tmp, 'dst-'));
      assert.equal(await c.restore(key, names, dst, BOUND), 'restored');
      assert.equal(fs.readFileSync(path.join(dst, 'x.qcow2'), 'utf8'), 'layer bytes');
      assert.equal(await c.restore(`${key.slice(0, -1)}`, names, fs.mkdtempSync(path.join(tmp, 'p-')), BOUND), 'miss', 'a key prefix is not a hit');
      assert.equal(await c.restore(`${key}-more`, names, fs.mkdtempSync(path.join(tmp, 'm-')), BOUND), 'miss');
      c.close();
    });
  });
}

describe('streamed restores (v2, a download URL outside Azure blob storage)', () => {
  before(() => Object.assign(process.env, server.env('v2')));
  // 3 MiB of incompressible bytes: several pipe buffers through curl, zstd and tar.
  const big = crypto.randomBytes(3 << 20);
  function bigLayer(name: string): string {
    const d = fs.mkdtempSync(path.join(tmp, `${name}-`));
    fs.writeFileSync(path.join(d, 'x.qcow2'), big);
    fs.writeFileSync(path.join(d, 'x.manifest.json'), '{"n":1}');
    return d;
  }
  const blobGets = () => server.requests.filter((r) => r.op === 'blob.get');

  test('curl streams the entry into zstd and tar: byte-identical, no archive file on disk, one lookup', async () => {
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    const key = 'ryra-vm-v1-prepared-streamed';
    assert.equal(await c.save(key, names, bigLayer('ss')), 'saved');
    const before = blobGets().length;
    const lookups = () => server.requests.filter((r) => r.op === 'twirp.GetCacheEntryDownloadURL').length;
    const lookupsBefore = lookups();
    const dst = fs.mkdtempSync(path.join(tmp, 'sd-'));
    assert.equal(await c.restore(key, names, dst, BOUND), 'restored');
    assert.ok(fs.readFileSync(path.join(dst, 'x.qcow2')).equals(big));
    assert.equal(fs.readFileSync(path.join(dst, 'x.manifest.json'), 'utf8'), '{"n":1}');
    const gets = blobGets().slice(before);
    assert.equal(gets.length, 1);
    assert.match(String(gets[0]!.headers['user-agent']), /^curl\//);
    assert.deepEqual(fs.readdirSync(dst).sort(), ['x.manifest.json', 'x.qcow2'], 'only the entry\'s files');
    assert.equal(lookups() - lookupsBefore, 1, 'the restore uses the URL its lookup found');
    c.close();
  });

  test('the toolkit\'s own restore reads our entries too (one format both ways)', async () => {
    // The same archive, extracted the toolkit's way (it restores into the cwd/GITHUB_WORKSPACE).
    const dst = fs.mkdtempSync(path.join(tmp, 'td-'));
    const cwd = process.cwd();
    process.chdir(dst);
    process.env.GITHUB_WORKSPACE = dst;
    try {
      const { restoreCache } = await import('@actions/cache');
      assert.equal(await restoreCache([...names], 'ryra-vm-v1-prepared-streamed'), 'ryra-vm-v1-prepared-streamed');
    } finally {
      process.chdir(cwd);
      delete process.env.GITHUB_WORKSPACE;
    }
    assert.ok(fs.readFileSync(path.join(dst, 'x.qcow2')).equals(big));
  });

  for (const chunked of [false, true]) {
    test(`a download cut short (${chunked ? 'ended cleanly, so only zstd can tell' : 'connection closed'}) fails and names the tool; the next try restores`, async () => {
      const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
      const key = 'ryra-vm-v1-prepared-streamed';
      server.inject({ kind: 'truncate', op: 'blob.get', bytes: 1 << 20, chunked });
      const lines: string[] = [];
      const dst = fs.mkdtempSync(path.join(tmp, 'tr-'));
      const got = await withWarnings(lines, () => c.restore(key, names, dst, BOUND));
      assert.equal(got, 'failed');
      assert.match(lines.join('\n'), chunked ? /zstd -d exited with 1/ : /curl exited with 18/);
      const dst2 = fs.mkdtempSync(path.join(tmp, 'tr2-'));
      assert.equal(await c.restore(key, names, dst2, BOUND), 'restored');
      assert.ok(fs.readFileSync(path.join(dst2, 'x.qcow2')).equals(big));
      c.close();
    });
  }

  test('an error status on the download fails the restore (curl --fail), and the next try restores', async () => {
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    server.inject({ kind: '503', op: 'blob.get' });
    const lines: string[] = [];
    assert.equal(await withWarnings(lines, () => c.restore('ryra-vm-v1-prepared-streamed', names, fs.mkdtempSync(path.join(tmp, 'e-')), BOUND)), 'failed');
    assert.match(lines.join('\n'), /curl exited with 22: .*503/);
    const dst = fs.mkdtempSync(path.join(tmp, 'e2-'));
    assert.equal(await c.restore('ryra-vm-v1-prepared-streamed', names, dst, BOUND), 'restored');
    assert.ok(fs.readFileSync(path.join(dst, 'x.qcow2')).equals(big));
    c.close();
  });

  test('a stalled download is stopped at the transfer bound, with curl and zstd gone', async () => {
    const c = actionsCache({ lookupMs: 20_000, transferMs: 4000 });
    const h = server.inject({ kind: 'stall', op: 'blob.get', afterBytes: 1 << 20, times: Infinity });
    const start = Date.now();
    const dst = fs.mkdtempSync(path.join(tmp, 'sl-'));
    assert.equal(await c.restore('ryra-vm-v1-prepared-streamed', names, dst, BOUND), 'miss');
    assert.ok(Date.now() - start < 15_000);
    assert.ok(h.hits >= 1, 'the download was reached');
    // The worker ran them in the restore's dir: nothing runs there any more.
    for (let i = 0; i < 20 && processesIn(dst).length; i++) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(processesIn(dst), []);
    h.cancel();
    c.close();
  });
});

describe('faults', () => {
  before(() => Object.assign(process.env, server.env('v2')));

  test('a 429 is retried once after Retry-After, then restores', async () => {
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    const key = 'ryra-vm-v1-snapshot-429';
    assert.equal(await c.save(key, names, layerDir('s', '429 data')), 'saved');
    server.inject({ kind: '429', op: 'twirp.GetCacheEntryDownloadURL', retryAfter: 1 });
    const dst = fs.mkdtempSync(path.join(tmp, 'r-'));
    assert.equal(await c.restore(key, names, dst, BOUND), 'restored');
    assert.equal(fs.readFileSync(path.join(dst, 'x.qcow2'), 'utf8'), '429 data');
  });

  test('a stalled lookup is stopped at the lookup bound, and the tier is off for the rest of the run', async () => {
    // Long enough for the worker to start and reach the service even on a loaded machine.
    const c = actionsCache({ lookupMs: 15_000, transferMs: 600_000 });
    const h = server.inject({ kind: 'stall', op: 'twirp.GetCacheEntryDownloadURL', times: Infinity });
    const start = Date.now();
    assert.equal(await c.restore('ryra-vm-v1-stalled', names, fs.mkdtempSync(path.join(tmp, 'st-')), BOUND), 'miss');
    const ms = Date.now() - start;
    assert.ok(h.hits >= 1, 'the service was reached');
    assert.ok(ms >= 14_900 && ms < 25_000, `stopped after ${ms} ms (the lookup bound, not the transfer bound)`);
    assert.equal(c.on, false);
    // Later layers cost nothing: no call reaches the service any more.
    const before = server.requests.length;
    const t1 = Date.now();
    assert.equal(await c.restore('ryra-vm-v1-next-layer', names, fs.mkdtempSync(path.join(tmp, 'st2-')), BOUND), 'miss');
    assert.equal(await c.save('ryra-vm-v1-next-save', names, layerDir('n', 'x')), 'failed');
    assert.ok(Date.now() - t1 < 1000);
    assert.equal(server.requests.length, before);
    h.cancel();
    c.close();
  });

  test('one worker process serves the run\'s calls', async () => {
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    const before = processesNamed('cache-worker');
    for (let i = 0; i < 3; i++) assert.equal(await c.save(`ryra-vm-v1-many-${i}`, names, layerDir(`m${i}`, `data ${i}`)), 'saved');
    const during = processesNamed('cache-worker').filter((p) => !before.includes(p));
    assert.equal(during.length, 1, `worker processes: ${during.join(', ')}`);
    c.close();
  });

  test('prestart: the worker runs before the first call, and that call uses it', async () => {
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    const before = processesNamed('cache-worker');
    c.prestart!();
    const started = processesNamed('cache-worker').filter((p) => !before.includes(p));
    assert.equal(started.length, 1, `worker processes after prestart: ${started.join(', ')}`);
    assert.equal(await c.save('ryra-vm-v1-prestarted', names, layerDir('pre', 'prestarted')), 'saved');
    assert.deepEqual(processesNamed('cache-worker').filter((p) => !before.includes(p)), started);
    c.close();
  });

  test('a stalled upload is stopped too, and the save reports failure', async () => {
    const c = actionsCache({ lookupMs: 3000, transferMs: 4000 });
    const h = server.inject({ kind: 'stall', op: ['blob.putBlob', 'blob.putBlock'], times: Infinity });
    assert.equal(await c.save('ryra-vm-v1-upload-stall', names, layerDir('u', 'never arrives')), 'failed');
    h.cancel();
    c.close();
  });
});

describe('hostile entries (v2): data, never instructions', () => {
  before(() => Object.assign(process.env, server.env('v2')));
  const outside = fs.mkdtempSync(path.join(tmp, 'outside-'));

  /** A zstd tar the way an attacker makes it: `build` fills a dir, tar stores `members` as given (-P). */
  function hostileArchive(build: (d: string) => void, members: string[], opts: { cwd?: string } = {}): Buffer {
    const d = fs.mkdtempSync(path.join(tmp, 'evil-'));
    build(d);
    const out = path.join(tmp, `evil-${crypto.randomUUID()}.tar.zst`);
    const r = spawnSync('tar', ['--posix', '-P', '-c', '-f', out, '--use-compress-program', 'zstd', '-C', opts.cwd ?? d, ...members]);
    assert.equal(r.status, 0, String(r.stderr));
    return fs.readFileSync(out);
  }
  const seedEntry = async (key: string, data: Buffer) => server.seed({ key, version: entryVersion(names), data });

  const cases: [string, () => Buffer][] = [
    ['a `../` name', () => hostileArchive((d) => (fs.mkdirSync(path.join(d, 'sub')), fs.writeFileSync(path.join(d, 'x.qcow2'), 'ok'), fs.writeFileSync(path.join(d, 'x.manifest.json'), '{}'), fs.writeFileSync(path.join(outside, 'dotdot-src'), 'evil')), ['x.qcow2', 'x.manifest.json', `../${path.basename(outside)}/dotdot-src`], { cwd: undefined })],
    ['an absolute name', () => hostileArchive((d) => (fs.writeFileSync(path.join(d, 'x.qcow2'), 'ok'), fs.writeFileSync(path.join(d, 'x.manifest.json'), '{}'), fs.writeFileSync(path.join(d, 'abs'), 'evil')), ['x.qcow2', 'x.manifest.json', path.join(tmp, 'abs-target')])],
    ['a write through a symlink', () => hostileArchive((d) => (fs.symlinkSync(outside, path.join(d, 'x.qcow2')), fs.writeFileSync(path.join(d, 'x.manifest.json'), '{}')), ['x.qcow2', 'x.manifest.json'])],
  ];
  for (const [what, make] of cases) {
    test(`${what}: nothing lands outside the staging dir`, async () => {
      const key = `ryra-vm-v1-evil-${what.replace(/\W+/g, '-')}`;
      if (what === 'an absolute name') fs.writeFileSync(path.join(tmp, 'abs-target'), 'evil source');
      await seedEntry(key, make());
      if (what === 'an absolute name') fs.rmSync(path.join(tmp, 'abs-target'));
      const before = fs.readdirSync(outside).sort();
      const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
      const dst = fs.mkdtempSync(path.join(tmp, 'ev-'));
      const got = await c.restore(key, names, dst, BOUND);
      c.close();
      assert.equal(fs.existsSync(path.join(tmp, 'abs-target')), false, 'the absolute name was not written');
      assert.deepEqual(fs.readdirSync(outside).sort(), before, 'nothing new beside the staging dir');
      assert.equal(fs.existsSync(path.join(path.dirname(dst), 'dotdot-src')), false);
      if (what === 'a write through a symlink') {
        // tar keeps a symlink inside the staging dir (made last); the caller's checks refuse it.
        assert.ok(got === 'restored' || got.startsWith('refused: '), got);
        if (got === 'restored') assert.match(stagedFilesProblem(dst, names)!, /x\.qcow2 is a symlink/);
      } else {
        // tar unpacks only the planned names: the hostile member is skipped, never made.
        assert.equal(got, 'restored');
        assert.equal(stagedFilesProblem(dst, names), undefined);
        assert.deepEqual(fs.readdirSync(dst).sort(), ['x.manifest.json', 'x.qcow2']);
      }
    });
  }

  test('an entry that unpacks to more than the layer can hold is stopped near the bound and refused', async () => {
    const key = 'ryra-vm-v1-evil-bomb';
    // 4 GiB of zeros, about 130 KiB compressed, against a 16 MiB bound.
    await seedEntry(key, hostileArchive((d) => (fs.writeFileSync(path.join(d, 'x.qcow2'), ''), fs.truncateSync(path.join(d, 'x.qcow2'), 4 * 2 ** 30), fs.writeFileSync(path.join(d, 'x.manifest.json'), '{}')), ['x.qcow2', 'x.manifest.json']));
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    const dst = fs.mkdtempSync(path.join(tmp, 'bomb-'));
    const got = await c.restore(key, names, dst, { maxBytes: 16 << 20 });
    c.close();
    assert.match(got, /^refused: it unpacks to more than 16777216 bytes, more than a layer of this configuration holds/);
    const written = fs.readdirSync(dst).reduce((n, f) => n + fs.statSync(path.join(dst, f)).blocks * 512, 0);
    // The pipeline is killed as soon as tar says so; what tar wrote meanwhile depends on the load.
    assert.ok(written < 2 ** 30, `the staging dir holds ${written} bytes of the 4 GiB`);
  });

  test('the bound is exact to a tar record: an entry of just the bound unpacks, one a record over it is refused', async () => {
    const key = 'ryra-vm-v1-bounded';
    const data = hostileArchive((d) => (fs.writeFileSync(path.join(d, 'x.qcow2'), crypto.randomBytes(300_000)), fs.writeFileSync(path.join(d, 'x.manifest.json'), '{}')), ['x.qcow2', 'x.manifest.json']);
    const tarBytes = spawnSync('zstd', ['-d', '-c', '-q'], { input: data, maxBuffer: 1 << 26 }).stdout.length;
    assert.equal(tarBytes % 10240, 0, 'tar pads to whole records');
    await seedEntry(key, data);
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    try {
      assert.equal(await c.restore(key, names, fs.mkdtempSync(path.join(tmp, 'fit-')), { maxBytes: tarBytes }), 'restored');
      assert.match(await c.restore(key, names, fs.mkdtempSync(path.join(tmp, 'over-')), { maxBytes: tarBytes - 10241 }), /^refused: it unpacks to more than/);
    } finally {
      c.close();
    }
  });

  const badEntry = () => hostileArchive((d) => fs.writeFileSync(path.join(d, 'x.qcow2'), 'bad'), ['x.qcow2']);
  const goodEntry = (bytes: string) => hostileArchive((d) => (fs.writeFileSync(path.join(d, 'x.qcow2'), bytes), fs.writeFileSync(path.join(d, 'x.manifest.json'), '{}')), names);
  const restoredBytes = async (c: ReturnType<typeof actionsCache>, key: string) => {
    const dst = fs.mkdtempSync(path.join(tmp, 'succ-'));
    const got = await c.restore(key, names, dst, BOUND);
    return got === 'restored' ? fs.readFileSync(path.join(dst, 'x.qcow2'), 'utf8') : got;
  };

  test('a refused entry does not block its key: the next save goes to a successor, which a later run restores once it refused the key\'s own entry', async () => {
    const key = 'ryra-vm-v1-prepared-refused';
    await seedEntry(key, hostileArchive((d) => fs.writeFileSync(path.join(d, 'x.qcow2'), 'bad'), ['x.qcow2', '/etc/hostname']));
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    assert.equal(await restoredBytes(c, key), 'refused: it lacks x.manifest.json (of the files x.qcow2, x.manifest.json)');
    c.refused(key);
    assert.equal(await c.has!(key, names), false, 'a refused entry is not had, and there is no successor yet');
    assert.equal(await c.save(key, names, layerDir('good', 'good bytes')), 'saved');
    c.close();
    assert.ok(server.entries().some((e) => e.key === `${key}-r1`));
    // The next run tries the key's own entry first, refuses it, and only then takes the successor.
    const c2 = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    assert.equal(await c2.has!(key, names), true, 'the key\'s own entry is had until it is refused');
    assert.match(await restoredBytes(c2, key), /^refused: /);
    c2.refused(key);
    assert.equal(await restoredBytes(c2, key), 'good bytes');
    assert.equal(await c2.has!(key, names), true);
    c2.close();
  });

  for (const protocol of ['v2', 'v1'] as const) {
    test(`the key's own entry wins while it is valid: a later \`-r1\` written by someone else is not read (${protocol})`, async () => {
      Object.assign(process.env, server.env(protocol));
      const key = `ryra-vm-v1-snapshot-base-wins-${protocol}`;
      const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
      try {
        assert.equal(await c.save(key, names, layerDir('base', 'base bytes')), 'saved');
        await seedEntry(`${key}-r1`, goodEntry('later writer'));
        assert.equal(server.entries()[0]!.key, `${key}-r1`, 'the successor is the newest entry');
        assert.equal(await restoredBytes(c, key), 'base bytes');
        assert.equal(await c.has!(key, names), true);
        // A successor without a refusal is not a hit either: a key whose own entry is gone misses.
        await seedEntry(`${key}-only-r-r1`, goodEntry('orphan successor'));
        assert.equal(await restoredBytes(c, `${key}-only-r`), 'miss');
        assert.equal(await c.has!(`${key}-only-r`, names), false);
      } finally {
        c.close();
        Object.assign(process.env, server.env('v2'));
      }
    });
  }

  test('the key\'s own entry refused: the next restore takes the newest successor, and one refused too is not taken again', async () => {
    const key = 'ryra-vm-v1-snapshot-succ';
    await seedEntry(key, badEntry());
    await seedEntry(`${key}-r1`, goodEntry('older successor'));
    await seedEntry(`${key}-r2`, goodEntry('newest successor'));
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    try {
      assert.match(await restoredBytes(c, key), /^refused: it lacks x\.manifest\.json/);
      c.refused(key);
      assert.equal(await restoredBytes(c, key), 'newest successor');
      // The caller's checks refuse what -r2 brought: nothing newer, so a miss, not -r2 again.
      c.refused(key);
      assert.equal(await restoredBytes(c, key), 'miss');
      assert.equal(await c.has!(key, names), false);
      assert.equal(await c.save(key, names, layerDir('rebuilt', 'rebuilt')), 'saved');
      assert.ok(server.entries().some((e) => e.key === `${key}-r3`), 'saved under -r3');
    } finally {
      c.close();
    }
  });

  test('a save after a refusal goes under the successor after the newest one refused; a later run restores it', async () => {
    const key = 'ryra-vm-v1-snapshot-save-next';
    await seedEntry(key, badEntry());
    await seedEntry(`${key}-r1`, badEntry());
    await seedEntry(`${key}-r4`, badEntry());
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    try {
      assert.match(await restoredBytes(c, key), /^refused: /);
      c.refused(key);
      assert.match(await restoredBytes(c, key), /^refused: /, 'the newest successor, -r4');
      c.refused(key);
      assert.equal(await c.save(key, names, layerDir('next', 'next bytes')), 'saved');
      assert.equal(server.entries()[0]!.key, `${key}-r5`);
    } finally {
      c.close();
    }
    const c2 = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    try {
      assert.match(await restoredBytes(c2, key), /^refused: /);
      c2.refused(key);
      assert.equal(await restoredBytes(c2, key), 'next bytes');
    } finally {
      c2.close();
    }
  });

  test('a save after a refusal that restored no successor goes under `-r1`: an existing one is `exists`, not one more entry', async () => {
    const key = 'ryra-vm-v1-snapshot-no-retry';
    await seedEntry(key, badEntry());
    await seedEntry(`${key}-r1`, goodEntry('successor'));
    const c = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
    try {
      assert.match(await restoredBytes(c, key), /^refused: /);
      c.refused(key);
      const before = server.entries().length;
      assert.equal(await c.save(key, names, layerDir('again', 'again')), 'exists');
      assert.equal(server.entries().length, before);
    } finally {
      c.close();
    }
  });
});

/** PIDs of node processes running a file whose path contains `marker` (the worker is worker.ts here, cache-worker.js bundled). */
function processesNamed(marker: string): number[] {
  const pids: number[] = [];
  for (const p of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (cmd.includes(marker) || cmd.includes('cache/worker.ts')) pids.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return pids;
}

/** Runs `fn` with the logger's warnings collected into `lines` (and nothing else printed). */
async function withWarnings<T>(lines: string[], fn: () => Promise<T>): Promise<T> {
  const prev = log;
  setLogger({ ...plainLogger(), warning: (m) => lines.push(m), info: () => {} });
  try {
    return await fn();
  } finally {
    setLogger(prev);
  }
}

/** PIDs of processes whose working directory is `dir`. */
function processesIn(dir: string): number[] {
  return fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x)).map(Number).filter((p) => {
    try {
      return fs.readlinkSync(`/proc/${p}/cwd`) === dir;
    } catch {
      return false;
    }
  });
}
