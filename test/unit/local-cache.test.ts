// The local cache tier: bounded lock waits that name the holder, stale temps (and the QEMU an
// interrupted run left in one), holders of layers in use, and least-recently-used eviction.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  cleanStaleTemps,
  dirBytes,
  evict,
  holdLayer,
  jobHolder,
  liveHolders,
  processHolder,
  releaseHolder,
  withLayerLock,
} from '../../src/cache/local.js';
import { writeManifest } from '../../src/cache/manifest.js';
import { manifestPath } from '../../src/names.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'local-cache-unit-'));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) c.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
});

function waitForLine(c: ChildProcess, re: RegExp): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    c.stdout!.on('data', (d) => {
      out += d;
      if (re.test(out)) resolve();
    });
    c.once('exit', () => reject(new Error(`child exited before printing ${re}: ${out}`)));
  });
}

describe('layer lock', () => {
  test('a lock held by a live process: the wait ends at its bound with an error naming the pid', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'lock-'));
    // Another process takes the lock through the same code and keeps it.
    const holder = spawn(
      process.execPath,
      ['--import', 'tsx', '-e', `import('${path.resolve('src/cache/local.ts')}').then((l) => l.withLayerLock(${JSON.stringify(dir)}, 'prep', 60000, async () => { console.log('locked'); await new Promise(() => setInterval(() => {}, 1000)); }))`],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.push(holder);
    await waitForLine(holder, /locked/);
    const start = Date.now();
    await assert.rejects(
      withLayerLock(dir, 'prep', 3000, async () => 'never'),
      (err: Error) => {
        assert.match(err.message, new RegExp(`the prep layer is locked by pid ${holder.pid}, holding it since \\d{4}-.*gave up after waiting \\d`));
        return true;
      },
    );
    const waited = Date.now() - start;
    assert.ok(waited >= 2500 && waited < 10_000, `waited ${waited} ms`);
    holder.kill('SIGKILL');
  });
});

describe('stale temps', () => {
  test('a QEMU left running in a dead run\'s work dir is killed before the dir goes; live runs\' dirs stay', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'temps-'));
    const stale = path.join(dir, 'prepared-work.ryra-tmp-999999999-abcd');
    fs.mkdirSync(path.join(stale, 'vm'), { recursive: true });
    // A stand-in for an orphaned QEMU: its command line names the work dir and its QMP socket's
    // private dir (outside the work dir), as QEMU's does.
    const socketDir = fs.mkdtempSync(path.join(tmp, 'rvm-'));
    fs.writeFileSync(path.join(socketDir, 'qmp.sock'), '');
    const orphan = spawn('bash', ['-c', `exec -a qemu-system-x86_64 perl -e 'sleep 300' -- -qmp unix:${socketDir}/qmp.sock,server=on,wait=off -drive file=${stale}/disk.qcow2`], { stdio: 'ignore', detached: true });
    children.push(orphan);
    // Until bash has exec'd, the child's command line is not QEMU's yet.
    while (!fs.readFileSync(`/proc/${orphan.pid}/cmdline`, 'utf8').startsWith('qemu-system-x86_64\0')) await sleep(10);
    fs.writeFileSync(path.join(stale, 'vm', 'qemu.pid'), `${orphan.pid}\n`);
    // A pid file whose process does not name the dir (pid reuse) is left alone.
    const stranger = spawn('sleep', ['300'], { stdio: 'ignore' });
    children.push(stranger);
    fs.mkdirSync(path.join(stale, 'verify', 'vm'), { recursive: true });
    fs.writeFileSync(path.join(stale, 'verify', 'vm', 'qemu.pid'), `${stranger.pid}\n`);
    const live = path.join(dir, `x.ryra-tmp-${process.pid}-beef`);
    fs.writeFileSync(live, '');
    const exited = new Promise((r) => orphan.once('exit', r));
    cleanStaleTemps(dir);
    await exited;
    assert.deepEqual(fs.readdirSync(dir), [path.basename(live)]);
    assert.equal(fs.existsSync(socketDir), false, 'the QMP socket dir goes with its QEMU');
    assert.equal(stranger.exitCode, null, 'an unrelated process is not killed');
  });
});

describe('stale temps, pid reuse', () => {
  test('a temp named by a pid that a later process got again is stale (and that process is left alone)', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'reuse-'));
    const made = path.join(dir, 'prepared-work.ryra-tmp-0-abcd');
    fs.mkdirSync(made);
    // The boot time in /proc/stat is in whole seconds: start the "new owner" well after the temp.
    await sleep(2500);
    const later = spawn('sleep', ['300'], { stdio: 'ignore' });
    children.push(later);
    const renamed = path.join(dir, `prepared-work.ryra-tmp-${later.pid}-abcd`); // rename keeps the birth time
    fs.renameSync(made, renamed);
    const own = path.join(dir, `x.ryra-tmp-${later.pid}-beef`); // made after it started: its own
    fs.writeFileSync(own, '');
    cleanStaleTemps(dir);
    assert.deepEqual(fs.readdirSync(dir), [path.basename(own)]);
    assert.equal(later.exitCode, null);
  });
});

function layer(dir: string, base: string, o: { bytes: number; id: string; parentId?: string; layer?: 'prepared' | 'snapshot'; ageS: number }): void {
  const file = `${base}.qcow2`;
  fs.writeFileSync(path.join(dir, file), Buffer.alloc(o.bytes, 1));
  writeManifest(manifestPath(dir, base), {
    id: o.id,
    layer: o.layer ?? 'prepared',
    key: Buffer.from(o.id).toString('hex').slice(0, 20),
    inputs: {},
    parentId: o.parentId,
    files: [{ name: file, size: o.bytes, sha256: '0'.repeat(64) }],
    buildSeconds: 0,
  });
  const t = new Date(Date.now() - o.ageS * 1000);
  fs.utimesSync(manifestPath(dir, base), t, t);
}

describe('in use and eviction', () => {
  test('holders: a live process or an existing job dir holds; a dead one does not and is cleared', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'hold-'));
    const jobDir = fs.mkdtempSync(path.join(tmp, 'job-'));
    holdLayer(dir, 'a', processHolder());
    holdLayer(dir, 'a', jobHolder(jobDir));
    holdLayer(dir, 'a', { id: 'proc-999999999-1', pid: 999999999, startTime: '1' });
    assert.equal(liveHolders(dir, 'a').length, 2);
    fs.rmSync(jobDir, { recursive: true });
    assert.equal(liveHolders(dir, 'a').length, 1);
    releaseHolder(dir, processHolder().id);
    assert.equal(liveHolders(dir, 'a').length, 0);
  });

  test('over the budget, the least recently used goes with its children; a layer in use and its backing never', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'evict-'));
    const MiB = 1 << 20;
    layer(dir, 'prep-A', { bytes: 4 * MiB, id: 'A', ageS: 500 });
    layer(dir, 'snap-A', { bytes: 2 * MiB, id: 'sA', parentId: 'A', layer: 'snapshot', ageS: 400 });
    layer(dir, 'prep-B', { bytes: 4 * MiB, id: 'B', ageS: 300 });
    layer(dir, 'snap-B', { bytes: 2 * MiB, id: 'sB', parentId: 'B', layer: 'snapshot', ageS: 300 });
    layer(dir, 'prep-C', { bytes: 4 * MiB, id: 'C', ageS: 100 });
    // A (oldest) is in use through its snapshot (a running VM): B must go instead.
    holdLayer(dir, 'snap-A', processHolder());
    const before = dirBytes(dir);
    assert.ok(before >= 16 * MiB);
    const { evicted, bytes } = await evict(dir, 11 * MiB);
    assert.deepEqual(evicted.map((e) => e.base).sort(), ['prep-B', 'snap-B']);
    assert.ok(bytes <= 11 * MiB);
    assert.ok(fs.existsSync(path.join(dir, 'prep-A.qcow2')) && fs.existsSync(path.join(dir, 'snap-A.qcow2')));
    assert.equal(fs.existsSync(manifestPath(dir, 'prep-B')), false);
    // Within budget: nothing more goes.
    assert.deepEqual((await evict(dir, 11 * MiB)).evicted, []);
    // No budget: nothing goes.
    assert.deepEqual((await evict(dir, 0)).evicted, []);
  });
});
