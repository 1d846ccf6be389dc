// `ryra-vm run`'s pure parts and its workspace sync. The sync runs its real tar and find on both
// sides; the "guest" here is a directory on this host reached through a local shell instead of SSH
// (the end-to-end test runs the same code against a real guest).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { envFile, scriptEnv } from '../../src/run.js';
import { guestProxy, proxyFiles, runnerProxy } from '../../src/proxy.js';
import { diffStates, parseState, safeRelative, syncBack, syncIn, type Exec } from '../../src/sync.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'run-unit-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs a guest command in a local shell (sudo is a no-op: this process may lack it). */
const localExec: Exec = (command, o = {}) =>
  new Promise((resolve, reject) => {
    const c = spawn('bash', ['-c', `sudo() { "$@"; }; ${command}`], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    if (o.stdout) c.stdout.pipe(o.stdout, { end: false });
    else c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => {
      stderr += d;
      o.stderr?.write(d);
    });
    c.stdin.on('error', () => {});
    if (o.stdin) o.stdin.pipe(c.stdin);
    else c.stdin.end(o.input ?? '');
    c.on('error', reject);
    c.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });

function tree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of fs.readdirSync(root, { recursive: true, withFileTypes: true })) {
    const p = path.join(e.parentPath, e.name);
    const rel = path.relative(root, p);
    const st = fs.lstatSync(p);
    out[rel] = st.isSymbolicLink() ? `-> ${fs.readlinkSync(p)}` : st.isDirectory() ? `dir ${(st.mode & 0o777).toString(8)}` : `${(st.mode & 0o777).toString(8)} ${fs.readFileSync(p, 'utf8')}`;
  }
  return out;
}

describe('environment for the script', () => {
  test('CI, GITHUB_*, RUNNER_* and named variables pass; others do not', () => {
    const env = scriptEnv({ CI: 'true', GITHUB_SHA: 'abc', RUNNER_OS: 'Linux', HOME: '/root', SECRET: 'x', MINE: 'y' }, ['MINE']);
    assert.deepEqual(env, { CI: 'true', GITHUB_SHA: 'abc', RUNNER_OS: 'Linux', MINE: 'y' });
  });

  test('values with quotes, newlines and $ arrive intact through the env file', async () => {
    const value = `it's "quoted"\nsecond line $HOME \`x\` \\ end`;
    const file = path.join(tmp, 'env');
    fs.writeFileSync(file, envFile({ V: value, 'BAD-NAME': 'dropped' }));
    const r = await localExec(`set -a; . ${file}; set +a; printf %s "$V"`);
    assert.equal(r.stdout, value);
    assert.doesNotMatch(fs.readFileSync(file, 'utf8'), /BAD-NAME/);
  });
});

describe('proxies', () => {
  test('the runner\'s proxy, with loopback rewritten to the host address guests reach', () => {
    assert.equal(runnerProxy({}), undefined);
    const p = runnerProxy({ https_proxy: 'http://127.0.0.1:3128', no_proxy: 'localhost,.corp' })!;
    assert.deepEqual(guestProxy(p), { http: undefined, https: 'http://10.0.2.2:3128', no: 'localhost,.corp' });
    assert.equal(guestProxy({ http: 'proxy.corp:8080' }).http, 'http://proxy.corp:8080');
    const files = proxyFiles({ http: 'http://localhost:3128' }, 'apt');
    assert.match(files.find((f) => f.path === '/etc/environment')!.content, /^http_proxy=http:\/\/10\.0\.2\.2:3128\nHTTP_PROXY=/);
    assert.match(files.find((f) => f.path.startsWith('/etc/apt/'))!.content, /Acquire::http::Proxy "http:\/\/10\.0\.2\.2:3128";/);
  });
});

describe('workspace sync', () => {
  test('states and diffs: changed and new entries come back, deleted ones are named deepest first', () => {
    const rec = (items: [string, string][]) => Buffer.from(items.map(([s, p]) => `${s}\0${p}\0`).join(''), 'latin1');
    const before = parseState(rec([['f/3/1.0/1.0/644/', 'a'], ['d/0/1.0/1.0/755/', 'dir'], ['f/1/1.0/1.0/644/', 'dir/x'], ['f/1/1.0/1.0/644/', 'dir/y']]));
    const after = parseState(rec([['f/4/2.0/2.0/644/', 'a'], ['d/0/2.0/2.0/755/', 'dir'], ['f/1/1.0/1.0/644/', 'dir/x'], ['l/3/2.0/2.0/777/a', 'new']]));
    assert.deepEqual(diffStates(before, after), { changed: ['a', 'new'], deleted: ['dir/y'] });
    assert.ok(!safeRelative('../x') && !safeRelative('/etc') && !safeRelative('a//b') && safeRelative('a/b c'));
  });

  test('round trip: symlinks, modes, empty dirs, odd names; only changes come back; nothing followed out', async () => {
    const host = path.join(tmp, 'ws');
    const guest = path.join(tmp, 'guest-ws');
    const outside = path.join(tmp, 'outside');
    fs.mkdirSync(outside);
    fs.mkdirSync(path.join(host, 'sub', 'empty'), { recursive: true });
    fs.writeFileSync(path.join(host, 'plain.txt'), 'plain');
    fs.writeFileSync(path.join(host, 'run.sh'), '#!/bin/sh\n', { mode: 0o755 });
    fs.writeFileSync(path.join(host, 'name with spaces & ünïcødé.txt'), 'odd');
    fs.writeFileSync(path.join(host, 'sub', 'keep.txt'), 'keep');
    fs.writeFileSync(path.join(host, 'sub', 'gone.txt'), 'gone');
    fs.symlinkSync('plain.txt', path.join(host, 'link'));
    fs.symlinkSync(outside, path.join(host, 'out'));
    fs.writeFileSync(path.join(outside, 'secret'), 'not for the guest');
    const o = { hostDir: host, guestDir: guest };

    const before = await syncIn(localExec, o);
    assert.deepEqual(tree(guest), tree(host), 'the guest sees the workspace as it is');
    assert.equal(fs.readlinkSync(path.join(guest, 'out')), outside, 'a symlink out of the workspace travels as a link, its target is not read');

    // The "script": edits, a new file and link, a deletion, a chmod, and a file put where a
    // symlink to outside was (the host must not write through its own symlink).
    fs.writeFileSync(path.join(guest, 'plain.txt'), 'edited');
    fs.writeFileSync(path.join(guest, 'sub', 'new.txt'), 'new');
    fs.symlinkSync('sub/new.txt', path.join(guest, 'newlink'));
    fs.rmSync(path.join(guest, 'sub', 'gone.txt'));
    fs.chmodSync(path.join(guest, 'sub', 'keep.txt'), 0o600);
    fs.rmSync(path.join(guest, 'out'));
    fs.mkdirSync(path.join(guest, 'out'));
    fs.writeFileSync(path.join(guest, 'out', 'secret'), 'overwritten?');
    // Meanwhile the host gained a file the script never saw: it stays.
    fs.writeFileSync(path.join(host, 'host-only.txt'), 'mine');

    const r = await syncBack(localExec, o, before);
    assert.equal(r.deleted, 1);
    assert.equal(fs.readFileSync(path.join(outside, 'secret'), 'utf8'), 'not for the guest', 'nothing written through the host symlink');
    assert.equal(fs.readFileSync(path.join(host, 'out', 'secret'), 'utf8'), 'overwritten?');
    assert.equal(fs.readFileSync(path.join(host, 'host-only.txt'), 'utf8'), 'mine');
    const expected = tree(guest);
    expected['host-only.txt'] = '644 mine';
    assert.deepEqual(tree(host), expected);
    assert.equal(fs.readdirSync(host).some((n) => n.startsWith('.ryra-sync-')), false, 'no staging dir left');
  });
});
