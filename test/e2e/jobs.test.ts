// Two jobs of one runner user at once (one HOME, a RUNNER_TEMP each, one cache dir: the light
// layers), both booting `default` (amd64, TCG): each job's `ryra-vm ssh default` and plain
// `ssh default` reach its own VM, a shell of neither job reaches none, and the post steps leave
// ~/.ssh/config as it was. Port forwards, from the action's `forward` input and from
// `ryra-vm boot --forward` (restores of one snapshot with other forwards each): a web server in
// the guest answers on the runner's 127.0.0.1 and nowhere else; a taken port is a clear error;
// `ryra-vm run --forward` forwards for the VM it boots. Two VMs: each guest's SSH host key is the
// one derived from the repository's key, and a guest presenting another is refused by ryra-vm and
// plain ssh; `ssh NAME` of a VM whose QEMU died (with something else on its port) or that was
// stopped says the VM is gone and connects nowhere. A cold-booted guest that refuses the key is
// reported as soon as cloud-init has finished, naming the cause.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import type { RunRecord } from '../../src/record.js';
import { coldBoot } from '../../src/vm/boot.js';
import { freePort } from '../../src/vm/machine.js';
import { generateKeyPair, hostKeyFor } from '../../src/vm/ssh.js';
import type { VmRecord } from '../../src/vms.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { readCommandFile, runner, type Runner } from '../support/runner.js';
import { LIGHT, configInputs, sharedDir, sharedLayers } from '../support/shared.js';

const root = tempRoot('jobs');
const run = promisify(execFile);
let fx: Fixture;
let rec: RunRecord;
const figures: string[] = [];

before(async () => {
  fx = ensureFixture('amd64');
  ({ record: rec } = await sharedLayers(LIGHT, path.join(root.dir, 'rt-shared')));
});
after(async () => {
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`jobs figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

/** Listening TCP sockets on `port` (IPv4 and IPv6), as their local addresses in /proc/net's hex. */
function listeners(port: number): string[] {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  return ['/proc/net/tcp', '/proc/net/tcp6'].flatMap((f) =>
    fs
      .readFileSync(f, 'utf8')
      .split('\n')
      .slice(1)
      .map((l) => l.trim().split(/\s+/))
      .filter((c) => c.length > 3 && c[3] === '0A' && c[1].endsWith(`:${hexPort}`))
      .map((c) => c[1]),
  );
}

/** Starts python3's web server on the guest's port 8000, serving a page that names `who`. */
async function serve(r: Runner, vm: string, who: string): Promise<void> {
  const s = await r.cli(['ssh', vm, '--', `mkdir -p /tmp/www && echo ${who} > /tmp/www/index.html && cd /tmp/www && (setsid python3 -m http.server 8000 </dev/null >/dev/null 2>&1 &)`]);
  assert.equal(s.code, 0, s.stderr);
}

/** The page at 127.0.0.1:port, once the guest's server answers (python starts slowly under TCG). */
async function page(port: number): Promise<string> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(10_000) });
      if (res.ok) return (await res.text()).trim();
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

describe('jobs of one runner user (amd64, TCG)', { timeout: 30 * 60_000 }, () => {
  test('two jobs at once both boot default: each reaches its own VM by ryra-vm ssh and plain ssh; forwards answer on 127.0.0.1 only', async () => {
    const home = path.join(root.dir, 'home');
    fs.mkdirSync(path.join(home, '.ssh'), { recursive: true, mode: 0o700 });
    // The user's own config: left as it is, and still applying to every host.
    const own = 'Host *\n  ServerAliveInterval 42\n';
    fs.writeFileSync(path.join(home, '.ssh', 'config'), own, { mode: 0o600 });
    const userConfig = () => fs.readFileSync(path.join(home, '.ssh', 'config'), 'utf8');
    const jobs = { a: runner(root.dir, 'a', { HOME: home }), b: runner(root.dir, 'b', { HOME: home }) };
    const p = await freePort();
    try {
      const t0 = Date.now();
      const inputs = { ...configInputs(LIGHT, fx), 'cache-dir': sharedDir(), boot: 'default' };
      const [ra, rb] = await Promise.all([jobs.a.action(inputs), jobs.b.action({ ...inputs, forward: `${p}:8000` })]);
      assert.equal(ra.code, 0, ra.stdout.slice(-4000));
      assert.equal(rb.code, 0, rb.stdout.slice(-4000));
      figures.push(`both actions (layers local, boot: default each, at once) ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      for (const r of [ra, rb]) assert.match(r.stdout, /default: ready in [\d.]+ s \(restore\)/);
      assert.match(rb.stdout, new RegExp(`default: ready in .*, 127\\.0\\.0\\.1:${p} → 8000`));
      const ids = [jobs.a, jobs.b].map((r) => readCommandFile(r.env.GITHUB_ENV!).RYRA_VM_JOB);
      assert.ok(ids.every((id) => /^[0-9a-f]{16}$/.test(id)) && ids[0] !== ids[1], `each job has an id of its own: ${ids.join(', ')}`);
      // ~/.ssh/config holds one include per job, no Host entry of its own.
      assert.equal(userConfig().match(/^Match exec /gm)?.length, 2, userConfig());
      assert.doesNotMatch(userConfig(), /^Host default/m);

      for (const [who, r] of Object.entries(jobs)) {
        const w = await r.cli(['ssh', 'default', '--', `echo job-${who} > ~/who`]);
        assert.equal(w.code, 0, w.stderr);
      }
      for (const [who, r] of Object.entries(jobs)) {
        assert.equal((await r.cli(['ssh', 'default', '--', 'cat ~/who'])).stdout.trim(), `job-${who}`, `ryra-vm ssh default in job ${who}`);
        const s = await r.step('ssh default cat "~/who" && ssh -G default | grep -x "serveraliveinterval 42"');
        assert.equal(s.code, 0, s.stderr);
        assert.equal(s.stdout.trim().split('\n')[0], `job-${who}`, `plain ssh default in job ${who}`);
      }
      // A shell of neither job (same user, no RYRA_VM_JOB of theirs) has no `default` to reach.
      for (const env of [{}, { RYRA_VM_JOB: 'another-job' }]) {
        const none = await run('ssh', ['-F', path.join(home, '.ssh', 'config'), '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=5', 'default', 'true'], { env: { PATH: process.env.PATH, HOME: home, ...env } }).catch((e: { code: number; stderr: string }) => e);
        assert.equal((none as { code: number }).code, 255);
        assert.match((none as { stderr: string }).stderr, /Could not resolve hostname default/);
      }

      // Job b's forward (the input): the guest's web server answers on the runner's loopback only.
      await serve(jobs.b, 'default', 'page-from-b');
      assert.equal(await page(p), 'page-from-b');
      assert.deepEqual(listeners(p), [`0100007F:${p.toString(16).toUpperCase().padStart(4, '0')}`], 'one listener, on 127.0.0.1');

      // A taken port, a bad name: refused before anything boots.
      const taken = await jobs.a.cli(['boot', '--name', 'web', '--forward', `${p}:8000`]);
      assert.equal(taken.code, 2, taken.stderr);
      assert.equal(taken.stderr.trim(), `ryra-vm: invalid forward ${p}:8000: 127.0.0.1:${p} is not free (another process listens on it); forward from another host port`);
      const badName = await jobs.a.cli(['boot', '--name', 'github.com']);
      assert.equal(badName.code, 2);
      assert.match(badName.stderr, /^ryra-vm: invalid VM name: "github\.com" \(a VM name is lowercase letters, digits and -/);

      // ryra-vm boot --forward: another restore of the same snapshot, with another forward.
      const q = await freePort();
      const t1 = Date.now();
      const web = await jobs.a.cli(['boot', '--name', 'web', '--forward', `${q}:8000`, '--json']);
      assert.equal(web.code, 0, web.stderr);
      assert.equal(JSON.parse(web.stdout).mode, 'restore');
      figures.push(`ryra-vm boot --forward ${((Date.now() - t1) / 1000).toFixed(1)} s`);
      await serve(jobs.a, 'web', 'page-from-web');
      assert.equal(await page(q), 'page-from-web');
      assert.equal(listeners(q).length, 1);
      assert.ok(listeners(q)[0].startsWith('0100007F:'), listeners(q)[0]);
      const s = await jobs.a.step('ssh web cat /tmp/www/index.html');
      assert.equal(s.stdout.trim(), 'page-from-web', s.stderr);

      // ryra-vm run --forward: for the VM it boots; a running VM keeps the forwards it has.
      const r = await freePort();
      const serveStep = 'mkdir -p /tmp/www && echo page-from-run > /tmp/www/index.html && cd /tmp/www && (setsid python3 -m http.server 8000 </dev/null >/dev/null 2>&1 &)';
      const viaRun = await jobs.a.step(serveStep, { shell: `ryra-vm run --name runner --sync none --forward ${r}:8000 {0}` });
      assert.equal(viaRun.code, 0, viaRun.stderr);
      assert.equal(await page(r), 'page-from-run');
      const again = await jobs.a.step('true', { shell: `ryra-vm run --name runner --forward ${r + 1}:8000 {0}` });
      assert.equal(again.code, 2);
      assert.match(again.stderr, /invalid --forward: VM runner is already running with other forwards/);
    } finally {
      for (const r of Object.values(jobs)) await r.post();
    }
    assert.deepEqual(qemuProcessesUnder(root.dir), []);
    assert.equal(userConfig(), own, 'the post steps took their includes out of ~/.ssh/config');
  });

  test('two VMs: a guest presenting another SSH host key is refused; ssh NAME of a VM whose QEMU was killed, or that was stopped, says it is gone', async () => {
    const r = runner(root.dir, 'pin');
    const sshConfig = path.join(r.env.RUNNER_TEMP!, 'ryra-vm', 'ssh_config');
    let squatter: net.Server | undefined;
    try {
      // One restore each.
      const act = await r.action({ ...configInputs(LIGHT, fx), 'cache-dir': sharedDir(), boot: 'one two' });
      assert.equal(act.code, 0, act.stdout.slice(-4000));
      for (const n of ['one', 'two']) assert.match(act.stdout, new RegExp(`${n}: ready in [\\d.]+ s \\(restore\\)`));
      const vms = JSON.parse((await r.cli(['list', '--json'])).stdout) as VmRecord[];
      const [one, two] = ['one', 'two'].map((n) => vms.find((v) => v.name === n)!);
      // The host key is the one derived from the repository's key, computed here, not read from the guest;
      // the guest holds it as its only host key.
      const derived = hostKeyFor({ privateKey: fs.readFileSync(rec.outputs['ssh-key'], 'utf8') }).publicKey;
      assert.deepEqual([one.hostKey, two.hostKey], [derived, derived]);
      const keys = await r.cli(['ssh', 'one', '--', 'ls /etc/ssh/ | grep ssh_host_; cat /etc/ssh/ssh_host_ed25519_key.pub']);
      assert.equal(keys.stdout.trim(), `ssh_host_ed25519_key\nssh_host_ed25519_key.pub\n${derived}`, keys.stderr);
      const both = await r.step('ssh one hostname && ssh two hostname');
      assert.equal(both.stdout, 'one\ntwo\n', both.stderr);

      // two's guest gets another host key (sshd reloaded): ryra-vm and plain ssh refuse it; one is reached as before.
      // Done once sshd (re-executing on the reload) answers with the new key: a connection while it
      // re-executes is just dropped.
      const swap = await r.cli([
        'ssh', 'two', '--',
        `sudo sh -c 'rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key && systemctl reload ssh.service' && ` +
          'k=$(cut -d" " -f2 /etc/ssh/ssh_host_ed25519_key.pub) && for i in $(seq 120); do ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null | grep -qF "$k" && exit 0; sleep 1; done; exit 1',
      ]);
      assert.equal(swap.code, 0, swap.stderr);
      const t0 = Date.now();
      const refused = await r.cli(['ssh', 'two', '--', 'echo reached']);
      assert.notEqual(refused.code, 0);
      assert.doesNotMatch(refused.stdout, /reached/);
      assert.match(refused.stderr, new RegExp(`refused 127\\.0\\.0\\.1:${two.port}: its SSH host key is ssh-ed25519 SHA256:\\S+, not the guest's ssh-ed25519 SHA256:\\S+: it is not the VM this key was made for`));
      figures.push(`ryra-vm ssh to a guest with another host key refused in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      const plain = await r.step('ssh two echo reached');
      assert.equal(plain.code, 255);
      assert.doesNotMatch(plain.stdout, /reached/);
      assert.match(plain.stderr, /REMOTE HOST IDENTIFICATION HAS CHANGED[\s\S]*Host key verification failed/);
      assert.equal((await r.cli(['ssh', 'one', '--', 'hostname'])).stdout, 'one\n');

      // one's QEMU dies, and something else listens on its port: `ssh one` says the VM is gone and
      // connects nowhere, before and after a ryra-vm call has found it dead.
      process.kill(one.pid, 'SIGKILL');
      for (let i = 0; i < 100 && fs.existsSync(`/proc/${one.pid}`); i++) await new Promise((res) => setTimeout(res, 100));
      let connections = 0;
      squatter = net.createServer((c) => (connections++, c.end('SSH-2.0-OpenSSH_9.9\r\n')));
      await new Promise<void>((res) => squatter!.listen(one.port, '127.0.0.1', res));
      const gone = `ryra-vm: the VM one is gone (its QEMU, pid ${one.pid}, exited); boot it again with ryra-vm boot --name one\n`;
      for (const when of ['before', 'after']) {
        if (when === 'after') assert.equal((await r.cli(['list'])).code, 0);
        const s = await r.step('ssh one hostname');
        assert.deepEqual([s.code, s.stdout, s.stderr], [255, '', gone], when);
      }
      assert.equal(connections, 0, 'nothing connected to the freed port');
      assert.doesNotMatch(fs.readFileSync(sshConfig, 'utf8'), new RegExp(`Port ${one.port}\\b`), 'ryra-vm list dropped the dead VM\'s port from the entries');
      assert.match((await r.cli(['ssh', 'one', '--', 'true'])).stderr, /VM one is not running \(its QEMU exited\)/);

      // two is stopped: `ssh two` says so.
      assert.equal((await r.cli(['stop', 'two'])).code, 0);
      const stopped = await r.step('ssh two hostname');
      assert.deepEqual([stopped.code, stopped.stderr], [255, 'ryra-vm: the VM two is gone (stopped); boot it again with ryra-vm boot --name two\n']);
    } finally {
      squatter?.close();
      await r.post();
    }
    assert.deepEqual(qemuProcessesUnder(r.dir), []);
  });

  test('a guest that refuses the key: reported once cloud-init has finished, naming the cause, not at the boot bound', async () => {
    // The seed installs one key, the boot logs in with another: what a broken key did to a build.
    const [held, offered] = [generateKeyPair(), generateKeyPair()];
    const t0 = Date.now();
    const err = await coldBoot({
      name: 'refused',
      qemu: rec.qemu,
      layout: rec.cold.layout,
      firmware: rec.firmware,
      base: rec.cold.image,
      workDir: fs.mkdtempSync(path.join(root.dir, 'refused-')),
      key: { privateKey: offered.privateKey, publicKey: held.publicKey },
      hostKey: generateKeyPair(),
      seed: { hostname: 'refused' },
      sshTimeoutMs: 3600_000,
      cloudInitTimeoutMs: 3600_000,
    }).catch((e: Error) => e);
    assert.ok(err instanceof Error);
    assert.match(err.message, /answers SSH but refuses the key for ryra \(All configured authentication methods failed\), and cloud-init has finished \(the serial console says so\): the guest does not hold the public key of the key offered/);
    assert.match(err.message, /Cloud-init v\. \S+ finished at/, 'the serial tail shows it');
    figures.push(`cold boot to the refusal ${((Date.now() - t0) / 1000).toFixed(0)} s (bound 3600 s)`);
  });
});
