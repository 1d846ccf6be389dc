// The VM engine on real guests (TCG), on the light configuration's snapshot from the shared cache
// dir (cold boots and savevm are what every layer build does; see the pipeline files): a restore
// keeps the saved state, the SSH forward listens on loopback only, a kernel panic and a QEMU that
// dies each end a wait within seconds, with the serial tail.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { GuestPanicError, Machine, QemuExitedError } from '../../src/vm/machine.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { execFileSync } from 'node:child_process';
import { runCli } from '../support/cli.js';
import { ensureFixture } from '../support/fixtures.js';
import { LIGHT, linkLayers, prepareArgs, sharedDir, sharedLayers } from '../support/shared.js';
import { restoreRecord } from '../support/vm.js';

const root = tempRoot('engine');
const machines: Machine[] = [];
const timings: string[] = [];
let rec: RunRecord;

before(async () => {
  ({ record: rec } = await sharedLayers(LIGHT, path.join(root.dir, 'rt')));
});
after(async () => {
  for (const m of machines) await m.destroy().catch(() => {});
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (timings.length) console.log(`engine timings: ${timings.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

function nonLoopbackAddress(): string | undefined {
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

function tcpConnect(host: string, port: number): Promise<'open' | string> {
  return new Promise((resolve) => {
    const s = net.createConnection({ host, port, timeout: 3000 });
    s.once('connect', () => (s.destroy(), resolve('open')));
    s.once('timeout', () => (s.destroy(), resolve('timeout')));
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

async function restore(name: string, deepDir?: string): Promise<{ machine: Machine; readyMs: number }> {
  const base = deepDir ?? root.dir;
  fs.mkdirSync(base, { recursive: true });
  const r = await restoreRecord(rec, base, name);
  machines.push(r.machine);
  return r;
}

describe('engine amd64', { timeout: 30 * 60_000 }, () => {
  test('restore keeps the saved state; the SSH forward listens on loopback only', async () => {
    const { machine: m, readyMs } = await restore('state');
    try {
      assert.equal((await m.check('uname -m', 'uname')).stdout.trim(), 'x86_64');
      // Made by the snapshot setup before savevm: the restored guest has it without running it. No
      // podman in LIGHT, so no podman config either (the setup configures only what is installed).
      assert.equal((await m.check('test -d /mnt/images && ! test -e ~/.config/containers && echo made', 'snapshot setup')).stdout, 'made\n');
      assert.equal((await m.check('whoami', 'whoami')).stdout.trim(), 'ryra');
      // LIGHT is `--base-packages false --packages jq`: jq, and not the catalogue's list (podman & co.).
      assert.match((await m.check('jq --version && ! command -v podman && echo no-podman', 'packages')).stdout, /^jq-1\S*\nno-podman\n$/);
      assert.equal(await tcpConnect('127.0.0.1', m.sshPort), 'open');
      const other = nonLoopbackAddress();
      assert.ok(other, 'this host has a non-loopback IPv4 address to test against');
      assert.notEqual(await tcpConnect(other, m.sshPort), 'open');
      timings.push(`restore → SSH ${(readyMs / 1000).toFixed(1)} s`);
    } finally {
      await m.destroy();
    }
  });

  test('a guest whose kernel panics fails the wait within seconds, with the serial tail', async () => {
    const { machine: m } = await restore('panics');
    try {
      // A real panic: SSH is stopped so the next wait can only end through the panic watch, and
      // the kernel crashes a few seconds later (root may always write /proc/sysrq-trigger).
      await m.check(
        `sudo sh -c 'systemctl stop ssh.socket ssh.service; systemd-run --quiet --on-active=4 --timer-property=AccuracySec=100ms /bin/sh -c "echo c > /proc/sysrq-trigger"'`,
        'stop sshd and schedule a crash',
      );
      const start = Date.now();
      await assert.rejects(m.waitReady(15 * 60_000), (err: Error) => {
        assert.ok(err instanceof GuestPanicError, err.message);
        assert.match(err.message, /Kernel panic - not syncing: sysrq triggered crash/);
        return true;
      });
      assert.ok(Date.now() - start < 30_000, `the wait ended ${Date.now() - start} ms after start`);
    } finally {
      await m.destroy();
    }
  });

  test('a QEMU that dies while a guest comes up fails the wait within seconds; long work dirs are fine', async () => {
    // A deep work dir: QEMU's sockets must not inherit its length (unix paths stop at 107 bytes).
    const deep = path.join(root.dir, 'a-rather-long-directory-name-like-a-runner-cache'.repeat(2), 'deeper');
    const { machine: m } = await restore('dies', deep);
    assert.ok(m.serialLog.length > 120);
    // Kill it the moment it answered, then wait again: only QEMU's exit can end this wait.
    const start = Date.now();
    process.kill(m.pid, 'SIGKILL');
    try {
      await assert.rejects(m.waitReady(15 * 60_000), (err: Error) => {
        assert.ok(err instanceof QemuExitedError, err.message);
        assert.match(err.message, /Serial console .*last lines/);
        return true;
      });
      assert.ok(Date.now() - start < 15_000, `the wait ended ${Date.now() - start} ms after start`);
    } finally {
      await m.destroy();
    }
    assert.equal(fs.existsSync(m.qmpSocket), false, 'socket dir removed');
  });

  test('ryra-vm boot recovers from a snapshot that fails to restore: warns, marks it invalid, cold-boots the image', async () => {
    // A cache dir of its own with the light layers, whose snapshot has lost its saved state.
    const dir = path.join(root.dir, 'recover');
    const keep = new Set(['test-ssh-key', 'test-ssh-key.pub']);
    for (const f of [rec.outputs.image, rec.restore!.disk, rec.restore!.efivars, rec.restore!.seed]) keep.add(path.basename(f));
    for (const f of [rec.outputs.image, rec.restore!.disk]) keep.add(path.basename(f).replace(/\.qcow2$/, '.manifest.json'));
    linkLayers(sharedDir(), dir, (n) => keep.has(n));
    const env = { RYRA_VM_RUNTIME_DIR: path.join(root.dir, 'rt-recover'), HOME: path.join(root.dir, 'home-recover') };
    const p = await runCli(prepareArgs(LIGHT, ensureFixture('amd64'), dir), env).done;
    assert.equal(p.code, 0, p.stderr);
    const local = JSON.parse(fs.readFileSync(JSON.parse(p.stdout).manifest, 'utf8')) as RunRecord;
    const vars = local.restore!.efivars;
    fs.rmSync(vars); // a hard link: replaced, not written through
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', vars, '64M']);
    const b = await runCli(['boot', '--name', 'phoenix', '--json'], env).done;
    try {
      assert.equal(b.code, 0, b.stderr);
      const vm = JSON.parse(b.stdout);
      assert.equal(vm.mode, 'cold');
      assert.match(b.stderr, /warning: restoring phoenix from .*-snapshot-1024-[0-9a-f]+\.qcow2 failed; marking that snapshot invalid \(the next action run rebuilds it\) and cold-booting instead/);
      assert.equal(fs.existsSync(path.join(dir, path.basename(local.restore!.disk).replace(/\.qcow2$/, '.manifest.json'))), false, 'the snapshot is no longer recorded');
      const who = await runCli(['ssh', 'phoenix', '--', 'hostname && jq --version'], env).done;
      assert.equal(who.code, 0, who.stderr);
      assert.match(who.stdout, /^phoenix\njq-1/);
      timings.push(`recovery by cold boot ${(vm.readyMs / 1000).toFixed(0)} s`);
    } finally {
      await runCli(['stop', '--all'], env).done;
    }
  });
});
