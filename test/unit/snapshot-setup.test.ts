// The snapshot setup (SNAPSHOT_SETUP), run by the host's bash as the guest runs it (`bash -s`, the
// script on stdin), in a temp HOME with a PATH of stand-ins only: the podman and user-unit part runs
// only where podman is installed (a guest without it, and without a user session bus, keeps its
// snapshot), with the seed's exact config files there; a failed command is named on stderr.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { SNAPSHOT_SETUP, SNAPSHOT_SETUP_SHELL } from '../../src/layers/snapshot.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'snapshot-setup-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The seed's files (../shared/seed/image.rs.txt, its setup_cmd), byte for byte. */
const SEED_STORAGE_CONF = '[storage]\ndriver = "overlay"\n[storage.options]\nadditionalimagestores = ["/mnt/images"]\n';
const SEED_REGISTRIES_CONF = 'unqualified-search-registries = ["docker.io"]\n';

/** A program on the host's PATH, as an absolute path (the script's own PATH holds stand-ins only). */
function onHostPath(name: string): string {
  for (const d of (process.env.PATH ?? '').split(path.delimiter)) {
    const f = path.join(d, name);
    if (d && fs.existsSync(f)) return f;
  }
  throw new Error(`${name} is not on this host's PATH`);
}

/**
 * Runs the setup in a fresh HOME. Stand-ins log their arguments, one call a line: `sudo` (it runs
 * nothing, so the host's /mnt is never touched), `systemctl` (exit `systemctl`, and the message a
 * guest without a user session bus prints), and `podman` when `podman` is true. mkdir is the host's.
 */
function runSetup(o: { podman: boolean; systemctl: number }) {
  const home = fs.mkdtempSync(path.join(tmp, 'home-'));
  const bin = path.join(home, 'bin');
  const calls = path.join(home, 'calls.log');
  fs.mkdirSync(bin);
  const standIn = (name: string, body = 'exit 0') =>
    fs.writeFileSync(path.join(bin, name), `#!${onHostPath('sh')}\necho "${name} $*" >> '${calls}'\n${body}\n`, { mode: 0o755 });
  standIn('sudo');
  standIn('systemctl', o.systemctl ? `echo 'Failed to connect to user scope bus via local transport: $DBUS_SESSION_BUS_ADDRESS and $XDG_RUNTIME_DIR not defined' >&2\nexit ${o.systemctl}` : 'exit 0');
  if (o.podman) standIn('podman');
  fs.symlinkSync(onHostPath('mkdir'), path.join(bin, 'mkdir'));
  const [shell, ...args] = SNAPSHOT_SETUP_SHELL.split(' ');
  const r = spawnSync(onHostPath(shell), args, { input: SNAPSHOT_SETUP, env: { HOME: home, PATH: bin }, encoding: 'utf8', timeout: 10_000 });
  const conf = (f: string) => {
    const file = path.join(home, '.config', 'containers', f);
    return fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : undefined;
  };
  return {
    code: r.status,
    stderr: r.stderr,
    calls: fs.existsSync(calls) ? fs.readFileSync(calls, 'utf8').trim().split('\n') : [],
    storage: conf('storage.conf'),
    registries: conf('registries.conf'),
    containersDir: fs.existsSync(path.join(home, '.config', 'containers')),
  };
}

test('snapshot setup without podman: /mnt/images made, no podman config, user units left alone (no session bus needed)', () => {
  const r = runSetup({ podman: false, systemctl: 1 });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.calls, ['sudo mkdir -p /mnt/images']);
  assert.equal(r.containersDir, false);
  assert.equal(r.stderr, '');
});

test("snapshot setup with podman: the seed's two config files, exactly, and the user units reloaded", () => {
  const r = runSetup({ podman: true, systemctl: 0 });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.storage, SEED_STORAGE_CONF);
  assert.equal(r.registries, SEED_REGISTRIES_CONF);
  assert.deepEqual(r.calls, ['sudo mkdir -p /mnt/images', 'systemctl --user daemon-reload']);
});

test('snapshot setup with podman where user units cannot be reloaded: fails, naming the command and its exit status', () => {
  const r = runSetup({ podman: true, systemctl: 1 });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /Failed to connect to user scope bus/);
  assert.match(r.stderr, /^snapshot setup: `systemctl --user daemon-reload` failed \(exit 1\)$/m);
  // The commands before it ran.
  assert.equal(r.storage, SEED_STORAGE_CONF);
});
