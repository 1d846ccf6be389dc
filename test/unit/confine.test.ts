// What a tier restores is checked in its staging dir: exactly the planned plain files, a manifest
// whose names stay in the dir, every sha256, and qcow2 headers that name no host file.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { isPlainName, stagedFilesProblem } from '../../src/cache/confine.js';
import { loadManifest, readManifest, writeManifest } from '../../src/cache/manifest.js';
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
    const base = { layer: 'prepared' as const, key: 'ab', inputs: {}, buildSeconds: 0 };
    writeManifest(file, { ...base, files: [{ name: 'x.qcow2', size: 1, sha256: 'a'.repeat(64) }] });
    assert.ok(readManifest(file));
    for (const name of ['../../etc/passwd', '/etc/passwd', 'sub/x.qcow2', '..']) {
      writeManifest(file, { ...base, files: [{ name, size: 1, sha256: 'a'.repeat(64) }] });
      assert.equal(readManifest(file), undefined, name);
      assert.equal(loadManifest(file), `its manifest names ${JSON.stringify(name)}, not a plain file name in its dir`);
    }
    assert.equal(loadManifest(path.join(d, 'none.json')), 'no manifest');
    fs.symlinkSync(file, path.join(d, 'link.json'));
    assert.equal(loadManifest(path.join(d, 'link.json')), 'its manifest is a symlink');
    fs.writeFileSync(file, JSON.stringify({ ...base, version: 1, id: 'x', createdAt: 'now', files: [], layout: 'not a layout' }));
    assert.equal(loadManifest(file), "its manifest's layout is not of the form a manifest has");
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
