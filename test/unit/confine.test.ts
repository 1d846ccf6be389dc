// What a tier restores is checked in its staging dir: exactly the planned plain files, a manifest
// whose names stay in the dir, every sha256, and qcow2 headers that name no host file.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { isPlainName, stagedFilesProblem } from '../../src/cache/confine.js';
import { backingProblem, stagedLayerProblem } from '../../src/layers/check.js';
import { describeFiles, loadManifest, readManifest, writeManifest, type Manifest } from '../../src/cache/manifest.js';
import { keyPairProblem } from '../../src/layers/sshkey.js';
import { generateKeyPair } from '../../src/vm/ssh.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'confine-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const dir = (n: string) => fs.mkdtempSync(path.join(tmp, `${n}-`));
const img = (...args: string[]) => execFileSync('qemu-img', ['create', '-q', ...args]);

describe('staged files', () => {
  test('plain names only', () => {
    for (const ok of ['debian-13-arm64.qcow2', 'x.manifest.json', 'test-ssh-key.pub']) assert.equal(isPlainName(ok), true, ok);
    for (const bad of ['', '.', '..', '../x', '/etc/passwd', 'a/b', 'a\0b', 'a\nb', 42, undefined]) assert.equal(isPlainName(bad), false, String(bad));
  });

  test('exactly the planned regular files, made 0644; anything else is named', () => {
    const d = dir('s');
    fs.writeFileSync(path.join(d, 'a'), 'a', { mode: 0o4755 });
    fs.writeFileSync(path.join(d, 'b'), 'b');
    assert.equal(stagedFilesProblem(d, ['a', 'b']), undefined);
    assert.equal(fs.statSync(path.join(d, 'a')).mode & 0o7777, 0o644, 'no setuid from an entry');
    assert.match(stagedFilesProblem(d, ['a', 'b', 'c'])!, /c is missing/);
    fs.mkdirSync(path.join(d, 'tmp'));
    assert.match(stagedFilesProblem(d, ['a', 'b'])!, /unexpected dir "tmp"/);
    fs.rmdirSync(path.join(d, 'tmp'));
    fs.rmSync(path.join(d, 'b'));
    fs.symlinkSync('/etc/hostname', path.join(d, 'b'));
    assert.match(stagedFilesProblem(d, ['a', 'b'])!, /b is a symlink/);
    fs.rmSync(path.join(d, 'b'));
    fs.linkSync(path.join(d, 'a'), path.join(d, 'b'));
    assert.match(stagedFilesProblem(d, ['a', 'b'])!, /is a hard link/);
  });

  test('a manifest naming files outside its dir is no manifest (so eviction can never leave the dir)', () => {
    const d = dir('m');
    const file = path.join(d, 'x.manifest.json');
    const base = { layer: 'prepared' as const, key: 'k', inputs: {}, buildSeconds: 0 };
    writeManifest(file, { ...base, files: [{ name: 'x.qcow2', size: 1, sha256: 'ab' }] });
    assert.ok(readManifest(file));
    for (const name of ['../../etc/passwd', '/etc/passwd', 'sub/x.qcow2', '..']) {
      writeManifest(file, { ...base, files: [{ name, size: 1, sha256: 'ab' }] });
      assert.equal(readManifest(file), undefined, name);
      assert.equal(loadManifest(file), `its manifest names ${JSON.stringify(name)}, not a plain file name in its dir`);
    }
    assert.equal(loadManifest(path.join(d, 'none.json')), 'no manifest');
  });
});

describe('staged layers', () => {
  const BOUND = { maxBytes: 64 << 20 };
  const plan = (files: string[], layer = 'prepared') => ({ layer, files, key: 'k1', inputs: { a: 1 } });
  async function staged(files: Record<string, (p: string) => void>, layer = 'prepared'): Promise<{ d: string; m: Manifest; p: ReturnType<typeof plan> }> {
    const d = dir('l');
    for (const [n, make] of Object.entries(files)) make(path.join(d, n));
    const names = Object.keys(files);
    const p = plan(names, layer);
    const m = writeManifest(path.join(d, 'x.manifest.json'), { layer: layer as Manifest['layer'], key: 'k1', inputs: { a: 1 }, buildSeconds: 0, files: await describeFiles(d, names) });
    return { d, m, p };
  }

  test('a clean qcow2 with its recorded digest passes; a changed byte does not', async () => {
    const { d, m, p } = await staged({ 'x.qcow2': (f) => img('-f', 'qcow2', f, '1M') });
    assert.equal(await stagedLayerProblem(d, p, m, undefined, BOUND), undefined);
    const fd = fs.openSync(path.join(d, 'x.qcow2'), 'r+');
    fs.writeSync(fd, Buffer.from([0xff]), 0, 1, fs.statSync(path.join(d, 'x.qcow2')).size - 1);
    fs.closeSync(fd);
    assert.match((await stagedLayerProblem(d, p, m, undefined, BOUND))!, /x\.qcow2 does not have the sha256 its manifest records/);
  });

  test('a qcow2 backed by a host file is refused, also as a snapshot disk once pointed at its parent', async () => {
    const { d, m, p } = await staged({ 'x.qcow2': (f) => img('-f', 'qcow2', '-b', '/etc/hostname', '-F', 'raw', f, '1M') });
    const parent = path.join(d, 'parent.qcow2');
    img('-f', 'qcow2', parent, '1M');
    assert.match((await stagedLayerProblem(d, p, m, undefined, BOUND))!, /x\.qcow2 is backed by \/etc\/hostname \(raw\), where it may have no backing file/);
    assert.match((await stagedLayerProblem(d, p, m, undefined, { ...BOUND, backing: parent }))!, /x\.qcow2 is backed by \/etc\/hostname \(raw\), not by its parent layer parent\.qcow2/);
    const saved = await staged({ 'x.qcow2': (f) => img('-f', 'qcow2', '-b', '/elsewhere/parent.qcow2', '-F', 'qcow2', '-u', f, '1M') });
    assert.equal(await stagedLayerProblem(saved.d, saved.p, saved.m, undefined, { ...BOUND, backing: parent }), undefined, 'the saver\'s own path to the same parent layer');
    assert.match((await backingProblem(path.join(d, 'x.qcow2'), parent))!, /is backed by \/etc\/hostname \(raw\), not /);
    execFileSync('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', parent, '-F', 'qcow2', path.join(d, 'x.qcow2')]);
    assert.equal(await backingProblem(path.join(d, 'x.qcow2'), parent), undefined);
  });

  test('a qcow2 keeping its data in a host file, or not a qcow2 at all, is refused', async () => {
    const ext = await staged({ 'x.qcow2': (f) => img('-f', 'qcow2', '-o', `data_file=${f}.data`, f, '1M') });
    fs.rmSync(path.join(ext.d, 'x.qcow2.data'));
    assert.match((await stagedLayerProblem(ext.d, ext.p, ext.m, undefined, BOUND))!, /keeps its data in another file/);
    const raw = await staged({ 'x.qcow2': (f) => fs.writeFileSync(f, Buffer.alloc(65536)) });
    assert.match((await stagedLayerProblem(raw.d, raw.p, raw.m, undefined, BOUND))!, /is raw, not qcow2/);
  });

  test('files that add up to more than the layer can hold are refused before a byte is read (a sparse file claims any size)', async () => {
    const { d, m } = await staged({ 'x.qcow2': (f) => img('-f', 'qcow2', f, '1M') });
    fs.writeFileSync(path.join(d, 'giant.img'), '');
    fs.truncateSync(path.join(d, 'giant.img'), 2 ** 40);
    const files = [...m.files, { name: 'giant.img', size: 2 ** 40, sha256: '0'.repeat(64) }];
    const t0 = Date.now();
    assert.equal(
      await stagedLayerProblem(d, plan(['x.qcow2', 'giant.img']), { ...m, files }, undefined, BOUND),
      `its files add up to ${2 ** 40 + m.files[0].size} bytes, more than a layer of this configuration holds (${64 << 20})`,
    );
    assert.ok(Date.now() - t0 < 1000, 'refused without reading 1 TiB');
    assert.equal(await stagedLayerProblem(d, plan(['x.qcow2']), m, undefined, { maxBytes: m.files[0].size }), undefined, 'a layer of exactly the bound passes');
  });

  test('a manifest naming other files than the plan is refused', async () => {
    const { d, m } = await staged({ 'x.qcow2': (f) => img('-f', 'qcow2', f, '1M') });
    assert.match((await stagedLayerProblem(d, plan(['y.qcow2']), m, undefined, BOUND))!, /its manifest names \["x\.qcow2"\], not \["y\.qcow2"\]/);
  });
});

describe('a restored SSH key entry', () => {
  test('only one valid ed25519 pair is taken', () => {
    const a = generateKeyPair();
    const b = generateKeyPair();
    assert.equal(keyPairProblem(a.privateKey, a.publicKey), undefined);
    assert.match(keyPairProblem(a.privateKey, b.publicKey)!, /does not match/);
    assert.match(keyPairProblem(a.publicKey, a.publicKey)!, /holds no private key/);
    assert.match(keyPairProblem('#!/bin/sh\nrm -rf ~\n', a.publicKey)!, /not an SSH key/);
    const rsa = execFileSync('sh', ['-c', `d=$(mktemp -d) && ssh-keygen -q -t rsa -b 1024 -N '' -f $d/k && cat $d/k && rm -r $d`], { encoding: 'utf8' });
    assert.match(keyPairProblem(rsa, a.publicKey)!, /not ssh-ed25519/);
  });
});
