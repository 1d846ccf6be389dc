// The layer pipeline through the bundled CLI on real guests (TCG): cold builds, packages installed
// from Debian's archive inside the guest, snapshot restore, reruns that build nothing, a tampered
// image, a run killed mid-prepare, concurrent runs, a manifest from another QEMU, and the browser layer.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { OutputValues } from '../../src/contract.js';
import type { LayerResult } from '../../src/layers/pipeline.js';
import { restoreMachine } from '../../src/vm/boot.js';
import { snapshotOf } from '../../src/vms.js';
import type { Machine } from '../../src/vm/machine.js';
import type { VmLayout } from '../../src/vm/spec.js';
import { ensureFixture, testArches, type Fixture } from '../support/fixtures.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { killAllCliRuns, readJson, runCli } from '../support/cli.js';

const root = tempRoot('pipeline');
const machines: Machine[] = [];
const figures: string[] = [];

after(async () => {
  killAllCliRuns();
  for (const m of machines) await m.destroy().catch(() => {});
  await new Promise((r) => setTimeout(r, 500));
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`pipeline figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

interface OutputsFile {
  outputs: OutputValues;
  layout?: VmLayout;
  browserLayout?: VmLayout;
  layers: LayerResult[];
}

function prepareArgs(arch: string, fx: Fixture, cacheDir: string, extra: string[] = []): string[] {
  return ['prepare', '--json', '--arch', arch, '--kvm', 'false', '--memory', '1024', '--packages', 'jq libpam-systemd', '--image-url', fx.image, '--image-checksum', fx.checksum, '--cache-dir', cacheDir, ...extra];
}

let runN = 0;
function prepare(arch: string, fx: Fixture, cacheDir: string, env: NodeJS.ProcessEnv = {}, extra: string[] = []) {
  const rt = path.join(root.dir, `runtime-${++runN}`);
  const run = runCli(prepareArgs(arch, fx, cacheDir, extra), { RYRA_VM_RUNTIME_DIR: rt, TMPDIR: root.dir, ...env });
  const result = async () => {
    const r = await run.done;
    assert.equal(r.code, 0, `prepare failed:\n${r.stderr.slice(-4000)}`);
    const outputs = JSON.parse(r.stdout) as OutputValues;
    const file = readJson<OutputsFile>(outputs.manifest);
    return { ...r, outputs, file, sources: Object.fromEntries(file.layers.map((l) => [l.layer, l.source])) };
  };
  return { run, result };
}

/** Restores a VM from the outputs' snapshot files (or the browser snapshot's) and runs `cmd` in it. */
async function inRestoredVm(o: OutputsFile, cmd: string, browser = false): Promise<string> {
  const workDir = fs.mkdtempSync(path.join(root.dir, 'restore-'));
  const out = o.outputs;
  const { files, image } = snapshotOf(out, browser);
  const { machine } = await restoreMachine(
    {
      name: 'check',
      qemu: out.qemu,
      efiCode: out['efi-code'],
      files,
      backing: image,
      layout: (browser ? o.browserLayout : o.layout)!,
      workDir,
      key: { privateKey: fs.readFileSync(o.outputs['ssh-key'], 'utf8'), publicKey: o.outputs['ssh-public-key'] },
      sshTimeoutMs: 300_000,
  });
  machines.push(machine);
  try {
    return (await machine.check(cmd, cmd)).stdout.trim();
  } finally {
    await machine.destroy();
  }
}

describe('raw layer refuses a tampered image', () => {
  test('one byte changed: fails naming both digests, keeps nothing', async () => {
    const fx = ensureFixture(testArches()[0]);
    const tampered = path.join(root.dir, 'tampered.qcow2');
    fs.copyFileSync(fx.image, tampered);
    const fd = fs.openSync(tampered, 'r+');
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, 70_000);
    b[0] ^= 0xff;
    fs.writeSync(fd, b, 0, 1, 70_000);
    fs.closeSync(fd);
    const cacheDir = path.join(root.dir, 'cache-tampered');
    // The same bytes already sit under the raw layer's file name with no manifest (as an earlier
    // tool would leave them): not adopted, since the digest is not the expected one.
    fs.mkdirSync(cacheDir, { recursive: true });
    fs.copyFileSync(tampered, path.join(cacheDir, path.basename(fx.image)));
    const r = await runCli(prepareArgs(testArches()[0], { ...fx, image: tampered }, cacheDir), { RYRA_VM_RUNTIME_DIR: path.join(root.dir, 'rt-t') }).done;
    assert.equal(r.code, 1);
    assert.match(r.stderr, /has no manifest: checking its sha512 before using it\n.*it is not the published image \(sha512:[0-9a-f]{16}…\): downloading afresh/);
    assert.match(r.stderr, new RegExp(`checksum mismatch for .*tampered.qcow2: expected sha512:${fx.sha512}, got sha512:[0-9a-f]{128}`));
    const left = fs.readdirSync(cacheDir).filter((f) => f.endsWith('.qcow2') || f.endsWith('.partial'));
    assert.deepEqual(left, []);
  });
});

for (const arch of testArches()) {
  describe(`pipeline ${arch}`, { timeout: 80 * 60_000 }, () => {
    let fx: Fixture;
    const cacheDir = path.join(root.dir, `cache-${arch}`);
    // amd64 prepares with the catalogue's full Debian list (podman & co.); arm64 with jq alone, to keep TCG time sane.
    const fullList = arch === 'amd64';
    const env = fullList ? {} : { RYRA_VM_BASE_PACKAGES: '' };

    before(() => {
      fx = ensureFixture(arch);
    });

    // The kill and concurrency scenarios run once, on the first arch; every arch does a cold build.
    const first = arch === testArches()[0];

    test(first ? 'a run killed mid-prepare, then two concurrent runs: both succeed, each layer built once' : 'cold build', async () => {
      let ra;
      if (first) {
        const killed = prepare(arch, fx, cacheDir, env);
        await killed.run.waitFor(/prepared-\w+: SSH ready after/);
        killed.run.killGroup();
        await killed.run.done;
        assert.ok(fs.readdirSync(cacheDir).some((f) => f.includes('.ryra-tmp-')), 'the killed run left its temp work behind');

        const a = prepare(arch, fx, cacheDir, env);
        const b = prepare(arch, fx, cacheDir, env);
        const [r1, r2] = await Promise.all([a.result(), b.result()]);
        for (const layer of ['prepared', 'snapshot']) {
          const built = [r1.sources[layer], r2.sources[layer]].filter((s) => s === 'built').length;
          assert.equal(built, 1, `${layer} built once: ${r1.sources[layer]} / ${r2.sources[layer]}`);
        }
        assert.deepEqual(r1.outputs, { ...r2.outputs, manifest: r1.outputs.manifest });
        assert.ok(!fs.readdirSync(cacheDir).some((f) => f.includes('.ryra-tmp-')), 'stale temps were cleaned');
        ra = r1.ms > r2.ms ? r1 : r2;
      } else {
        // The raw image is already here under the seed's file name, with no manifest (the Rust tool
        // kept none): its digest checks out, so it is adopted and the URL is never read.
        fs.mkdirSync(cacheDir, { recursive: true });
        fs.copyFileSync(fx.image, path.join(cacheDir, path.basename(fx.image)));
        ra = await prepare(arch, { ...fx, image: path.join(root.dir, 'nowhere', path.basename(fx.image)) }, cacheDir, env).result();
        assert.deepEqual(ra.sources, { raw: 'local', prepared: 'built', snapshot: 'built' });
        assert.match(ra.file.layers.find((l) => l.layer === 'raw')?.note ?? '', /^adopted an unrecorded file/);
      }
      assert.equal(ra.outputs.snapshot, 'true');
      assert.equal(ra.outputs.accel, 'tcg');
      assert.equal(fs.statSync(ra.outputs['ssh-key']).mode & 0o777, 0o600);
      figures.push(`${arch}: cold prepare (raw+prepared+snapshot${fullList ? ', full package list' : ''}) ${(ra.ms / 1000).toFixed(0)} s`);

      const out = await inRestoredVm(ra.file, fullList ? 'jq --version && podman --version' : 'jq --version');
      assert.match(out, /^jq-1\.\d/);
      if (fullList) assert.match(out, /podman version \d/);

      const again = await prepare(arch, fx, cacheDir, env).result();
      assert.deepEqual(Object.values(again.sources).filter((s) => s !== 'local'), [], JSON.stringify(again.sources));
      assert.equal(again.sources.raw, undefined, 'a valid prepared layer needs no raw layer');
      assert.ok(again.ms < 10_000, `all-valid rerun took ${again.ms} ms`);
      figures.push(`${arch}: all-valid rerun ${(again.ms / 1000).toFixed(1)} s`);
    });

    test('a snapshot manifest from another QEMU version is rebuilt, not loaded', { skip: arch !== testArches()[0] && 'once is enough' }, async () => {
      const m = fs.readdirSync(cacheDir).find((f) => /-snapshot-1024\.manifest\.json$/.test(f))!;
      const file = path.join(cacheDir, m);
      const manifest = readJson<{ inputs: { qemu: string } }>(file);
      manifest.inputs.qemu = '6.2.0';
      fs.writeFileSync(file, JSON.stringify(manifest));
      const r = await prepare(arch, fx, cacheDir, env).result();
      assert.equal(r.sources.prepared, 'local');
      assert.equal(r.sources.snapshot, 'built');
      assert.match(r.stderr, /snapshot layer .* not usable: built with other qemu \("6\.2\.0" ≠ "\d+\.\d+/);
      assert.match(await inRestoredVm(r.file, 'jq --version'), /^jq-1/);
    });

    test('browser: true builds the browser layer and its own snapshot on the prepared layer', { skip: arch !== testArches()[0] && 'once is enough' }, async () => {
      // A stand-in for the seed's script (bun.sh and playwright's CDN are unreachable here): its first
      // line as the seed has it (apt from Debian's archive), then files where the real one puts them.
      const script = path.join(root.dir, 'browser-install.sh');
      fs.writeFileSync(
        script,
        'set -e\nsudo apt-get update -qq && sudo apt-get install -y -qq unzip >/dev/null 2>&1\n' +
          'sudo mkdir -p /opt/playwright && sudo chown $USER:$USER /opt/playwright\n' +
          'echo stand-in > /opt/playwright/marker\necho \'export BROWSER_STAND_IN=1\' >> $HOME/.bashrc\n',
      );
      const benv = { ...env, RYRA_VM_BROWSER_SCRIPT: script };
      const r = await prepare(arch, fx, cacheDir, benv, ['--browser']).result();
      assert.deepEqual(r.sources, { prepared: 'local', snapshot: 'local', browser: 'built', 'browser-snapshot': 'built' });
      assert.equal(r.file.browserLayout?.memoryMb, 1024);
      for (const k of ['browser-image', 'browser-snapshot-disk', 'browser-snapshot-efivars', 'browser-snapshot-seed-iso'] as const) {
        assert.ok(fs.existsSync(r.outputs[k]), `${k}: ${r.outputs[k]}`);
      }
      // Standalone: the browser image carries the prepared layer's packages and no backing file.
      assert.doesNotMatch(execFileSync('qemu-img', ['info', r.outputs['browser-image']], { encoding: 'utf8' }), /backing file/);
      const out = await inRestoredVm(r.file, 'cat /opt/playwright/marker && unzip -v | head -1 && jq --version', true);
      assert.match(out, /^stand-in\nUnZip \d.*\njq-1/);
      const again = await prepare(arch, fx, cacheDir, benv, ['--browser']).result();
      assert.deepEqual(Object.values(again.sources).filter((x) => x !== 'local'), [], JSON.stringify(again.sources));
      figures.push(`${arch}: browser layer + its snapshot ${(r.ms / 1000).toFixed(0)} s`);
    });
  });
}
