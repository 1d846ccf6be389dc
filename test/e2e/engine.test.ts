// The VM engine on real guests (TCG): cold boot with UEFI + the project's seed, SSH, cloud-init,
// savevm via QMP, restore with -loadvm, loopback-only forwarding, and a QEMU that dies mid-boot.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Arch } from '../../src/distro.js';
import { parseConfig } from '../../src/inputs.js';
import { setupHost, type Host } from '../../src/host/setup.js';
import { convert, createOverlay } from '../../src/vm/images.js';
import { GuestPanicError, Machine, QemuExitedError, makeWorkDir } from '../../src/vm/machine.js';
import { writeSeedIso } from '../../src/vm/seed.js';
import { ensureKeyFile } from '../../src/vm/ssh.js';
import { layoutOf } from '../../src/vm/spec.js';
import { ensureFixture, testArches } from '../support/fixtures.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';

const root = tempRoot('engine');
const machines: Machine[] = [];
const timings: string[] = [];

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

async function hostFor(arch: Arch): Promise<Host> {
  const inputs: Record<string, string> = { arch, kvm: 'false', 'install-deps': 'false', 'cache-dir': path.join(root.dir, 'cache') };
  return setupHost(parseConfig((n) => inputs[n]));
}

for (const arch of testArches()) {
  describe(`engine ${arch}`, { timeout: 45 * 60_000 }, () => {
    let host: Host;
    let image: string;
    let dir: string;
    let key: { privateKey: string; publicKey: string };
    let layout: ReturnType<typeof layoutOf> | undefined;

    before(async () => {
      image = ensureFixture(arch).image;
      host = await hostFor(arch);
      dir = path.join(root.dir, arch);
      fs.mkdirSync(dir, { recursive: true });
      key = ensureKeyFile(path.join(dir, 'key'));
    });

    const optsFor = async (workDir: string, loadvm?: string) => ({
      qemu: host.qemu.path,
      arch: host.qemuArch,
      machine: host.qemu.machine,
      accel: host.accel,
      memoryMb: 1024,
      cpus: 2,
      firmwareFormat: host.firmware.format,
      seed: true,
      name: `engine-${arch}`,
      efiCode: host.firmware.code,
      efiVars: path.join(dir, 'efivars.qcow2'),
      disk: path.join(dir, 'disk.qcow2'),
      seedIso: path.join(dir, 'seed.iso'),
      workDir,
      user: 'ryra',
      privateKey: key.privateKey,
      loadvm,
    });

    test('key file is private', () => {
      assert.equal(fs.statSync(path.join(dir, 'key')).mode & 0o777, 0o600);
      assert.match(fs.readFileSync(path.join(dir, 'key.pub'), 'utf8'), /^ssh-ed25519 /);
    });

    test('cold boot → SSH → cloud-init → savevm → restore keeps state', async () => {
      await createOverlay(image, path.join(dir, 'disk.qcow2'), { size: '8G' });
      await convert(host.firmware.vars, path.join(dir, 'efivars.qcow2'), { srcFormat: host.firmware.format });
      writeSeedIso(path.join(dir, 'seed.iso'), { publicKey: key.publicKey, hostname: `engine-${arch}` });

      // A kernel panic at boot (QEMU 7.2 multi-threaded TCG racing with the kernel's code patching)
      // ends the wait within seconds; like the layer builders, try such a boot once more.
      let cold = await Machine.spawn(await optsFor(makeWorkDir('cold', root.dir)));
      machines.push(cold);
      let coldMs: number;
      try {
        coldMs = await cold.waitReady(15 * 60_000);
      } catch (err) {
        if (!(err instanceof GuestPanicError)) throw err;
        await cold.destroy();
        await createOverlay(image, path.join(dir, 'disk.qcow2'), { size: '8G' });
        cold = await Machine.spawn(await optsFor(makeWorkDir('cold', root.dir)));
        machines.push(cold);
        coldMs = await cold.waitReady(15 * 60_000);
      }
      const uname = await cold.check('uname -m', 'uname');
      assert.equal(uname.stdout.trim(), arch === 'amd64' ? 'x86_64' : 'aarch64');
      const warning = await cold.waitCloudInit(10 * 60_000);
      assert.equal(warning, undefined, `cloud-init: ${warning}`);
      assert.equal((await cold.check('whoami', 'whoami')).stdout.trim(), 'ryra');
      await cold.check('echo kept-across-restore > ~/marker && sync', 'write marker');

      // Forwarding is bound to loopback: reachable on 127.0.0.1, refused on the host's other address.
      assert.equal(await tcpConnect('127.0.0.1', cold.sshPort), 'open');
      const other = nonLoopbackAddress();
      assert.ok(other, 'this host has a non-loopback IPv4 address to test against');
      assert.notEqual(await tcpConnect(other, cold.sshPort), 'open');

      const saveMs = await cold.saveSnapshot('ready');
      layout = layoutOf(cold.spec);
      await cold.destroy();

      const restored = await Machine.spawn({ ...(await optsFor(makeWorkDir('restore', root.dir), 'ready')), ...layoutOf(cold.spec) });
      machines.push(restored);
      const restoreMs = await restored.waitReady(5 * 60_000);
      assert.equal((await restored.check('cat ~/marker', 'read marker')).stdout.trim(), 'kept-across-restore');
      await restored.destroy();
      timings.push(`${arch}: cold boot→SSH ${(coldMs / 1000).toFixed(1)} s, savevm ${(saveMs / 1000).toFixed(1)} s, restore→SSH ${(restoreMs / 1000).toFixed(1)} s`);
      assert.ok(restoreMs < coldMs, 'restore is faster than a cold boot');
    });

    test('a guest whose kernel panics fails the wait within seconds, with the serial tail', async () => {
      assert.ok(layout, 'the first test made the snapshot this one restores');
      const m = await Machine.spawn({ ...(await optsFor(makeWorkDir('panics', root.dir), 'ready')), ...layout });
      machines.push(m);
      try {
        await m.waitReady(5 * 60_000);
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

    test('a QEMU that dies during boot fails the wait within seconds, with the serial tail', async () => {
      await createOverlay(image, path.join(dir, 'disk.qcow2'), { size: '8G' });
      await convert(host.firmware.vars, path.join(dir, 'efivars.qcow2'), { srcFormat: host.firmware.format });
      // A deep work dir too: QEMU's sockets must not inherit its length (unix paths stop at 107 bytes).
      const deep = path.join(root.dir, 'a-rather-long-directory-name-like-a-runner-cache'.repeat(2), 'deeper');
      fs.mkdirSync(deep, { recursive: true });
      const m = await Machine.spawn(await optsFor(makeWorkDir('dies', deep)));
      assert.ok(m.spec.serialLog.length > 120);
      machines.push(m);
      const kill = setTimeout(() => process.kill(m.pid, 'SIGKILL'), 8000);
      const start = Date.now();
      try {
        await assert.rejects(m.waitReady(15 * 60_000), (err: Error) => {
          assert.ok(err instanceof QemuExitedError, err.message);
          assert.match(err.message, /Serial console .*last lines/);
          return true;
        });
        assert.ok(Date.now() - start < 15_000, `the wait ended ${Date.now() - start} ms after start`);
      } finally {
        clearTimeout(kill);
        await m.destroy();
      }
      assert.equal(fs.existsSync(m.spec.qmpSocket), false, 'work dir removed');
    });
  });
}
