// `base-packages: false` on a guest without a user session bus (issue 29), on a real guest (amd64,
// TCG): a prepare script purges the fixture's libpam-systemd (and dbus-user-session, when there),
// so `systemctl --user` has no bus, as on a minimal image. The snapshot setup configures podman and
// user units only where podman is installed, so the snapshot is built, and a VM that `ryra-vm boot`
// restores from it has jq, no podman, and the cache dir's `images` folder as its read-only share
// (seen in its QEMU's command line and as the guest's 9p device: the fixture's cloud kernel has no
// 9p driver to mount it with). One prepared build and one snapshot build in a cache dir of its own.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { killAllCliRuns, runCli } from '../support/cli.js';
import { ensureFixture } from '../support/fixtures.js';
import { LIGHT, prepareArgs } from '../support/shared.js';

const root = tempRoot('no-user-bus');
const env = { RYRA_VM_RUNTIME_DIR: path.join(root.dir, 'rt'), HOME: path.join(root.dir, 'home'), TMPDIR: root.dir };
const figures: string[] = [];

after(async () => {
  await runCli(['stop', '--all'], env).done;
  killAllCliRuns();
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`no-user-bus figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

/** Run in the prepared layer's build, after the packages: no pam_systemd, so no user session bus. */
const PREPARE = `sudo DEBIAN_FRONTEND=noninteractive apt-get purge -y libpam-systemd
if dpkg -s dbus-user-session >/dev/null 2>&1; then sudo DEBIAN_FRONTEND=noninteractive apt-get purge -y dbus-user-session; fi
`;

/** In the restored VM: each fact on its own line. */
const CHECK = [
  'jq --version',
  'command -v podman || echo no-podman',
  'test -e ~/.config/containers || echo no-podman-config',
  'if out=$(systemctl --user daemon-reload 2>&1); then echo user-bus; else echo "no-user-bus: $out"; fi',
  // A virtio device of type 9 (9P transport): the share, whether or not the kernel can mount it.
  'if grep -qx 0x0009 /sys/bus/virtio/devices/*/device; then echo 9p-device; else echo no-9p-device; fi',
].join('\n');

test('base-packages false on a guest without a user session bus: the snapshot is built and restores, with jq, without podman, the share the cache dir\'s images', { timeout: 40 * 60_000 }, async () => {
  const fx = ensureFixture('amd64');
  const cacheDir = path.join(root.dir, 'cache');
  const script = path.join(root.dir, 'no-user-bus.sh');
  fs.writeFileSync(script, PREPARE);
  const p = await runCli(prepareArgs(LIGHT, fx, cacheDir, ['--prepare', script]), env).done;
  assert.equal(p.code, 0, `prepare failed:\n${p.stderr.slice(-4000)}`);
  const record = JSON.parse(fs.readFileSync(JSON.parse(p.stdout).manifest, 'utf8')) as RunRecord;
  const sources = Object.fromEntries(record.layers.map((l) => [l.layer, l.source]));
  assert.equal(sources.prepared, 'built', JSON.stringify(record.layers));
  assert.equal(sources.snapshot, 'built', `${JSON.stringify(record.layers)}\n${p.stderr.slice(-3000)}`);
  assert.doesNotMatch(p.stderr, /failed to create the snapshot layer/);
  assert.ok(record.restore, 'the run record names a snapshot to restore');
  figures.push(`prepare (raw + prepared + snapshot) ${(p.ms / 1000).toFixed(0)} s`);

  const b = await runCli(['boot', '--name', 'nobus', '--json'], env).done;
  assert.equal(b.code, 0, b.stderr.slice(-4000));
  const vm = JSON.parse(b.stdout) as { mode: string; readyMs: number; pid: number };
  assert.equal(vm.mode, 'restore', b.stderr.slice(-3000));
  // The VM's QEMU exports the cache dir's `images` folder, read-only (not an empty dir of its own).
  const argv = fs.readFileSync(`/proc/${vm.pid}/cmdline`, 'utf8').split('\0');
  assert.equal(argv[argv.indexOf('-virtfs') + 1], `local,path=${path.join(cacheDir, 'images')},mount_tag=images,security_model=none,readonly=on`);
  figures.push(`boot (restore → SSH and setup) ${(vm.readyMs / 1000).toFixed(1)} s`);

  const s = await runCli(['ssh', 'nobus', '--', CHECK], env).done;
  assert.equal(s.code, 0, s.stderr);
  const lines = s.stdout.trim().split('\n');
  assert.match(lines[0], /^jq-1\./);
  assert.deepEqual(lines.slice(1, 3), ['no-podman', 'no-podman-config']);
  // The guest this test means: the old setup's `systemctl --user daemon-reload` fails here.
  assert.match(lines[3], /^no-user-bus: .*bus/i);
  assert.deepEqual(lines.slice(4), ['9p-device']);
});
