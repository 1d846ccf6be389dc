// The bundled action run the way the runner runs it (node dist/main.js, then dist/post.js, with the
// runner's environment), against the project's local cache service driven by the real
// @actions/cache: an empty runner builds and saves every layer, a second empty runner restores
// them and builds nothing, v1 works too, faults end green with no corrupt layer used, and
// cache: false never contacts the service.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { OutputValues } from '../../src/contract.js';
import type { LayerResult } from '../../src/layers/pipeline.js';
import { restoreMachine } from '../../src/vm/boot.js';
import { snapshotOf } from '../../src/vms.js';
import type { VmLayout } from '../../src/vm/spec.js';
import { startCacheServer, type CacheProtocol, type CacheServer } from '../support/cache-server.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, testArches, type Fixture } from '../support/fixtures.js';

const root = tempRoot('action');
const arch = testArches()[0];
let server: CacheServer;
let fx: Fixture;
const figures: string[] = [];

before(async () => {
  fx = ensureFixture(arch);
  server = await startCacheServer({ dir: root.dir });
});
after(async () => {
  await server?.close();
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`action figures: ${figures.join('; ')}`);
  assert.deepEqual(left, []);
});

interface Run {
  code: number | null;
  stdout: string;
  outputs: Record<string, string>;
  summary: string;
  ms: number;
  layers: LayerResult[];
  file: { outputs: OutputValues; layout?: VmLayout };
}

/** GITHUB_OUTPUT / GITHUB_STATE files: `name<<DELIM\nvalue\nDELIM` records. */
function readCommandFile(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!fs.existsSync(file)) return out;
  const text = fs.readFileSync(file, 'utf8');
  for (const m of text.matchAll(/^([^\n<]+)<<(\S+)\n([\s\S]*?)\n\2$/gm)) out[m[1]] = m[3];
  return out;
}

function exec(script: string, env: NodeJS.ProcessEnv): Promise<{ code: number | null; signal?: string | null; stdout: string; ms: number }> {
  const start = Date.now();
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [path.resolve(`dist/${script}`)], { env, stdio: ['ignore', 'pipe', 'pipe'], cwd: env.GITHUB_WORKSPACE });
    let stdout = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stdout += d));
    c.on('close', (code, signal) => resolve({ code, signal, stdout, ms: Date.now() - start }));
  });
}

// The test image, like a minimal debootstrap, lacks the login session manager that Debian's cloud
// images have (the snapshot setup's `systemctl --user` needs it): the prepared layer adds it.
const TEST_PACKAGES = 'libpam-systemd';

let runs = 0;
/** Later steps of a job: run the `ryra-vm` that main put on PATH, with the job's environment. */
type Steps = (ryraVm: (args: string[]) => Promise<{ code: number | null; stdout: string; stderr: string; ms: number }>, outputs: Record<string, string>) => Promise<void>;

/** One job: main, later steps, then post, on a runner whose HOME, temp and workspace are its own. */
async function job(name: string, inputs: Record<string, string>, o: { protocol?: CacheProtocol; env?: Record<string, string>; steps?: Steps } = {}): Promise<Run & { post: string }> {
  const dir = path.join(root.dir, `${name}-${++runs}`);
  const f = (n: string) => path.join(dir, n);
  for (const d of ['home', 'tmp', 'work']) fs.mkdirSync(f(d), { recursive: true });
  const files = { GITHUB_OUTPUT: f('output'), GITHUB_STATE: f('state'), GITHUB_ENV: f('env'), GITHUB_PATH: f('path'), GITHUB_STEP_SUMMARY: f('summary') };
  for (const p of Object.values(files)) fs.writeFileSync(p, '');
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: f('home'),
    RUNNER_TEMP: f('tmp'),
    GITHUB_WORKSPACE: f('work'),
    GITHUB_ACTIONS: 'true',
    GITHUB_REF: 'refs/heads/main',
    RYRA_VM_BASE_PACKAGES: '',
    ...files,
    ...(o.protocol ? server.env(o.protocol) : {}),
    ...o.env,
  };
  for (const [k, v] of Object.entries({ arch, kvm: 'false', memory: '1024', 'install-deps': 'false', packages: TEST_PACKAGES, 'image-url': fx.image, 'image-checksum': fx.checksum, ...inputs })) {
    env[`INPUT_${k.toUpperCase()}`] = v;
  }
  const main = await exec('main.js', env);
  const state = readCommandFile(files.GITHUB_STATE);
  const outputs = readCommandFile(files.GITHUB_OUTPUT);
  try {
    assert.equal(main.code, 0, `main failed:\n${main.stdout.slice(-5000)}`);
    if (o.steps) {
      // The runner prepends GITHUB_PATH entries to later steps' PATH.
      const added = fs.readFileSync(files.GITHUB_PATH, 'utf8').split('\n').filter(Boolean);
      const stepEnv = { ...env, PATH: [...added, env.PATH].join(':') };
      await o.steps((args) => execCli(args, stepEnv), outputs);
    }
  } finally {
    for (const [k, v] of Object.entries(state)) env[`STATE_${k}`] = v;
    const post = await exec('post.js', env);
    assert.equal(post.code, 0, `post step failed:\n${post.stdout}`);
    (main as { post?: string }).post = post.stdout;
  }
  assert.ok(outputs.manifest, `main (exit ${main.code}, signal ${main.signal}) wrote no outputs:\n${main.stdout.slice(-2500)}`);
  const file = JSON.parse(fs.readFileSync(outputs.manifest, 'utf8'));
  return { ...main, post: (main as { post?: string }).post ?? '', outputs, summary: fs.readFileSync(files.GITHUB_STEP_SUMMARY, 'utf8'), layers: file.layers, file };
}

function execCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const start = Date.now();
  return new Promise((resolve) => {
    // By name, through PATH, as a workflow step would.
    const c = spawn('ryra-vm', args, { env, stdio: ['ignore', 'pipe', 'pipe'], cwd: env.GITHUB_WORKSPACE });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('close', (code) => resolve({ code, stdout, stderr, ms: Date.now() - start }));
  });
}

function treeBytes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    const p = path.join(e.parentPath, e.name);
    if (e.isFile()) out[path.relative(dir, p)] = fs.readFileSync(p).toString('base64');
  }
  return out;
}

const sources = (r: Run) => Object.fromEntries(r.layers.map((l) => [l.layer, l.source]));

async function restoresToSsh(r: Run): Promise<number> {
  const workDir = fs.mkdtempSync(path.join(root.dir, 'vm-'));
  const { files, image } = snapshotOf(r.file.outputs, false);
  const { machine, readyMs } = await restoreMachine(
    {
      name: 'from-outputs',
      qemu: r.outputs.qemu,
      efiCode: r.outputs['efi-code'],
      files,
      backing: image,
      layout: r.file.layout!,
      workDir,
      key: { privateKey: fs.readFileSync(r.outputs['ssh-key'], 'utf8'), publicKey: r.outputs['ssh-public-key'] },
      sshTimeoutMs: 300_000,
  });
  try {
    assert.equal((await machine.check('whoami', 'whoami')).stdout.trim(), 'ryra');
  } finally {
    await machine.destroy();
  }
  return readyMs;
}

describe(`action end to end (${arch}, TCG)`, { timeout: 80 * 60_000 }, () => {
  let run1: Run;

  test('v2, empty runner: builds every layer and saves every entry', async () => {
    run1 = await job('run1', {}, { protocol: 'v2' });
    assert.deepEqual(sources(run1), { raw: 'built', prepared: 'built', snapshot: 'built' });
    assert.equal(run1.outputs['cache-hit'], '');
    assert.equal(run1.outputs.snapshot, 'true');
    const keys = server.entries().map((e) => e.key).sort();
    assert.equal(keys.length, 4, keys.join(', '));
    assert.ok(keys.includes('ryra-vm-v1-ssh-key'), 'the SSH key every snapshot accepts is shared too');
    assert.ok(keys.some((k) => /^ryra-vm-v1-snapshot-debian-13-\w+-m1024-/.test(k)));
    assert.match(run1.summary, /<th>layer<\/th>.*<td>prepared<\/td><td>built/s);
    assert.equal(fs.statSync(run1.outputs['ssh-key']).mode & 0o777, 0o600);
  });

  test('v2, another empty runner (other HOME and cache-dir): restores, builds nothing, same outputs; later steps use ryra-vm; post cleans up', async () => {
    const local = path.join(root.dir, 'payload');
    fs.mkdirSync(path.join(local, 'sub', 'deeper'), { recursive: true });
    fs.writeFileSync(path.join(local, 'a.bin'), Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7919) % 251)));
    fs.writeFileSync(path.join(local, 'sub', 'b.txt'), 'hello\n');
    fs.writeFileSync(path.join(local, 'sub', 'deeper', 'empty'), '');
    const bootTimes: number[] = [];

    const run2 = await job('run2', {}, {
      protocol: 'v2',
      steps: async (vm) => {
        // Two VMs from one snapshot at once: distinct ports and disks.
        const [a, b] = await Promise.all([vm(['boot', '--name', 'a', '--json']), vm(['boot', '--name', 'b', '--json'])]);
        assert.equal(a.code, 0, a.stderr);
        assert.equal(b.code, 0, b.stderr);
        const va = JSON.parse(a.stdout);
        const vb = JSON.parse(b.stdout);
        assert.notEqual(va.port, vb.port);
        assert.equal(va.mode, 'restore');
        bootTimes.push(va.readyMs, vb.readyMs);

        assert.equal((await vm(['ssh', 'a', '--', 'echo only-in-a > ~/mark'])).code, 0);
        assert.equal((await vm(['ssh', 'a', '--', 'cat ~/mark'])).stdout.trim(), 'only-in-a');
        assert.equal((await vm(['ssh', 'b', '--', 'test -e ~/mark'])).code, 1, 'a file written in one VM is absent in the other');

        const up = await vm(['cp', local, 'a:/tmp/payload']);
        assert.equal(up.code, 0, up.stderr);
        const back = path.join(root.dir, 'back');
        const down = await vm(['cp', 'a:/tmp/payload', back]);
        assert.equal(down.code, 0, down.stderr);
        assert.deepEqual(treeBytes(back), treeBytes(local), 'cp in and out round-trips the directory byte-for-byte');

        const before = Date.now() / 1000;
        const d = await vm(['ssh', 'b', '--', 'date +%s.%N']);
        const afterT = Date.now() / 1000;
        const guest = Number(d.stdout.trim());
        assert.ok(guest > before - 2 && guest < afterT + 2, `guest clock ${guest} vs host ${before}..${afterT}`);

        const f = await vm(['ssh', 'a', '--', 'false']);
        assert.equal(f.code, 1);
        const unknown = await vm(['ssh', 'nope', '--', 'true']);
        assert.equal(unknown.code, 2);
        assert.equal(unknown.stderr.trim(), 'ryra-vm: no VM named nope (running: a, b)');

        const list = await vm(['list']);
        assert.match(list.stdout, /^a\s+\d+\s+\d+\s+\d+s\s+debian-13-prepared-\w+\.qcow2$/m);
        assert.equal((await vm(['stop', 'b'])).code, 0);
        assert.equal(JSON.parse((await vm(['list', '--json'])).stdout).length, 1);
        // a stays running: the post step must stop it.
      },
    });
    assert.deepEqual(sources(run2), { prepared: 'actions cache', snapshot: 'actions cache' });
    assert.equal(run2.outputs['cache-hit'], 'prepared,snapshot');
    const norm = (r: Run) => {
      const dir = path.dirname(r.outputs.image);
      return Object.fromEntries(Object.entries(r.outputs).filter(([k]) => !['manifest', 'cache-hit'].includes(k)).map(([k, v]) => [k, v.replaceAll(dir, '<cache>')]));
    };
    assert.deepEqual(norm(run2), norm(run1));
    assert.equal(fs.readFileSync(run2.outputs['ssh-key'], 'utf8'), fs.readFileSync(run1.outputs['ssh-key'], 'utf8'));
    assert.equal(fs.statSync(run2.outputs['ssh-key']).mode & 0o777, 0o600);
    assert.match(run2.post, /stopped VM a \(left running by a later step\)/);
    assert.deepEqual(qemuProcessesUnder(root.dir), [], 'post left no VM running');
    assert.match(run2.summary, /<th>VM<\/th>.*<td>a<\/td><td>restore<\/td>/s);
    figures.push(`run1 ${(run1.ms / 1000).toFixed(0)} s, run2 main ${(run2.ms / 1000).toFixed(1)} s (ratio ${(run1.ms / run2.ms).toFixed(1)}×), ryra-vm boot → SSH ${bootTimes.map((t) => (t / 1000).toFixed(1) + ' s').join(', ')}`);
  });

  test('cache: false never contacts the service; ryra-vm stop --all leaves no qemu', async () => {
    // Run 1's runner again, at a memory size nobody built: the snapshot is built, nothing is looked up or saved.
    const before = server.requests.length;
    const run5 = await job('run5', { cache: 'false', memory: '1280', 'cache-dir': path.dirname(run1.outputs.image) }, {
      protocol: 'v2',
      steps: async (vm) => {
        assert.equal((await vm(['boot'])).code, 0);
        assert.equal((await vm(['boot'])).code, 0);
        assert.deepEqual(JSON.parse((await vm(['list', '--json'])).stdout).map((v: { name: string }) => v.name), ['vm1', 'vm2']);
        assert.equal((await vm(['stop', '--all'])).code, 0);
        assert.deepEqual(qemuProcessesUnder(root.dir), []);
      },
    });
    assert.equal(server.requests.length, before, 'no request reached the cache service');
    assert.deepEqual(sources(run5), { prepared: 'local', snapshot: 'built' });
  });

  test('snapshot: false: outputs say so, and ryra-vm boot cold-boots the prepared image', async () => {
    const run6 = await job('run6', { cache: 'false', snapshot: 'false', 'cache-dir': path.dirname(run1.outputs.image) }, {
      steps: async (vm, outputs) => {
        assert.equal(outputs.snapshot, 'false');
        assert.equal(outputs['snapshot-disk'] ?? '', '');
        const boot = await vm(['boot', '--name', 'coldvm', '--memory', '1024']);
        assert.equal(boot.code, 0, boot.stderr);
        assert.match(boot.stdout, /^coldvm port=\d+ pid=\d+ ready in [\d.]+ s \(cold\)$/m);
        // The seed names the guest after the VM; cloud-init finished before boot returned.
        assert.match((await vm(['ssh', 'coldvm', '--', 'hostname; cloud-init status'])).stdout, /^coldvm\nstatus: (degraded )?done\n/);
        assert.equal((await vm(['stop', 'coldvm'])).code, 0);
        assert.deepEqual(qemuProcessesUnder(root.dir), []);
      },
    });
    assert.deepEqual(sources(run6), { prepared: 'local' });
  });

  test('v1: restores through the REST protocol and saves a new snapshot size with it', async () => {
    const before = server.requests.length;
    const run3 = await job('run3', { memory: '1536' }, { protocol: 'v1' });
    assert.deepEqual(sources(run3), { prepared: 'actions cache', snapshot: 'built' });
    const ops = new Set(server.requests.slice(before).map((r) => r.op));
    assert.ok(ops.has('v1.getCacheEntry') && ops.has('v1.reserveCache') && ops.has('v1.commitCache'), [...ops].join());
    assert.ok(!ops.has('twirp.GetCacheEntryDownloadURL'));
    assert.ok(server.entries().some((e) => e.via === 'v1' && /-m1536-/.test(e.key)));
  });

  test('faults: 429 and 503 on lookups, a stalled and a truncated download — green, nothing corrupt used', async () => {
    // The job's downloads, in order: SSH key (stalled mid-body: the toolkit's idle timeout ends it), SSH key again
    // (adopted after the duplicate save), prepared, snapshot (truncated: rejected, rebuilt; its save is a duplicate).
    const f429 = server.inject({ kind: '429', op: 'twirp.GetCacheEntryDownloadURL', retryAfter: 1 });
    const f503 = server.inject({ kind: '503', op: 'twirp.GetCacheEntryDownloadURL' });
    // The n-th download of this job, by arrival order (whichever fault's matcher sees a request records it).
    const gets = new Set<number>();
    const nth = (n: number) => (r: { op: string; seq: number }) => {
      if (r.op !== 'blob.get') return false;
      gets.add(r.seq);
      return [...gets].sort((a, b) => a - b).indexOf(r.seq) === n - 1;
    };
    const stall = server.inject({ kind: 'stall', match: nth(1), afterBytes: 10 });
    const truncate = server.inject({ kind: 'truncate', match: nth(4) });
    const run4 = await job('run4', {}, { protocol: 'v2' });
    server.clearFaults();
    for (const [name, f] of Object.entries({ f429, f503, stall, truncate })) assert.equal(f.hits, 1, `${name} was applied`);
    assert.deepEqual(sources(run4), { prepared: 'actions cache', snapshot: 'built' });
    assert.equal(run4.layers.find((l) => l.layer === 'snapshot')?.note, 'another job saved it first');
    assert.equal(fs.readFileSync(run4.outputs['ssh-key'], 'utf8'), fs.readFileSync(run1.outputs['ssh-key'], 'utf8'), 'the cached key was adopted');
    await restoresToSsh(run4);
  });


});
