// An Actions cache entry is unpacked by name: tar gets exactly the layer's planned file names, so
// whatever else the archive holds (directories, links, devices, extra members, an inode bomb of
// empty directories) is never made. Entries are written the way an attacker would (tar headers
// built here, any type and name), seeded into the project's cache service, and restored through
// the real tier and its worker (curl | zstd -d | tar -x).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { actionsCache, type ActionsCache } from '../../src/cache/actions.js';
import { stagedFilesProblem } from '../../src/cache/confine.js';
import { entryVersion } from '../../src/cache/stream.js';
import { startCacheServer, type CacheServer } from '../support/cache-server.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'actions-unpack-'));
let server: CacheServer;
let tier: ActionsCache;
const saved = { ...process.env };
const names = ['x.qcow2', 'x.manifest.json'];
const BOUND = { maxBytes: 1 << 30 };

before(async () => {
  server = await startCacheServer({ dir: tmp });
  process.env.RUNNER_TEMP = path.join(tmp, 'runner');
  fs.mkdirSync(process.env.RUNNER_TEMP);
  delete process.env.GITHUB_SERVER_URL;
  Object.assign(process.env, server.env('v2'));
  tier = actionsCache({ lookupMs: 20_000, transferMs: 60_000 });
});
after(async () => {
  tier?.close();
  await server.close();
  process.env = saved;
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** One tar member as an attacker writes it: any name, any type ('0' file, '1' hard link, '2' symlink, '3' char, '5' dir, '6' FIFO). */
interface Member {
  name: string;
  type?: '0' | '1' | '2' | '3' | '5' | '6';
  data?: string;
  link?: string;
}

/** A ustar header; the checksum is the byte sum with its own field as spaces. */
function header(m: Member): Buffer {
  const h = Buffer.alloc(512);
  const put = (off: number, len: number, v: string) => h.write(v, off, len, 'utf8');
  const oct = (off: number, len: number, n: number) => put(off, len, `${n.toString(8).padStart(len - 1, '0')}\0`);
  put(0, 100, m.name);
  oct(100, 8, m.type === '5' ? 0o755 : 0o644);
  oct(108, 8, 0);
  oct(116, 8, 0);
  oct(124, 12, Buffer.byteLength(m.data ?? ''));
  oct(136, 12, 1_700_000_000);
  put(148, 8, '        ');
  put(156, 1, m.type ?? '0');
  put(157, 100, m.link ?? '');
  put(257, 6, 'ustar\0');
  put(263, 2, '00');
  oct(329, 8, m.type === '3' ? 1 : 0);
  oct(337, 8, m.type === '3' ? 3 : 0);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += h[i]!;
  put(148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return h;
}

/** The members as a tar (padded to whole 10 KiB records), compressed with zstd as the tier expects. */
function entry(members: Member[], padding?: { dirs: number; under?: string }): Buffer {
  const parts: Buffer[] = [];
  if (padding?.under) parts.push(header({ name: `${padding.under}/`, type: '5' }));
  for (const m of members) {
    parts.push(header(m));
    const data = Buffer.from(m.data ?? '');
    if (data.length) parts.push(data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  // One buffer for the whole tar (a 100 MB concat costs seconds on a busy machine): the padding,
  // then the members, then the end-of-archive blocks and the record's zeros.
  const padBytes = (padding?.dirs ?? 0) * 512;
  const used = padBytes + parts.reduce((n, b) => n + b.length, 0) + 1024;
  const tar = Buffer.alloc(used + ((10240 - (used % 10240)) % 10240));
  if (padding) {
    // Empty directory members before the planned files: 512 bytes each in the archive, an inode each
    // if made. One header copied and renamed: its checksum grows by each digit's value over '0'.
    const prefix = `${padding.under ? `${padding.under}/` : ''}d`;
    const tpl = header({ name: `${prefix}000000/`, type: '5' });
    const base = parseInt(tpl.toString('latin1', 148, 154), 8);
    for (let i = 0; i < padding.dirs; i++) {
      const digits = String(i).padStart(6, '0');
      let sum = base;
      for (const c of digits) sum += c.charCodeAt(0) - 48;
      tpl.copy(tar, i * 512);
      tar.write(digits, i * 512 + prefix.length, 'latin1');
      tar.write(sum.toString(8).padStart(6, '0'), i * 512 + 148, 'latin1');
    }
  }
  // The dir of the planned name (when the padding is under one) goes first.
  let at = padBytes;
  if (padding?.under) {
    tar.copyWithin(512, 0, padBytes);
    parts.shift()!.copy(tar, 0);
    at += 512;
  }
  for (const b of parts) at += b.copy(tar, at);
  const r = spawnSync('zstd', ['-q', '-c', '-1'], { input: tar, maxBuffer: 1 << 30 });
  assert.equal(r.status, 0, String(r.stderr));
  return r.stdout;
}

let seq = 0;
/** Seeds `data` under a fresh key and restores it into a fresh staging dir. */
async function restore(data: Buffer, opts: { during?: () => void } = {}): Promise<{ got: string; dst: string }> {
  const key = `ryra-vm-v1-unpack-${++seq}`;
  await server.seed({ key, version: entryVersion(names), data });
  const dst = fs.mkdtempSync(path.join(tmp, 'dst-'));
  const timer = opts.during ? setInterval(opts.during, 2) : undefined;
  try {
    return { got: await tier.restore(key, names, dst, BOUND), dst };
  } finally {
    clearInterval(timer);
  }
}

const file = (name: string, data = 'data'): Member => ({ name, data });
const manifest = file('x.manifest.json', '{}');

describe('an Actions cache entry unpacks only the planned names', () => {
  const outside = fs.mkdtempSync(path.join(tmp, 'outside-'));
  const secret = path.join(outside, 'secret');
  fs.writeFileSync(secret, 'secret\n');
  // From any staging dir, enough `../` to reach `/`, then the outside file.
  const upToRoot = `${'../'.repeat(30)}${secret.slice(1)}`;

  /** [what, members, what the restore gives: 'refused' with why, or 'restored' and what the caller's check says]. */
  const cases: [string, Member[], RegExp][] = [
    ['the planned files and nothing else', [file('x.qcow2'), manifest], /^restored: ok$/],
    ['extra members (absolute, `..`, a dir, a file, a link) beside the planned ones: never made', [file(`${outside}/abs`), file('../escaped'), { name: 'dir/', type: '5' }, file('dir/f'), file('other'), { name: 'lnk', type: '2', link: outside }, file('x.qcow2'), manifest], /^restored: ok$/],
    ['a planned name missing: refused, naming it', [file('x.qcow2')], /^refused: it lacks x\.manifest\.json \(of the files x\.qcow2, x\.manifest\.json\)$/],
    ['the planned names under `./`: refused as missing', [file('./x.qcow2'), file('./x.manifest.json')], /^refused: it lacks x\.qcow2, x\.manifest\.json/],
    ['a planned name under an absolute or `..` name only: refused as missing', [file('/x.qcow2'), file('../x.manifest.json')], /^refused: it lacks x\.qcow2, x\.manifest\.json/],
    ['a planned name twice: refused', [file('x.qcow2', 'one'), manifest, file('x.qcow2', 'two')], /^refused: it holds more than the 2 members named as the layer's files .*: a name twice$/],
    ['a hard link to an absolute outside file: refused, no link made', [manifest, { name: 'x.qcow2', type: '1', link: secret }], /^refused: tar refused it: .*(Removing leading|Cannot hard link)/],
    ['a hard link up through `..` to an outside file: refused, no link made', [manifest, { name: 'x.qcow2', type: '1', link: upToRoot }], /^refused: tar refused it: .*(Removing leading|Cannot hard link)/],
    ['a hard link to a member that was skipped: refused', [file('other'), manifest, { name: 'x.qcow2', type: '1', link: 'other' }], /^refused: tar refused it: .*Cannot hard link to/],
    ['a hard link to the other planned file: made inside, then refused by the check', [manifest, { name: 'x.qcow2', type: '1', link: 'x.manifest.json' }], /^restored: x\.qcow2 is a hard link$|^restored: x\.manifest\.json is a hard link$/],
    ['a hard link through a symlink to an outside dir: refused, no link made', [{ name: 'x.manifest.json', type: '2', link: outside }, { name: 'x.qcow2', type: '1', link: 'x.manifest.json/secret' }], /^refused: tar refused it: .*Cannot hard link/],
    ['a hard link to a symlink that points out: symlinks inside, refused by the check', [{ name: 'x.manifest.json', type: '2', link: secret }, { name: 'x.qcow2', type: '1', link: 'x.manifest.json' }], /^restored: x\.qcow2 is a symlink$/],
    ['a symlink to an outside dir, then a member under it: nothing written through it', [manifest, { name: 'x.qcow2', type: '2', link: outside }, file('x.qcow2/pwn')], /^restored: x\.qcow2 is a symlink$/],
    ['a symlink to an outside file, then a write to it: refused', [manifest, { name: 'x.qcow2', type: '2', link: `${outside}/new` }, file('x.qcow2', 'through')], /^refused: it holds more than the 2 members/],
    ['a planned name as a directory with members under it: only the empty dir, refused by the check', [manifest, { name: 'x.qcow2/', type: '5' }, file('x.qcow2/inner'), { name: 'x.qcow2/sub/', type: '5' }], /^restored: x\.qcow2 is not a regular file$/],
    ['a planned name as a FIFO: refused by the check', [manifest, { name: 'x.qcow2', type: '6' }], /^restored: x\.qcow2 is not a regular file$/],
    // As root tar makes the device node (in the staging dir); as another user mknod fails.
    ['a planned name as a character device: refused', [manifest, { name: 'x.qcow2', type: '3' }], /^restored: x\.qcow2 is not a regular file$|^refused: tar refused it/],
  ];
  for (const [what, members, want] of cases) {
    test(what, async () => {
      const { got, dst } = await restore(entry(members));
      const said = got === 'restored' ? `restored: ${stagedFilesProblem(dst, names) ?? 'ok'}` : got;
      assert.match(said, want);
      // Nothing beside the planned names in the staging dir, nothing new outside it, no link to the secret.
      const made = fs.readdirSync(dst);
      assert.deepEqual(made.filter((n) => !names.includes(n)), [], `made: ${made.join(', ')}`);
      if (made.includes('x.qcow2') && fs.lstatSync(path.join(dst, 'x.qcow2')).isDirectory()) assert.deepEqual(fs.readdirSync(path.join(dst, 'x.qcow2')), []);
      assert.deepEqual(fs.readdirSync(outside), ['secret']);
      assert.equal(fs.statSync(secret).nlink, 1, 'no hard link to the outside file');
      assert.equal(fs.readFileSync(secret, 'utf8'), 'secret\n');
      assert.deepEqual(fs.readdirSync(tmp).filter((n) => ['escaped', 'abs', 'other', 'dir'].includes(n)), []);
      if (said === 'restored: ok') assert.equal(fs.readFileSync(path.join(dst, 'x.qcow2'), 'utf8'), 'data');
    });
  }

  for (const under of [undefined, 'x.qcow2']) {
    test(`an entry padded with 200,000 empty directories${under ? ' under a planned name' : ''}: none made, free inodes drop by < 50,000 at the peak`, async (t) => {
      const b0 = Date.now();
      const data = entry([file('x.qcow2'), manifest], { dirs: 200_000, under });
      t.diagnostic(`the entry built in ${Date.now() - b0} ms`);
      const probe = fs.mkdtempSync(path.join(tmp, 'probe-'));
      const free = () => fs.statfsSync(probe).ffree;
      const start = free();
      assert.ok(start > 0, 'the staging filesystem counts inodes');
      let low = start;
      const t0 = Date.now();
      const { got, dst } = await restore(data, { during: () => (low = Math.min(low, free())) });
      low = Math.min(low, free());
      const drop = start - low;
      t.diagnostic(`${data.length} B compressed, ${200_000 * 512} B of directory headers: ${got} in ${Date.now() - t0} ms; free inodes dropped by ${drop} at the peak`);
      assert.ok(drop < 50_000, `free inodes dropped by ${drop}`);
      const said = got === 'restored' ? `restored: ${stagedFilesProblem(dst, names) ?? 'ok'}` : got;
      // Without a dir of the planned name the files unpack; with it, the files hold a dir (empty) and a name twice.
      assert.match(said, under ? /^refused: it holds more than the 2 members|^restored: x\.qcow2 is not a regular file$/ : /^restored: ok$/);
      assert.deepEqual(fs.readdirSync(dst).filter((n) => !names.includes(n)), []);
      if (fs.existsSync(path.join(dst, 'x.qcow2')) && fs.lstatSync(path.join(dst, 'x.qcow2')).isDirectory()) assert.deepEqual(fs.readdirSync(path.join(dst, 'x.qcow2')), []);
    });
  }
});
