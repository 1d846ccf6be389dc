// The seed's own arch (arm64 guest under TCG), a lighter pipeline: the raw image the Rust tool left
// under its seed name is adopted (its digest checked, nothing downloaded), a prepared layer (no extra
// packages) and a snapshot are built; the snapshot restores from the run record, and from the seed's
// savevm command line exactly as image.rs writes it (plus -loadvm ready); a rerun is all local.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { freePort } from '../../src/vm/machine.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { runCli } from '../support/cli.js';
import { ensureFixture, testArches, type Fixture } from '../support/fixtures.js';
import { restoreRecord, withPlainQemu } from '../support/vm.js';

const root = tempRoot('arm64');
const cacheDir = path.join(root.dir, 'cache');
const figures: string[] = [];
let fx: Fixture;
const skip = !testArches().includes('arm64') && 'RYRA_TEST_ARCHES leaves out arm64';

before(() => {
  if (!skip) fx = ensureFixture('arm64');
});
after(async () => {
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`arm64 figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

async function prepare() {
  // No image-url: the catalogue's image, known by its seed name; the digest given, so no checksum file is fetched.
  const args = ['prepare', '--json', '--arch', 'arm64', '--kvm', 'false', '--memory', '1024', '--base-packages', 'false', '--image-checksum', fx.checksum, '--cache-dir', cacheDir];
  const r = await runCli(args, { RYRA_VM_RUNTIME_DIR: path.join(root.dir, 'rt'), TMPDIR: root.dir }).done;
  assert.equal(r.code, 0, r.stderr.slice(-4000));
  const outputs = JSON.parse(r.stdout) as Record<string, string>;
  const record = JSON.parse(fs.readFileSync(outputs.manifest, 'utf8')) as RunRecord;
  return { ...r, record, sources: Object.fromEntries(record.layers.map((l) => [l.layer, l.source])) };
}

describe('arm64 guests (TCG)', { skip, timeout: 60 * 60_000 }, () => {
  let rec: RunRecord;

  test('the seed\'s raw image is adopted by name; prepared and snapshot built; restored from the record', async () => {
    fs.mkdirSync(cacheDir, { recursive: true });
    fs.copyFileSync(fx.image, path.join(cacheDir, 'debian-13-generic-arm64.qcow2'));
    const r = await prepare();
    assert.deepEqual(r.sources, { raw: 'local', prepared: 'built', snapshot: 'built' });
    assert.match(r.record.layers.find((l) => l.layer === 'raw')!.note ?? '', /^adopted an unrecorded file/);
    rec = r.record;
    figures.push(`cold prepare (adopted raw + prepared + snapshot) ${(r.ms / 1000).toFixed(0)} s`);
    const { machine, readyMs } = await restoreRecord(rec, root.dir, 'arm64');
    try {
      assert.equal((await machine.check('uname -m', 'uname')).stdout.trim(), 'aarch64');
    } finally {
      await machine.destroy();
    }
    figures.push(`restore → SSH ${(readyMs / 1000).toFixed(1)} s`);
  });

  test('the seed\'s savevm command line, unchanged, plus -loadvm ready, restores the snapshot', async () => {
    const d = fs.mkdtempSync(path.join(root.dir, 'seedline-'));
    fs.mkdirSync(path.join(d, 'images'));
    fs.copyFileSync(rec.restore!.disk, path.join(d, 'disk.qcow2'));
    fs.copyFileSync(rec.restore!.efivars, path.join(d, 'efivars.qcow2'));
    const port = await freePort();
    // image.rs create_snapshot, TCG (use_kvm false): the same options in the same order.
    const argv = [
      '-machine', 'virt', '-cpu', 'max', '-m', '1024', '-smp', '2',
      '-drive', `if=pflash,format=raw,file=${rec.firmware.code},readonly=on`,
      '-drive', `if=pflash,format=qcow2,file=${path.join(d, 'efivars.qcow2')}`,
      '-drive', `if=virtio,file=${path.join(d, 'disk.qcow2')},format=qcow2`,
      '-drive', `if=virtio,file=${rec.restore!.seed},format=raw,readonly=on`,
      '-nic', `user,hostfwd=tcp::${port}-:22`,
      '-nographic',
      '-serial', `file:${path.join(d, 'serial.log')}`,
      '-monitor', `unix:${path.join(d, 'mon.sock')},server,nowait`,
      '-virtfs', `local,path=${path.join(d, 'images')},mount_tag=images,security_model=none,readonly=on`,
      '-loadvm', 'ready',
    ];
    const t0 = Date.now();
    await withPlainQemu(rec, 'qemu-system-aarch64', argv, port, async (c) => {
      assert.equal((await c.exec('uname -m')).stdout.trim(), 'aarch64');
    });
    figures.push(`seed command line restore → SSH ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  });

  test('a rerun is all local', async () => {
    const r = await prepare();
    assert.deepEqual(Object.values(r.sources).filter((s) => s !== 'local'), []);
    assert.ok(r.ms < 10_000, `${r.ms} ms`);
  });
});
