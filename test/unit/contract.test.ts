// action.yml, the code's names, the README tables and dist/ agree; the bundled action fails bad
// inputs before doing anything.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { parse } from 'yaml';
import { Inputs, Outputs } from '../../src/contract.js';
import { INPUT_DEFAULTS } from '../../src/inputs.js';
import { BAD_INPUTS } from './inputs.test.js';

const action = parse(fs.readFileSync('action.yml', 'utf8')) as {
  inputs: Record<string, { description: string; default: string }>;
  outputs: Record<string, { description: string }>;
  runs: Record<string, string>;
};
const readme = fs.readFileSync('README.md', 'utf8');

/** Every module under src/, with the src/ modules it imports (relative imports, resolved). */
function srcImports(): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const f = path.join(d, e.name);
      if (e.isDirectory()) walk(f);
      else if (f.endsWith('.ts')) {
        const text = fs.readFileSync(f, 'utf8');
        const deps = [...text.matchAll(/^(?:import|export)[^;]*? from '(\.[^']+)'/gms)].map((m) => path.join(path.dirname(f), m[1]).replace(/\.js$/, '.ts'));
        out.set(f, deps);
      }
    }
  };
  walk('src');
  return out;
}

describe('contract', () => {
  test('dependencies point down: cache/ imports no layers/, vm/ neither host/ nor layers/ (no cycle); only the entry points read the test hooks', () => {
    const mods = srcImports();
    assert.ok(mods.size > 30, `found ${mods.size} modules`);
    const bad: string[] = [];
    const rule = (from: string, to: string) => {
      for (const [f, deps] of mods) if (f.startsWith(`src/${from}/`)) for (const d of deps) if (d.startsWith(`src/${to}/`)) bad.push(`${f} imports ${d}`);
    };
    rule('cache', 'layers');
    rule('vm', 'host');
    rule('vm', 'layers');
    // The hooks' variables are named in env.ts alone, and only the entry points read them.
    for (const f of mods.keys()) {
      const text = fs.readFileSync(f, 'utf8');
      if (f !== 'src/env.ts' && /RYRA_VM_(TEST_|TIMEOUT_SCALE|BROWSER_SCRIPT|CACHE_\w*TIMEOUT)/.test(text.replace(/^\s*(\/\/|\*).*$/gm, ''))) bad.push(`${f} names a test hook's variable`);
      if (!['src/env.ts', 'src/action.ts', 'src/cli.ts'].includes(f) && /\breadHooks\(/.test(text)) bad.push(`${f} reads the test hooks`);
    }
    assert.deepEqual(bad, []);
  });

  test('action.yml runs node24 with main and post from dist/', () => {
    assert.equal(action.runs.using, 'node24');
    assert.equal(action.runs.main, 'dist/main.js');
    assert.equal(action.runs.post, 'dist/post.js');
  });

  test('inputs: action.yml = code names, defaults equal, every one described', () => {
    assert.deepEqual(Object.keys(action.inputs).sort(), Object.values(Inputs).sort());
    for (const [name, def] of Object.entries(action.inputs)) {
      assert.ok(def.description.length > 10, name);
      assert.equal(String(def.default), INPUT_DEFAULTS[name as keyof typeof INPUT_DEFAULTS], `default of ${name}`);
    }
  });

  test('outputs: action.yml = code names, every one described', () => {
    assert.deepEqual(Object.keys(action.outputs).sort(), Object.values(Outputs).sort());
    for (const [name, def] of Object.entries(action.outputs)) assert.ok(def.description.length > 10, name);
  });

  test('README tables list every input and output with action.yml’s text', () => {
    const table = (header: string) => {
      const start = readme.indexOf(`| ${header} |`);
      assert.ok(start >= 0, `README has a table headed ${header}`);
      const body = readme.slice(start).split('\n\n')[0];
      return new Map([...body.matchAll(/^\| `([a-z0-9-]+)` \|(.*)\|$/gm)].map((m) => [m[1], m[2]]));
    };
    for (const [header, defs] of [['input', action.inputs], ['output', action.outputs]] as const) {
      const rows = table(header);
      assert.deepEqual([...rows.keys()].sort(), Object.keys(defs).sort(), `README ${header} table names`);
      for (const [name, def] of Object.entries(defs)) assert.ok(rows.get(name)!.includes(def.description), `README ${header} row for ${name} differs from action.yml`);
    }
  });
});

describe('dist', () => {
  test('dist/ equals a fresh build', () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'dist-'));
    try {
      const r = spawnSync(process.execPath, ['scripts/build.mjs', out], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const list = (d: string): string[] =>
        fs.readdirSync(d, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.relative(d, path.join(e.parentPath, e.name))).sort();
      assert.deepEqual(list('dist'), list(out), 'file lists differ: run npm run build and commit dist/');
      for (const f of list(out)) assert.ok(fs.readFileSync(path.join('dist', f)).equals(fs.readFileSync(path.join(out, f))), `dist/${f} is stale: run npm run build`);
      assert.equal(list(out).some((f) => f.endsWith('.node')), false, 'no native addons in dist/');
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  });

  test('the bundled CLI prints its version and help', () => {
    const v = spawnSync(process.execPath, ['dist/cli.js', '--version'], { encoding: 'utf8' });
    assert.equal(v.status, 0);
    assert.equal(v.stdout.trim(), JSON.parse(fs.readFileSync('package.json', 'utf8')).version);
    const h = spawnSync(process.execPath, ['dist/cli.js', '--help'], { encoding: 'utf8' });
    assert.match(h.stdout, /ryra-vm prepare \[options\]/);
    const bad = spawnSync(process.execPath, ['dist/cli.js', 'prepare', '--memory', 'abc'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /^ryra-vm: invalid memory: "abc"/);
  });
});

describe('the bundle runs on Node 24 (the action’s runtime) as well as Node 20', () => {
  const node24 = spawnSync('bash', ['scripts/node24.sh'], { encoding: 'utf8' });
  const bin = node24.stdout.trim().split('\n').pop() ?? '';
  test('version, help and input errors', { skip: node24.status !== 0 && `no Node 24 binary: ${node24.stderr.slice(-200)}` }, () => {
    assert.match(spawnSync(bin, ['--version'], { encoding: 'utf8' }).stdout, /^v24\./);
    const v = spawnSync(bin, ['dist/cli.js', '--version'], { encoding: 'utf8' });
    assert.equal(v.status, 0, v.stderr);
    const m = spawnSync(bin, ['dist/main.js'], { encoding: 'utf8', env: { PATH: process.env.PATH, INPUT_DISTRO: 'ubuntu-99' } });
    assert.equal(m.status, 1);
    assert.match(m.stdout, /::error::unknown distro: ubuntu-99/);
    // The cache worker loads the bundled toolkit; with no service configured it reports a miss, not a crash.
    const w = spawnSync(bin, ['dist/cache-worker.js', JSON.stringify({ op: 'lookup', dir: process.cwd(), paths: ['x'], key: 'k' })], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH },
    });
    assert.equal(w.status, 0, w.stderr);
  });
});

describe('bundled action rejects bad inputs before any work', () => {
  const runMain = (inputs: Record<string, string>) => {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'home-'));
    const cacheDir = path.join(home, 'cache');
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: home, RUNNER_TEMP: path.join(home, 'tmp'), GITHUB_OUTPUT: path.join(home, 'out') };
    // Any download would go through this proxy, which does not exist: a connection attempt fails loudly.
    env.HTTPS_PROXY = env.HTTP_PROXY = 'http://127.0.0.1:9';
    for (const [k, v] of Object.entries({ 'cache-dir': cacheDir, ...inputs })) env[`INPUT_${k.toUpperCase()}`] = v;
    const r = spawnSync(process.execPath, ['dist/main.js'], { encoding: 'utf8', env });
    const written = fs.readdirSync(home);
    fs.rmSync(home, { recursive: true, force: true });
    return { ...r, written };
  };

  test('distro ubuntu-99: exit 1 and the seed’s error', () => {
    const r = runMain({ distro: 'ubuntu-99' });
    assert.equal(r.status, 1);
    assert.match(r.stdout, /::error::unknown distro: ubuntu-99 \(available: debian-13, fedora-43, ubuntu-24\.04\)/);
  });

  test(`all ${BAD_INPUTS.length} bad inputs: non-zero, the error line, nothing written`, () => {
    for (const [inputs, expected] of BAD_INPUTS) {
      if (inputs.arch === 'amd64' && inputs.kvm === 'true' && process.arch === 'x64') continue; // host-dependent case
      const r = runMain(inputs);
      assert.equal(r.status, 1, JSON.stringify(inputs));
      const line = r.stdout.split('\n').find((l) => l.startsWith('::error::')) ?? '';
      assert.match(line.replace('::error::', ''), new RegExp(expected.source.replace(/^\^/, '').replace(/\$$/, '')), JSON.stringify(inputs));
      assert.deepEqual(r.written, [], `${JSON.stringify(inputs)} wrote ${r.written.join(', ')}`);
    }
  });
});
