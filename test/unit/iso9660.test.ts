import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { buildIso, type IsoFile } from '../../src/vm/iso9660.js';

const SECTOR = 2048;
const FIXED_DATE = new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 670));

function hasTool(cmd: string, args: string[]): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return !r.error;
}
const noIsoinfo = hasTool('isoinfo', ['-version']) ? false : 'isoinfo (genisoimage) not installed';
const noBlkid = hasTool('blkid', ['-V']) ? false : 'blkid not installed';

function pattern(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed) % 251;
  return b;
}

const userData = '#cloud-config\nhostname: ryra\n';
const metaData = 'instance-id: iid-local01\nlocal-hostname: ryra\n';
const bigFile = pattern(5000, 7); // spans three sectors
const exactSector = pattern(SECTOR, 3);
const seedFiles: IsoFile[] = [
  { name: 'user-data', data: userData },
  { name: 'meta-data', data: Buffer.from(metaData) },
  { name: 'network-config', data: '' },
  { name: 'vendor-data.bin', data: bigFile },
  { name: 'one-sector', data: exactSector },
];

let dir: string;
let isoPath: string;
let image: Buffer;

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iso9660-test-'));
  image = buildIso('cidata', seedFiles, FIXED_DATE);
  isoPath = path.join(dir, 'seed.iso');
  fs.writeFileSync(isoPath, image);
});

after(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function isoinfo(args: string[], iso = isoPath): Buffer {
  return execFileSync('isoinfo', [...args, '-i', iso], { maxBuffer: 64 * 1024 * 1024 });
}

/** Parses `isoinfo -l` output into name -> size for regular files. */
function listing(args: string[], iso = isoPath): Map<string, number> {
  const out = isoinfo([...args, '-l'], iso).toString('utf8');
  const files = new Map<string, number>();
  for (const line of out.split('\n')) {
    const m = /^-\S+\s+\d+\s+\d+\s+\d+\s+(\d+)\s+.*\]\s+(.+?)\s*$/.exec(line);
    if (m) files.set(m[2], Number(m[1]));
  }
  return files;
}

describe('buildIso image structure', () => {
  it('is sector aligned with a zeroed system area and standard descriptors', () => {
    assert.equal(image.length % SECTOR, 0);
    assert.ok(image.subarray(0, 16 * SECTOR).every((b) => b === 0));
    const pvd = image.subarray(16 * SECTOR, 17 * SECTOR);
    const svd = image.subarray(17 * SECTOR, 18 * SECTOR);
    const term = image.subarray(18 * SECTOR, 19 * SECTOR);
    assert.equal(pvd[0], 1);
    assert.equal(svd[0], 2);
    assert.equal(term[0], 255);
    for (const vd of [pvd, svd, term]) {
      assert.equal(vd.toString('ascii', 1, 6), 'CD001');
      assert.equal(vd[6], 1);
    }
    assert.equal(svd.toString('ascii', 88, 91), '%/E');
    assert.equal(pvd.toString('ascii', 40, 72), 'cidata'.padEnd(32, ' '));
    assert.equal(Buffer.from(svd.subarray(40, 72)).swap16().toString('utf16le'), 'cidata'.padEnd(16, ' '));
    for (const vd of [pvd, svd]) {
      // both-endian volume space size, logical block size and path table size agree
      assert.equal(vd.readUInt32LE(80), image.length / SECTOR);
      assert.equal(vd.readUInt32BE(84), image.length / SECTOR);
      assert.equal(vd.readUInt16LE(128), SECTOR);
      assert.equal(vd.readUInt16BE(130), SECTOR);
      assert.equal(vd.readUInt32LE(132), vd.readUInt32BE(136));
      // L and M path tables describe the same root extent
      const l = vd.readUInt32LE(140) * SECTOR;
      const m = vd.readUInt32BE(148) * SECTOR;
      assert.equal(image.readUInt32LE(l + 2), image.readUInt32BE(m + 2));
      assert.equal(image.readUInt32LE(l + 2), vd.readUInt32LE(156 + 2));
      assert.equal(vd.toString('ascii', 813, 829), '2024010203040567');
    }
  });

  it('is deterministic for a fixed date', () => {
    assert.deepEqual(buildIso('cidata', seedFiles, FIXED_DATE), image);
  });

  it('builds an image with no files', () => {
    const empty = buildIso('EMPTY', [], FIXED_DATE);
    assert.equal(empty.length % SECTOR, 0);
  });
});

describe('buildIso read back with isoinfo', { skip: noIsoinfo }, () => {
  it('reports the volume id and Joliet', () => {
    const out = isoinfo(['-d']).toString('utf8');
    assert.match(out, /^Volume id: cidata$/m);
    assert.match(out, /Joliet with UCS level 3 found/);
    assert.match(out, /^Logical block size is: 2048$/m);
    assert.match(out, new RegExp(`^Volume size is: ${image.length / SECTOR}$`, 'm'));
  });

  it('lists exact lowercase Joliet names and sizes', () => {
    const files = listing(['-J']);
    assert.deepEqual(
      Object.fromEntries(files),
      Object.fromEntries(
        seedFiles.map((f) => [f.name, typeof f.data === 'string' ? Buffer.byteLength(f.data) : f.data.length]),
      ),
    );
  });

  it('lists uppercase 8.3 primary names', () => {
    const files = listing([]);
    assert.deepEqual(
      [...files.keys()].sort(),
      ['META_DAT.;1', 'NETWORK_.;1', 'ONE_SECT.;1', 'USER_DAT.;1', 'VENDOR_D.BIN;1'],
    );
    assert.equal(files.get('USER_DAT.;1'), Buffer.byteLength(userData));
  });

  it('extracts exact contents, including multi-sector and empty files', () => {
    assert.equal(isoinfo(['-J', '-x', '/user-data']).toString('utf8'), userData);
    assert.equal(isoinfo(['-J', '-x', '/meta-data']).toString('utf8'), metaData);
    assert.equal(isoinfo(['-J', '-x', '/network-config']).length, 0);
    assert.deepEqual(isoinfo(['-J', '-x', '/vendor-data.bin']), bigFile);
    assert.deepEqual(isoinfo(['-J', '-x', '/one-sector']), exactSector);
    // the primary tree points at the same data
    assert.equal(isoinfo(['-x', '/USER_DAT.;1']).toString('utf8'), userData);
  });

  it('handles a root directory spanning several sectors and colliding 8.3 names', () => {
    const many: IsoFile[] = [];
    for (let i = 0; i < 40; i++) {
      const name = `${String(i).padStart(2, '0')}-${'x'.repeat(61)}`; // 64 characters
      many.push({ name, data: `file ${i}\n` });
    }
    many.push({ name: 'user-data', data: 'a' }, { name: 'user-dataX', data: 'b' }, { name: 'user-dataY', data: 'c' });
    const iso = path.join(dir, 'many.iso');
    fs.writeFileSync(iso, buildIso('MANY', many, FIXED_DATE));
    const joliet = listing(['-J'], iso);
    assert.equal(joliet.size, many.length);
    for (const f of many) assert.ok(joliet.has(f.name), `missing ${f.name}`);
    const primary = listing([], iso);
    assert.equal(primary.size, many.length, 'primary 8.3 names must be unique');
    assert.equal(isoinfo(['-J', '-x', `/${many[39].name}`], iso).toString('utf8'), 'file 39\n');
    assert.equal(isoinfo(['-J', '-x', '/user-dataY'], iso).toString('utf8'), 'c');
  });
});

describe('buildIso read back with blkid', { skip: noBlkid }, () => {
  it('reports LABEL=cidata and TYPE=iso9660', () => {
    const label = execFileSync('blkid', ['-p', '-o', 'value', '-s', 'LABEL', isoPath]).toString('utf8').trim();
    assert.equal(label, 'cidata');
    const type = execFileSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', isoPath]).toString('utf8').trim();
    assert.equal(type, 'iso9660');
  });
});

describe('buildIso validation', () => {
  const ok = { name: 'user-data', data: '' };
  it('rejects duplicate names', () => {
    assert.throws(() => buildIso('cidata', [ok, { name: 'user-data', data: 'x' }]), /duplicate file name "user-data"/);
  });
  it('rejects names longer than 64 characters', () => {
    assert.doesNotThrow(() => buildIso('cidata', [{ name: 'a'.repeat(64), data: '' }]));
    assert.throws(() => buildIso('cidata', [{ name: 'a'.repeat(65), data: '' }]), /longer than 64 characters/);
  });
  it('rejects slashes', () => {
    assert.throws(() => buildIso('cidata', [{ name: 'dir/user-data', data: '' }]), /must not contain slashes/);
    assert.throws(() => buildIso('cidata', [{ name: 'dir\\user-data', data: '' }]), /must not contain slashes/);
  });
  it('rejects empty, reserved and Joliet-forbidden names', () => {
    assert.throws(() => buildIso('cidata', [{ name: '', data: '' }]), /non-empty string/);
    assert.throws(() => buildIso('cidata', [{ name: '..', data: '' }]), /reserved/);
    assert.throws(() => buildIso('cidata', [{ name: 'a;1', data: '' }]), /not allowed/);
    assert.throws(() => buildIso('cidata', [{ name: 'a\nb', data: '' }]), /not allowed/);
  });
  it('rejects bad volume ids and dates', () => {
    assert.throws(() => buildIso('', [ok]), /volume id must be a non-empty string/);
    assert.throws(() => buildIso('x'.repeat(33), [ok]), /longer than 32 characters/);
    assert.throws(() => buildIso('cïdata', [ok]), /printable ASCII/);
    assert.throws(() => buildIso('cidata', [ok], new Date(NaN)), /valid Date/);
  });
});
