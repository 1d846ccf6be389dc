// Steps that run inside the VM, as the runner runs them (amd64, TCG, the light configuration from
// the shared cache dir): the action, then `shell: ryra-vm run {0}` steps whose script is a file
// (as {0} is) reading the workspace, seeing an awkward environment value, writing files, a symlink
// and a step output; a normal step on the host seeing all of it; a --fresh step seeing a clean VM
// with the workspace; a failing script's status as the step's; help on every command. And a
// cancelled step (SIGTERM, as a cancelled job or `timeout-minutes` sends): the script stops in the
// VM, what it wrote before comes back, the step exits 143.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { readCommandFile, runner } from '../support/runner.js';
import { LIGHT, configInputs, sharedDir, sharedLayers } from '../support/shared.js';

const root = tempRoot('run');
let fx: Fixture;
const figures: string[] = [];

before(async () => {
  fx = ensureFixture('amd64');
  await sharedLayers(LIGHT, path.join(root.dir, 'rt-shared'));
});
after(async () => {
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`run figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

describe('ryra-vm run as a step\'s shell (amd64, TCG)', { timeout: 30 * 60_000 }, () => {
  test('a job: the action boots the VM; run steps in it see the workspace and env; the host sees their work; --fresh is clean; exit codes pass', async () => {
    const r = runner(root.dir, 'job');
    const ws = r.env.GITHUB_WORKSPACE!;
    fs.mkdirSync(path.join(ws, 'src'), { recursive: true });
    fs.writeFileSync(path.join(ws, 'src', 'input.txt'), 'from the runner\n');
    fs.writeFileSync(path.join(ws, 'with space ü.txt'), 'odd name\n');
    const AWKWARD = `it's "quoted"\nand on two lines with $HOME and \`ticks\``;
    try {
      const a = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': sharedDir(), boot: 'default', 'environment-variables': 'AWKWARD' });
      assert.equal(a.code, 0, a.stdout.slice(-4000));
      assert.match(a.stdout, /default: ready in [\d.]+ s \(restore\)/);

      const t0 = Date.now();
      const s2 = await r.step(
        [
          'set -u',
          'test "$(pwd)" = "$GITHUB_WORKSPACE"',
          'grep -q "from the runner" src/input.txt',
          'grep -q "odd name" "with space ü.txt"',
          `test "$(printf %s "$AWKWARD" | sha256sum | cut -c1-64)" = ${createHash('sha256').update(AWKWARD).digest('hex')}`,
          'test "$CI" = true && test "$GITHUB_SHA" = f00dfeed && test "$RUNNER_OS" = Linux',
          'mkdir -p out && uname -m > out/arch.txt',
          'ln -s out/arch.txt arch-link',
          'rm src/input.txt',
          'echo "kernel=$(uname -r)" >> "$GITHUB_OUTPUT"',
          'touch ~/only-in-default-vm',
          'echo step two done',
        ].join('\n'),
        { shell: 'ryra-vm run {0}', env: { AWKWARD } },
      );
      assert.equal(s2.code, 0, `${s2.stdout}\n${s2.stderr}`);
      assert.match(s2.stdout, /step two done/, 'output streams to the step');
      figures.push(`run step (reused VM, sync both ways) ${((Date.now() - t0) / 1000).toFixed(1)} s`);

      // Step 3, on the host: the VM's files, its symlink, its deletion and its step output.
      assert.equal(fs.readFileSync(path.join(ws, 'out', 'arch.txt'), 'utf8').trim(), 'x86_64');
      assert.equal(fs.readlinkSync(path.join(ws, 'arch-link')), 'out/arch.txt');
      assert.equal(fs.existsSync(path.join(ws, 'src', 'input.txt')), false, 'deleted in the VM, deleted here');
      assert.ok(fs.existsSync(path.join(ws, 'with space ü.txt')));
      assert.match(r.stepOutputs().kernel ?? '', /^\d+\.\d+/);
      const s3 = await r.step('test "$(readlink arch-link)" = out/arch.txt && test -x "$(command -v ryra-vm)"');
      assert.equal(s3.code, 0, s3.stderr);

      // Step 4: a fresh VM has the workspace but not what step 2 left outside it.
      const t1 = Date.now();
      const s4 = await r.step('test -f out/arch.txt && test ! -e src/input.txt && test ! -e ~/only-in-default-vm && echo fresh ok', { shell: 'ryra-vm run --fresh {0}' });
      assert.equal(s4.code, 0, `${s4.stdout}\n${s4.stderr}`);
      figures.push(`--fresh step (restore + sync + stop) ${((Date.now() - t1) / 1000).toFixed(1)} s`);
      assert.equal(JSON.parse((await r.cli(['list', '--json'])).stdout).length, 1, 'the fresh VM is gone, default runs on');

      // A script's exit status is the step's; the default VM is reused (still has its marker).
      const s5 = await r.step('test -e ~/only-in-default-vm; exit 3', { shell: 'ryra-vm run {0}' });
      assert.equal(s5.code, 3);

      // `ssh default` works through the runner user's ~/.ssh/config.
      const s6 = await r.step('ssh default "test -e ~/only-in-default-vm && hostname"');
      assert.equal(s6.code, 0, s6.stderr);

      for (const cmd of ['prepare', 'boot', 'run', 'ssh', 'cp', 'stop', 'list', 'gc']) {
        const h = await r.cli([cmd, '--help']);
        assert.equal(h.code, 0, `${cmd} --help: ${h.stderr}`);
        assert.match(h.stdout, new RegExp(`^ryra-vm ${cmd}\\b`), cmd);
      }
    } finally {
      await r.post();
    }
    assert.deepEqual(qemuProcessesUnder(root.dir), []);
    assert.doesNotMatch(fs.readFileSync(path.join(r.env.HOME!, '.ssh', 'config'), 'utf8'), /Host default/, 'the post step removed the Host entry');
  });
  test('a cancelled step: SIGTERM stops the script in the VM, what it wrote comes back, the step exits 143 within 35 s', async () => {
    const r = runner(root.dir, 'cancel');
    const ws = r.env.GITHUB_WORKSPACE!;
    let step: ReturnType<typeof spawn> | undefined;
    try {
      const a = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': sharedDir(), boot: 'default' });
      assert.equal(a.code, 0, a.stdout.slice(-4000));
      const script = path.join(r.env.RUNNER_TEMP!, 'long.sh');
      fs.writeFileSync(script, ['echo before > before-signal.txt', 'echo "partial=yes" >> "$GITHUB_OUTPUT"', 'echo script started', 'sleep 600', 'echo never > after-sleep.txt', ''].join('\n'));
      // The step's process as the runner starts it (`shell: ryra-vm run {0}`), with a step's environment.
      const added = fs.readFileSync(r.env.GITHUB_PATH!, 'utf8').split('\n').filter(Boolean).reverse();
      const env = { ...r.env, ...readCommandFile(r.env.GITHUB_ENV!), PATH: [...added, r.env.PATH].join(':') };
      step = spawn('ryra-vm', ['run', script], { cwd: ws, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      step.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
      step.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
      const exit = new Promise<number | null>((resolve) => step!.once('close', (code) => resolve(code)));
      const started = await Promise.race([
        new Promise<boolean>((resolve) => {
          const t = setInterval(() => /script started/.test(out) && (clearInterval(t), resolve(true)), 100);
          void exit.then(() => (clearInterval(t), resolve(false)));
        }),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 300_000).unref()),
      ]);
      assert.ok(started, `the script did not start:\n${out}`);
      await new Promise((res) => setTimeout(res, 5000));
      const t0 = Date.now();
      step.kill('SIGTERM');
      const code = await Promise.race([exit, new Promise<string>((res) => setTimeout(() => res('still running after 60 s'), 60_000).unref())]);
      const secs = (Date.now() - t0) / 1000;
      figures.push(`cancelled step: SIGTERM to exit ${secs.toFixed(1)} s`);
      assert.equal(code, 143, out);
      assert.ok(secs <= 35, `the step took ${secs} s to end after SIGTERM:\n${out}`);
      assert.match(out, /SIGTERM: stopping the script in default/);

      const ps = await r.cli(['ssh', 'default', '--', 'pgrep -af "^sleep 600$" || echo none left']);
      assert.equal(ps.stdout.trim(), 'none left', `the script still runs in the guest:\n${ps.stdout}${ps.stderr}`);
      assert.equal(fs.readFileSync(path.join(ws, 'before-signal.txt'), 'utf8'), 'before\n', 'what it wrote before the signal came back');
      assert.equal(fs.existsSync(path.join(ws, 'after-sleep.txt')), false);
      assert.equal(r.stepOutputs().partial, 'yes', 'the step files were written');
    } finally {
      if (step && step.exitCode === null && step.signalCode === null) step.kill('SIGKILL');
      await r.post();
    }
    assert.deepEqual(qemuProcessesUnder(root.dir), []);
  });
});
