// `ryra-vm run`'s pure parts and its workspace sync. The sync runs its real tar and find on both
// sides; the "guest" here is a directory on this host reached through a local shell instead of SSH
// (the end-to-end test runs the same code against a real guest).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { CANCEL_BOUND_MS, envFile, scriptEnv, startDir, stopGroup } from '../../src/run.js';
import { guestProxy, proxyFiles, runnerProxy } from '../../src/proxy.js';
import { diffStates, parseState, parseTarIndex, planSyncBack, resolveInside, safeRelative, syncBack, syncIn, type Exec } from '../../src/sync.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'run-unit-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/**
 * Runs a guest command in a local shell (sudo is a no-op: this process may lack it). `prelude`
 * turns the "guest" hostile: shell functions that stand in for its tools.
 */
const guestExec = (prelude = ''): Exec => (command, o = {}) =>
  new Promise((resolve, reject) => {
    const c = spawn('bash', ['-c', `sudo() { "$@"; }; ${prelude}\n${command}`], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    o.signal?.addEventListener('abort', () => {
      process.kill(-c.pid!, 'SIGKILL'); // with what it started, as closing the SSH channel ends them
      reject(o.signal!.reason);
    });
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
const localExec = guestExec();

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

  test('GITHUB_TOKEN and other *_TOKEN names pass only when named', () => {
    const host = { GITHUB_TOKEN: 'ghs_x', GITHUB_SHA: 'abc', RUNNER_TOKEN: 'r', ACTIONS_RUNTIME_TOKEN: 'a', NPM_TOKEN: 'n', GITHUB_TOKEN_URL: 'u', TOKEN: 't' };
    assert.deepEqual(scriptEnv(host, []), { GITHUB_SHA: 'abc', GITHUB_TOKEN_URL: 'u' });
    assert.deepEqual(scriptEnv(host, ['GITHUB_TOKEN', 'NPM_TOKEN']), { GITHUB_TOKEN: 'ghs_x', GITHUB_SHA: 'abc', NPM_TOKEN: 'n', GITHUB_TOKEN_URL: 'u' });
  });

  test('the script starts in the step\'s working directory when it lies inside the workspace', () => {
    const same = (p: string) => p;
    assert.equal(startDir('/w/repo', '/w/repo/sub/deeper', same), '/w/repo/sub/deeper');
    assert.equal(startDir('/w/repo', '/w/repo', same), '/w/repo');
    assert.equal(startDir('/w/repo', '/w/repo-other', same), '/w/repo', 'a sibling is outside');
    assert.equal(startDir('/w/repo', '/tmp', same), '/w/repo');
    assert.equal(startDir('/w/repo', '/w/repo/..dots', same), '/w/repo/..dots');
    // The workspace named through a symlink: the guest path keeps the workspace's own spelling.
    const real = (p: string) => p.replace(/^\/link/, '/w/repo');
    assert.equal(startDir('/link', '/w/repo/sub', real), '/link/sub');
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

describe('a cancelled step', () => {
  test('stops the script\'s whole process group: its command, a background job, and one that ignores TERM', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cancel-'));
    fs.writeFileSync(path.join(dir, 'script'), `sleep 601 &\nsh -c 'trap "" TERM; sleep 602; sleep 603' &\nsleep 600\n`);
    // As sshd starts a command: in a session and process group of its own, led by the login shell.
    const c = spawn('setsid', ['bash', '-c', `echo $$ > ${dir}/pgid; bash -e ${dir}/script`], { stdio: 'ignore' });
    const closed = new Promise((r) => c.once('close', r));
    // Live members of a group (a killed orphan may stay a zombie until something reaps it).
    const members = (pg: number) => {
      const r = spawn('ps', ['-o', 'stat=,args=', '-g', String(pg)]);
      return new Promise<string[]>((resolve) => {
        let out = '';
        r.stdout.on('data', (d) => (out += d));
        r.on('close', () => resolve(out.split('\n').filter((l) => l.trim() && !l.trim().startsWith('Z'))));
      });
    };
    try {
      let pg = 0;
      for (let i = 0; i < 100 && (!pg || (await members(pg)).filter((l) => /^\S+\s+sleep 60\d$/.test(l.trim())).length < 3); i++) {
        await new Promise((r) => setTimeout(r, 50));
        pg = Number(fs.readFileSync(path.join(dir, 'pgid'), { encoding: 'utf8', flag: 'a+' }).trim() || 0);
      }
      assert.equal(pg, c.pid, 'the login shell leads the group');
      assert.equal((await members(pg)).filter((l) => /^\S+\s+sleep 60\d$/.test(l.trim())).length, 3, 'the script runs');
      const t0 = Date.now();
      const stop = spawn('bash', ['-c', stopGroup(dir)], { stdio: 'ignore' });
      assert.equal(await new Promise((r) => stop.once('close', r)), 0);
      const secs = (Date.now() - t0) / 1000;
      assert.deepEqual(await members(pg), [], 'nothing of the group is left');
      assert.ok(secs < CANCEL_BOUND_MS / 1000, `the TERM-ignoring child got KILL after its grace, within the cancel's bound (${secs} s)`);
      await closed;
    } finally {
      c.kill('SIGKILL');
    }
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
    assert.deepEqual([...before.sent].sort(), Object.keys(tree(host)).map((n) => Buffer.from(n).toString('latin1')).sort(), 'the host knows what it sent, odd names too (as bytes)');
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

  test('listings are parsed strictly: a forged find is an error, not a guess', () => {
    const rec = (items: string[]) => Buffer.from(items.map((x) => `${x}\0`).join(''), 'latin1');
    assert.equal(parseState(rec(['f/3/1.0/1.0/644/', 'a'])).get('a')?.size, 3);
    for (const bad of [['f/3/1.0/1.0/644/', '../a'], ['f/3/1.0/1.0/644/', '/etc/passwd'], ['oops', 'a'], ['f/3/1.0/1.0/644/'], ['f/1/1/1/644/', 'a', 'f/1/1/1/644/', 'a']]) {
      assert.throws(() => parseState(rec(bad), 'ws'), /listing of ws is malformed/, JSON.stringify(bad));
    }
    assert.throws(() => parseState(Buffer.from('f/3/1.0/1.0/644/\0a')), /malformed/, 'unterminated');
  });

  test('the budget: files in path order while they fit, specials never', () => {
    const after = parseState(Buffer.from(['f/100/1/1/644/\0a\0', 'f/5000000/1/1/644/\0b\0', 'p/0/1/1/644/\0c\0', 'f/10/1/1/644/\0d\0', 'd/4096/1/1/755/\0e\0'].join(''), 'latin1'));
    const plan = planSyncBack(['a', 'b', 'c', 'd', 'e'], after, 1 << 20);
    assert.deepEqual(plan, { wanted: ['a', 'd', 'e'], bytes: 3 * 4096 + 110, special: ['c'], overBudget: ['b'] });
  });

  test('symlink targets are followed through the links in the workspace', () => {
    const root = path.join(tmp, 'links');
    fs.mkdirSync(path.join(root, 'pkg', 'bin'), { recursive: true });
    fs.symlinkSync('pkg', path.join(root, 'alias'));
    fs.symlinkSync('..', path.join(root, 'up'));
    fs.symlinkSync('/etc', path.join(root, 'etc'));
    const inside = (dir: string, t: string) => resolveInside(root, dir ? dir.split('/') : [], t)?.join('/');
    assert.equal(inside('node_modules/.bin', '../../alias/bin/x'), 'pkg/bin/x');
    assert.equal(inside('', `${root}/pkg`), 'pkg', 'an absolute target inside');
    assert.equal(inside('a/b', 'missing/c'), 'a/b/missing/c', 'a dangling target is taken by its letter');
    assert.equal(inside('', 'up/x'), undefined, 'through a link to ..');
    assert.equal(inside('', 'etc/passwd'), undefined, 'through a link to /etc');
    assert.equal(inside('', 'alias/../../x'), undefined);
    assert.equal(inside('', '/etc/passwd'), undefined);
    assert.equal(inside('', `${root}-other/x`), undefined, 'a sibling dir sharing the prefix');
    fs.symlinkSync('loop', path.join(root, 'loop'));
    assert.equal(inside('', 'loop'), undefined, 'a loop');
  });

  test('a hostile guest: only files, dirs and inside symlinks come back, without setuid; specials, escapes and a sparse giant stay out', async () => {
    const host = path.join(tmp, 'h-ws');
    const guest = path.join(tmp, 'h-guest');
    const secret = path.join(tmp, 'h-secret');
    fs.writeFileSync(secret, 'host secret');
    fs.mkdirSync(path.join(host, 'lib'), { recursive: true });
    fs.writeFileSync(path.join(host, 'lib', 'libx.so'), 'lib');
    fs.symlinkSync(path.dirname(secret), path.join(host, 'hostlink'));
    const o = { hostDir: host, guestDir: guest, maxBytes: 64 * 2 ** 20 };
    const before = await syncIn(localExec, o);

    const g = (p: string) => path.join(guest, p);
    fs.writeFileSync(g('normal.txt'), 'normal');
    fs.mkdirSync(g('node_modules/pkg/bin'), { recursive: true });
    fs.mkdirSync(g('node_modules/.bin'));
    fs.writeFileSync(g('node_modules/pkg/bin/tool'), '#!/bin/sh\n', { mode: 0o755 });
    fs.symlinkSync('../pkg/bin/tool', g('node_modules/.bin/tool'));
    fs.symlinkSync('lib', g('lib64'));
    fs.symlinkSync(path.join(host, 'normal.txt'), g('abs-inside')); // the guest has the workspace at the host's path
    fs.symlinkSync(secret, g('leak'));
    fs.symlinkSync('/', g('root'));
    fs.symlinkSync('../../..', g('up'));
    fs.symlinkSync('hostlink/h-secret', g('via-host-link'));
    fs.symlinkSync('..', g('hop'));
    // Each inside on its own letter; together out: chain is judged before d1/d2/L exists.
    fs.mkdirSync(g('d1/d2'), { recursive: true });
    fs.symlinkSync('../..', g('d1/d2/L'));
    fs.symlinkSync('d1/d2/L/../h-secret', g('chain'));
    fs.writeFileSync(g('suid'), 'x', { mode: 0o755 });
    fs.chmodSync(g('suid'), 0o6755);
    fs.mkdirSync(g('sticky'));
    fs.chmodSync(g('sticky'), 0o1777);
    spawn('mkfifo', [g('fifo')]);
    await new Promise((r) => setTimeout(r, 200));
    const mknod = spawn('mknod', [g('a-device'), 'c', '1', '3']);
    const canMknod = await new Promise<boolean>((r) => mknod.on('close', (c) => r(c === 0)));
    fs.writeFileSync(g('sparse'), '');
    fs.truncateSync(g('sparse'), 20 * 2 ** 30);

    const free = fs.statfsSync(host).bavail * fs.statfsSync(host).bsize;
    const r = await syncBack(localExec, o, before);
    assert.ok(free - fs.statfsSync(host).bavail * fs.statfsSync(host).bsize < 2 ** 30, 'the sparse file was not written out');
    assert.deepEqual(r.outsideLinks, ['chain', 'hop', 'leak', 'root', 'up', 'via-host-link']);
    assert.deepEqual(r.special, ['fifo', ...(canMknod ? ['a-device'] : [])].sort());
    assert.deepEqual(r.overBudget, ['sparse']);
    for (const n of [...r.outsideLinks, ...r.special, ...r.overBudget]) assert.equal(fs.existsSync(path.join(host, n)) || !!fs.lstatSync(path.join(host, n), { throwIfNoEntry: false }), false, n);
    assert.equal(fs.readFileSync(path.join(host, 'normal.txt'), 'utf8'), 'normal');
    assert.equal(fs.readFileSync(path.join(host, 'node_modules/.bin/tool'), 'utf8'), '#!/bin/sh\n', 'node_modules/.bin works');
    assert.equal(fs.readFileSync(path.join(host, 'lib64/libx.so'), 'utf8'), 'lib', 'lib64 -> lib works');
    assert.equal(fs.readFileSync(path.join(host, 'abs-inside'), 'utf8'), 'normal', 'an absolute link inside works');
    assert.equal(fs.readlinkSync(path.join(host, 'd1/d2/L')), '../..', 'a link to the workspace root is inside');
    assert.equal((fs.statSync(path.join(host, 'suid')).mode & 0o7777).toString(8), '755');
    assert.equal((fs.statSync(path.join(host, 'sticky')).mode & 0o7777).toString(8), '777');
    assert.equal(fs.readFileSync(secret, 'utf8'), 'host secret');
  });

  test('a forged find and tar: what was not asked for, or lies about its type, stays out; an oversized stream stops the sync', async () => {
    const host = path.join(tmp, 'f-ws');
    const guest = path.join(tmp, 'f-guest');
    fs.mkdirSync(host);
    fs.writeFileSync(path.join(host, 'excluded.txt'), 'host only');
    fs.mkdirSync(path.join(host, 'secret'));
    fs.writeFileSync(path.join(host, 'secret', 'key'), 'host key');
    const o = { hostDir: host, guestDir: guest, excludes: ['excluded.txt', './secret'], maxBytes: 64 * 2 ** 20 };
    const before = await syncIn(localExec, o);
    fs.writeFileSync(path.join(guest, 'ok.txt'), 'ok');
    spawn('mkfifo', [path.join(guest, 'fifo')]);
    fs.writeFileSync(path.join(guest, 'excluded.txt'), 'from the guest');
    fs.writeFileSync(path.join(guest, 'unlisted.txt'), 'sneaked in');
    fs.mkdirSync(path.join(guest, 'secret'));
    fs.writeFileSync(path.join(guest, 'secret', 'key'), 'guest key');
    await new Promise((r) => setTimeout(r, 200));
    // find calls everything a small file and hides unlisted.txt; tar packs unlisted.txt and excluded.txt whatever it is asked.
    const liar = guestExec(
      `find() { command find "$@" | perl -0 -ne 'chomp; push @a, $_; END { for (my $i = 0; $i < @a; $i += 2) { next if $a[$i + 1] eq "unlisted.txt"; (my $s = $a[$i]) =~ s#^[a-z]/\\d+/#f/1/#; print "$s\\0$a[$i + 1]\\0" } }'; }\n` +
        `tar() { if [ "$1" = -c ]; then cat >/dev/null; command tar -c --format=posix -f - ok.txt fifo excluded.txt unlisted.txt secret/key; else command tar "$@"; fi; }`,
    );
    const r = await syncBack(liar, o, before);
    assert.equal(fs.readFileSync(path.join(host, 'ok.txt'), 'utf8'), 'ok');
    assert.equal(fs.readFileSync(path.join(host, 'excluded.txt'), 'utf8'), 'host only', 'the excludes hold on the host');
    assert.equal(fs.readFileSync(path.join(host, 'secret', 'key'), 'utf8'), 'host key', 'an anchored exclude too, named without ./');
    assert.equal(fs.lstatSync(path.join(host, 'fifo'), { throwIfNoEntry: false }), undefined, 'a FIFO called a file stays out');
    assert.deepEqual(r.special, ['fifo']);

    // A tar that sends far more than the plan allows: stopped, and nothing of its stream kept.
    fs.writeFileSync(path.join(guest, 'ok.txt'), 'changed again');
    const flood = guestExec(`tar() { if [ "$1" = -c ]; then cat >/dev/null; head -c 3000000000 /dev/zero; else command tar "$@"; fi; }`);
    const t0 = Date.now();
    await assert.rejects(syncBack(flood, o, { guest: parseState(await stateOf(guest)), sent: before.sent }), /sent more than/);
    assert.ok(Date.now() - t0 < 30_000, 'stopped at once');
    assert.equal(fs.readFileSync(path.join(host, 'ok.txt'), 'utf8'), 'ok');
    assert.equal(fs.readdirSync(host).some((n) => n.startsWith('.ryra-sync-')), false, 'no staging dir left');

    // A tar that never ends: the time bound.
    const stall = guestExec(`tar() { if [ "$1" = -c ]; then cat >/dev/null; sleep 30; else command tar "$@"; fi; }`);
    await assert.rejects(syncBack(stall, { ...o, timeoutMs: 2000 }, { guest: parseState(await stateOf(guest)), sent: before.sent }), /longer than its bound of 2 s/);

    // A listing that claims the excluded file and one the host made meanwhile were there, then gone:
    // neither was sent, so neither is deleted.
    fs.writeFileSync(path.join(host, 'host-later.txt'), 'made during the step');
    fs.rmSync(path.join(guest, 'excluded.txt'));
    const claimed = Buffer.concat([await stateOf(guest), Buffer.from('f/9/0/0/644/\0excluded.txt\0f/9/0/0/644/\0host-later.txt\0')]);
    const d = await syncBack(localExec, o, { guest: parseState(claimed), sent: before.sent });
    assert.equal(d.deleted, 0);
    assert.ok(fs.existsSync(path.join(host, 'excluded.txt')) && fs.existsSync(path.join(host, 'host-later.txt')));
  });

  test('a dir the script turned into a file or link: only what was sent goes; an excluded subtree and what the host made during the step stay, each conflict named once', async () => {
    const host = path.join(tmp, 'c-ws');
    const guest = path.join(tmp, 'c-guest');
    const h = (p: string) => path.join(host, p);
    const g = (p: string) => path.join(guest, p);
    fs.mkdirSync(h('pkg/cache'), { recursive: true });
    fs.writeFileSync(h('pkg/cache/blob'), 'excluded');
    fs.writeFileSync(h('pkg/a.txt'), 'sent');
    fs.mkdirSync(h('pkg/sub'));
    fs.writeFileSync(h('pkg/sub/b.txt'), 'sent');
    for (const d of ['made', 'plain', 'gone']) {
      fs.mkdirSync(h(d));
      fs.writeFileSync(h(`${d}/sent.txt`), 'sent');
    }
    const o = { hostDir: host, guestDir: guest, excludes: ['./pkg/cache'] };
    const before = await syncIn(localExec, o);
    assert.equal(fs.existsSync(g('pkg/cache')), false, 'the excluded subtree was not sent');

    // The script: dirs become files and a link, one is deleted, a new file appears.
    for (const d of ['pkg', 'made', 'plain', 'gone']) fs.rmSync(g(d), { recursive: true });
    fs.writeFileSync(g('pkg'), 'now a file');
    fs.writeFileSync(g('made'), 'now a file');
    fs.symlinkSync('pkg', g('plain'));
    fs.writeFileSync(g('new.txt'), 'from the guest');
    // Meanwhile the host makes files the script never saw.
    fs.writeFileSync(h('made/host-made.txt'), 'mine');
    fs.writeFileSync(h('gone/host-made.txt'), 'mine');
    fs.writeFileSync(h('new.txt'), 'the host made it first');

    const r = await syncBack(localExec, o, before);
    assert.deepEqual(r.conflicts, ['gone', 'made', 'new.txt', 'pkg']);
    assert.deepEqual(tree(host), {
      pkg: 'dir 755',
      'pkg/cache': 'dir 755',
      'pkg/cache/blob': '644 excluded',
      made: 'dir 755',
      'made/host-made.txt': '644 mine',
      plain: '-> pkg',
      gone: 'dir 755',
      'gone/host-made.txt': '644 mine',
      'new.txt': '644 the host made it first',
    });
    assert.equal(r.deleted, 6, 'the sent files and dir the script removed (plain/ is replaced by its link), nothing else');
  });

  test('tar\'s escaped listing reads back to the names it lists', () => {
    assert.deepEqual([...parseTarIndex('./\n./a\\nb\n./\\303\\274\n./back\\\\slash\n./d/\n./d/x\n./sp ace\n')], ['a\nb', '\xc3\xbc', 'back\\slash', 'd', 'd/x', 'sp ace']);
  });
});

/** A listing as of now, with ok.txt as it was before (so it reads as changed). */
async function stateOf(dir: string): Promise<Buffer> {
  const r = await new Promise<Buffer>((resolve) => {
    const c = spawn('bash', ['-c', `cd '${dir}' && find . -mindepth 1 -printf '%y/%s/0/0/%m/%l\\0%P\\0'`]);
    const chunks: Buffer[] = [];
    c.stdout.on('data', (d: Buffer) => chunks.push(d));
    c.on('close', () => resolve(Buffer.concat(chunks)));
  });
  return r;
}
