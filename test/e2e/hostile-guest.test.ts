// A guest that turns hostile, as the runner runs it (amd64, TCG, the light configuration from the
// shared cache dir, one restored VM for every check): a `ryra-vm run` step with root in the VM forges
// the tools a copy-back could use (base64 & co. print a record naming a host variable), leaves
// symlinks out of the workspace, a setuid shell, a FIFO, a device node and a 20 GB sparse file, and
// turns its step summary into /dev/zero. The host file that variable names stays as it was, none of
// those reach the workspace while the normal files and inside symlinks do, the runner's disk barely
// moves, and the step ends in time, failing with the reasons. Before it, a step started in a
// working directory runs in the same path in the VM; a step that turns a directory into a file
// leaves the directory's excluded subtree and a file the runner made meanwhile in place; after it,
// the next step still syncs in. And a guest that floods its serial console leaves a log of at most
// the cap (the engine's serial writer, on a snapshot restored as a plain QEMU).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { readCommandFile, runner, type Runner } from '../support/runner.js';
import { LIGHT, configInputs, sharedDir, sharedLayers } from '../support/shared.js';
import { withPlainQemu } from '../support/vm.js';
import type { RunRecord } from '../../src/record.js';
import { freePort, makeSocketDir, serialThroughSocket, startSerialWriter } from '../../src/vm/machine.js';
import { fillRecipe } from '../../src/vm/spec.js';

const root = tempRoot('hostile');
let fx: Fixture;
let light: RunRecord;
const figures: string[] = [];

before(async () => {
  fx = ensureFixture('amd64');
  light = (await sharedLayers(LIGHT, path.join(root.dir, 'rt-shared'))).record;
});
after(async () => {
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`hostile-guest figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

const freeBytes = (p: string) => {
  const s = fs.statfsSync(p);
  return s.bavail * s.bsize;
};
const lexists = (p: string) => !!fs.lstatSync(p, { throwIfNoEntry: false });

/** The lowest free space of `dir`'s filesystem while `fn` runs, sampled every 100 ms. */
async function lowestFree<T>(dir: string, fn: () => Promise<T>): Promise<{ result: T; drop: number }> {
  const start = freeBytes(dir);
  let low = start;
  const t = setInterval(() => (low = Math.min(low, freeBytes(dir))), 100);
  try {
    const result = await fn();
    return { result, drop: start - Math.min(low, freeBytes(dir)) };
  } finally {
    clearInterval(t);
  }
}

/** A `ryra-vm run ARGS SCRIPT` step as the runner starts it, its output handed to `watch` as it comes. */
function streamedStep(r: Runner, script: string, args: string[], watch: (out: string) => void): Promise<{ code: number | null; out: string }> {
  const file = path.join(r.env.RUNNER_TEMP!, `streamed-${Date.now()}.sh`);
  fs.writeFileSync(file, script);
  const added = fs.readFileSync(r.env.GITHUB_PATH!, 'utf8').split('\n').filter(Boolean).reverse();
  const env = { ...r.env, ...readCommandFile(r.env.GITHUB_ENV!), PATH: [...added, r.env.PATH].join(':') };
  const c = spawn('ryra-vm', ['run', ...args, file], { cwd: r.env.GITHUB_WORKSPACE, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const on = (d: string) => {
    out += d;
    watch(out);
  };
  c.stdout.setEncoding('utf8').on('data', on);
  c.stderr.setEncoding('utf8').on('data', on);
  const timer = setTimeout(() => c.kill('SIGKILL'), 600_000);
  return new Promise((resolve) => c.on('close', (code) => (clearTimeout(timer), resolve({ code, out }))));
}

describe('a hostile guest cannot reach past the workspace (amd64, TCG)', { timeout: 30 * 60_000 }, () => {
  test('working directory; forged tools, escaping symlinks, setuid, FIFO, device, sparse giant, endless step file', async () => {
    const r = runner(root.dir, 'job');
    const ws = r.env.GITHUB_WORKSPACE!;
    // The workspace on a filesystem of its own where this host allows it, so the free space measured
    // is this step's alone (the other lane's builds write to the shared disk meanwhile).
    const own = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4g', 'tmpfs', ws]).status === 0;
    if (!own) figures.push('the workspace shares the disk (no tmpfs mount here): the free-space figure includes other writers');
    fs.mkdirSync(path.join(ws, 'sub', 'deeper'), { recursive: true });
    fs.mkdirSync(path.join(ws, 'lib'));
    fs.writeFileSync(path.join(ws, 'lib', 'libx.so'), 'lib\n');
    // A host file a variable names (what the old copy-back appended to), and a secret beside the workspace.
    const victim = path.join(r.dir, 'victim.txt');
    fs.writeFileSync(victim, 'untouched\n');
    const secret = path.join(r.env.HOME!, 'id_ed25519');
    fs.writeFileSync(secret, 'PRIVATE KEY\n', { mode: 0o600 });
    try {
      const a = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': sharedDir(), boot: 'default' });
      assert.equal(a.code, 0, a.stdout.slice(-4000));

      // Issue 23: `working-directory: sub/deeper` → the script starts in the same path in the VM.
      const wd = await r.step('pwd > where.txt\necho "wd=$(pwd)" >> "$GITHUB_OUTPUT"', { shell: 'ryra-vm run {0}', workingDirectory: 'sub/deeper' });
      assert.equal(wd.code, 0, `${wd.stdout}\n${wd.stderr}`);
      assert.equal(fs.readFileSync(path.join(ws, 'sub', 'deeper', 'where.txt'), 'utf8').trim(), path.join(ws, 'sub', 'deeper'));
      assert.equal(r.stepOutputs().wd, path.join(ws, 'sub', 'deeper'));

      // Issue 28: the script turns a directory into a file. Its excluded subtree and a file the
      // runner makes during the step were never sent: they stay, named in one warning.
      const data = (p = '') => path.join(ws, 'data', p);
      fs.mkdirSync(data('cache'), { recursive: true });
      fs.writeFileSync(data('cache/blob'), 'excluded\n');
      fs.writeFileSync(data('sent.txt'), 'sent\n');
      let made = false;
      const turn = await streamedStep(r, 'test -f data/sent.txt && test ! -e data/cache\nrm -rf data && echo now a file > data\necho turned\nsleep 10\n', ['--exclude', './data/cache'], (out) => {
        if (made || !/turned/.test(out)) return;
        made = true;
        fs.writeFileSync(data('host-made.txt'), 'made during the step\n');
      });
      assert.equal(turn.code, 0, turn.out);
      assert.ok(made, 'the runner made its file during the step');
      assert.match(turn.out, /not synced back: 1 path\(s\) the script replaced or deleted, kept as the runner has them .*: "data"\n/);
      assert.equal(fs.readFileSync(data('cache/blob'), 'utf8'), 'excluded\n', 'the excluded subtree stays');
      assert.equal(fs.readFileSync(data('host-made.txt'), 'utf8'), 'made during the step\n', 'the file the runner made stays');
      assert.equal(fs.existsSync(data('sent.txt')), false, 'what was sent and deleted in the VM is deleted');
      fs.rmSync(data(), { recursive: true });

      // The hostile step. Every forged tool prints what the old copy-back parsed: a NUL-separated
      // name (a host variable) and base64 content.
      const hostile = [
        'set -u',
        "sudo tee /usr/local/bin/forged >/dev/null <<'EOF'",
        '#!/bin/sh',
        `for i in 1 2 3 4; do printf 'VICTIM\\0%s\\0' '${Buffer.from('appended by the guest\n').toString('base64')}'; done`,
        'EOF',
        'sudo chmod 755 /usr/local/bin/forged',
        'for t in base64 head tail stat dd od xxd wc; do sudo ln -sf forged /usr/local/bin/$t; done',
        'sudo cp /usr/local/bin/forged /usr/bin/base64',
        'base64 | od | grep -q VICTIM',
        'echo normal > normal.txt',
        'mkdir -p node_modules/pkg/bin node_modules/.bin && printf "#!/bin/sh\\necho tool\\n" > node_modules/pkg/bin/tool && chmod 755 node_modules/pkg/bin/tool',
        'ln -s ../pkg/bin/tool node_modules/.bin/tool',
        'ln -s lib lib64',
        `ln -s ${secret} leak`,
        'ln -s / root-link',
        'ln -s ../../../../.. up',
        'sudo cp /bin/bash suid-sh && sudo chmod 4755 suid-sh',
        'mkfifo a-fifo',
        'sudo mknod a-device c 1 3',
        'truncate -s 20G sparse.img',
        'echo "fine=yes" >> "$GITHUB_OUTPUT"',
        'ln -sf /dev/zero "$GITHUB_STEP_SUMMARY"',
        'echo hostile done',
      ].join('\n');
      const summary0 = r.summary();
      const t0 = Date.now();
      const { result: h, drop } = await lowestFree(ws, () => r.step(hostile, { shell: 'ryra-vm run {0}', env: { VICTIM: victim }, timeoutMs: 300_000 }));
      const secs = (Date.now() - t0) / 1000;
      figures.push(`hostile step ${secs.toFixed(1)} s`);
      const said = `${h.stdout}\n${h.stderr}`;
      assert.match(h.stdout, /hostile done/, said);
      assert.ok(secs < 300, `the step ended in ${secs} s`);
      assert.equal(h.code, 1, `the step fails with the reasons:\n${said}`);
      assert.match(h.stderr, /more than 16 MiB to \$GITHUB_STEP_SUMMARY/, said);
      assert.match(h.stderr, /did not fit in the sync-back budget .*"sparse\.img".*sync-max-size/, said);
      assert.match(h.stderr, /symlink\(s\) whose targets lead outside the workspace: "leak", "root-link", "up"/, said);
      assert.match(h.stderr, /not files, dirs or symlinks .*"a-device", "a-fifo"/, said);

      assert.equal(fs.readFileSync(victim, 'utf8'), 'untouched\n', 'the host file a variable names is unchanged');
      assert.equal(r.summary(), summary0, 'the endless summary left the runner\'s file as it was');
      assert.equal(r.stepOutputs().fine, undefined, 'a failed copy-back writes none of the step files');
      for (const n of ['leak', 'root-link', 'up', 'a-fifo', 'a-device', 'sparse.img']) assert.equal(lexists(path.join(ws, n)), false, `${n} stayed out`);
      assert.equal(fs.statSync(path.join(ws, 'suid-sh')).mode & 0o7777, 0o755, 'the setuid bit is dropped');
      assert.equal(fs.readFileSync(path.join(ws, 'normal.txt'), 'utf8'), 'normal\n');
      assert.equal(fs.readFileSync(path.join(ws, 'node_modules', '.bin', 'tool'), 'utf8'), '#!/bin/sh\necho tool\n', 'node_modules/.bin works');
      assert.equal(fs.readFileSync(path.join(ws, 'lib64', 'libx.so'), 'utf8'), 'lib\n', 'lib64 -> lib works');
      assert.equal(fs.readFileSync(secret, 'utf8'), 'PRIVATE KEY\n');
      figures.push(`the workspace's free space dropped at most ${(drop / 2 ** 20).toFixed(1)} MiB`);
      assert.ok(drop < 2 ** 30, `the runner's free space dropped by ${drop} bytes`);

      // The same VM syncs in again (a device node in the workspace used to break this).
      fs.writeFileSync(path.join(ws, 'later.txt'), 'from the runner, later\n');
      const next = await r.step('test "$(pwd)" = "$GITHUB_WORKSPACE" && grep -q "runner, later" later.txt && test -f normal.txt && echo next ok', { shell: 'ryra-vm run {0}' });
      assert.equal(next.code, 0, `${next.stdout}\n${next.stderr}`);
      assert.match(next.stdout, /next ok/);
    } finally {
      try {
        await r.post();
      } finally {
        if (own) spawnSync('umount', [ws]);
      }
    }
    assert.deepEqual(qemuProcessesUnder(root.dir), []);
  });
  test('a guest writing to its serial console without end leaves a log of at most the cap, ending with what it wrote last', async () => {
    // The engine's serial line and writer (Machine.spawn's), at a cap a TCG guest passes within a
    // minute: it prints about 100 KiB/s here, so the product's 64 MiB would take ten minutes.
    const cap = 512 * 1024;
    const d = fs.mkdtempSync(path.join(root.dir, 'serial-'));
    const f = (n: string) => path.join(d, n);
    fs.mkdirSync(f('share'));
    fs.copyFileSync(light.restore!.disk, f('disk.qcow2'));
    fs.copyFileSync(light.restore!.efivars, f('efivars.qcow2'));
    const port = await freePort();
    const argv = fillRecipe(light.restore!.argv, { disk: f('disk.qcow2'), efivars: f('efivars.qcow2'), sshPort: String(port), serialLog: f('serial.log'), shareDir: f('share') });
    const sockDir = makeSocketDir();
    const writer = await startSerialWriter(path.join(sockDir, 'serial.sock'), f('serial.log'), cap);
    let largest = 0;
    const sample = setInterval(() => (largest = Math.max(largest, fs.statSync(f('serial.log'), { throwIfNoEntry: false })?.size ?? 0)), 50);
    const flood = 4 * cap;
    try {
      await withPlainQemu(light, light.qemu, [...serialThroughSocket(argv, path.join(sockDir, 'serial.sock'))!, '-monitor', 'none', '-loadvm', 'ready'], port, async (c) => {
        const t0 = Date.now();
        const r = await c.exec(`sudo sh -c 'base64 -w 100 /dev/urandom | head -c ${flood} > /dev/ttyS0 && echo FLOOD-END > /dev/ttyS0'`, { timeoutMs: 600_000 });
        assert.equal(r.code, 0, r.stderr);
        const secs = (Date.now() - t0) / 1000;
        figures.push(`serial flood: ${flood >> 10} KiB in ${secs.toFixed(1)} s (${(flood / 1024 / secs).toFixed(0)} KiB/s)`);
        for (let i = 0; i < 100 && !fs.readFileSync(f('serial.log'), 'latin1').includes('FLOOD-END'); i++) await new Promise((res) => setTimeout(res, 100));
      });
    } finally {
      clearInterval(sample);
      fs.rmSync(sockDir, { recursive: true, force: true });
    }
    const log = fs.readFileSync(f('serial.log'), 'latin1');
    largest = Math.max(largest, log.length);
    figures.push(`serial log at most ${largest} bytes (cap ${cap}) after ${flood} written`);
    assert.ok(largest <= cap, `the serial log reached ${largest} bytes (cap ${cap})`);
    assert.ok(log.length >= cap / 2, `the tail is kept (${log.length} bytes)`);
    assert.match(log, /FLOOD-END\r?\n/, 'it holds what the guest wrote last');
    for (let i = 0; i < 100 && writer.exitCode === null && writer.signalCode === null; i++) await new Promise((res) => setTimeout(res, 100));
    assert.notEqual(writer.exitCode ?? writer.signalCode, null, 'the writer exits with its QEMU');
  });
});
