// A job as the Actions runner runs it: the bundled action (node dist/main.js) with INPUT_* and the
// runner's file commands, later steps with `run:` scripts under bash or a custom shell (as
// `shell: ryra-vm run {0}`), PATH and env files applied between steps, then dist/post.js.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { OutputValues } from '../../src/contract.js';
import type { RunRecord } from '../../src/record.js';
import { echoLayerFailures } from './cli.js';
import type { Fixture } from './fixtures.js';

/** GITHUB_OUTPUT / GITHUB_STATE / GITHUB_ENV files: `name<<DELIM\nvalue\nDELIM` records (and name=value lines). */
export function readCommandFile(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!fs.existsSync(file)) return out;
  const text = fs.readFileSync(file, 'utf8');
  for (const m of text.matchAll(/^([^\n<=]+)<<(\S+)\n([\s\S]*?)\n\2$/gm)) out[m[1]] = m[3];
  for (const m of text.matchAll(/^([A-Za-z_][A-Za-z0-9_-]*)=(.*)$/gm)) out[m[1]] ??= m[2];
  return out;
}

export interface ProcResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a step's process; one that outlives `timeoutMs` is killed (a hung step fails, it does not stall the suite). */
export function exec(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd?: string, timeoutMs = 30 * 60_000): Promise<ProcResult> {
  const start = Date.now();
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    const timer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => {
      stderr += d;
      if (process.env.RYRA_TEST_VERBOSE) process.stderr.write(d);
    });
    c.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - start });
    });
  });
}

/** The inputs every test action run gets unless it says otherwise: TCG, no installs, the test image. */
export function testInputs(fx: Fixture, arch: string): Record<string, string> {
  return { arch, kvm: 'false', 'install-deps': 'false', 'image-url': fx.image, 'image-checksum': fx.checksum };
}

export interface Runner {
  dir: string;
  env: NodeJS.ProcessEnv;
  /** Runs the action's main step; returns its outputs (GITHUB_OUTPUT) and the run record. */
  action(inputs: Record<string, string>, extraEnv?: NodeJS.ProcessEnv): Promise<ProcResult & { outputs: Record<string, string>; record?: RunRecord }>;
  /** A `run:` step: bash by default, or a shell template such as `ryra-vm run {0}`; `workingDirectory` is relative to the workspace. */
  step(script: string, o?: { shell?: string; env?: NodeJS.ProcessEnv; workingDirectory?: string; timeoutMs?: number }): Promise<ProcResult>;
  /** `ryra-vm ARGS` as a step would call it (through the PATH main added). */
  cli(args: string[]): Promise<ProcResult>;
  post(): Promise<ProcResult>;
  summary(): string;
  /** Step outputs written through $GITHUB_OUTPUT since the last read. */
  stepOutputs(): Record<string, string>;
}

/** A runner of its own: HOME, RUNNER_TEMP, workspace, file commands. */
export function runner(root: string, name: string, base: NodeJS.ProcessEnv = {}): Runner {
  const dir = fs.mkdtempSync(path.join(root, `${name}-`));
  const f = (n: string) => path.join(dir, n);
  for (const d of ['home', 'tmp', 'work', 'bin']) fs.mkdirSync(f(d), { recursive: true });
  // OpenSSH reads ~/.ssh from the user's passwd entry, not $HOME; a real runner's HOME is that home.
  // This runner's HOME is its own, so its ssh and scp are told where its ~/.ssh/config is.
  for (const tool of ['ssh', 'scp']) {
    fs.writeFileSync(f(`bin/${tool}`), `#!/bin/sh\n[ -f "$HOME/.ssh/config" ] && set -- -F "$HOME/.ssh/config" "$@"\nexec /usr/bin/${tool} "$@"\n`, { mode: 0o755 });
  }
  const files = { GITHUB_OUTPUT: f('output'), GITHUB_STATE: f('state'), GITHUB_ENV: f('env'), GITHUB_PATH: f('path'), GITHUB_STEP_SUMMARY: f('summary') };
  for (const p of Object.values(files)) fs.writeFileSync(p, '');
  const env: NodeJS.ProcessEnv = {
    PATH: `${f('bin')}:${process.env.PATH}`,
    HOME: f('home'),
    RUNNER_TEMP: f('tmp'),
    GITHUB_WORKSPACE: f('work'),
    GITHUB_ACTIONS: 'true',
    CI: 'true',
    GITHUB_REF: 'refs/heads/main',
    GITHUB_SHA: 'f00dfeed',
    RUNNER_OS: 'Linux',
    ...files,
    ...base,
  };
  let stepN = 0;
  // Each step's view of the environment: GITHUB_PATH prepended, GITHUB_ENV applied.
  const stepEnv = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => {
    const added = fs.readFileSync(files.GITHUB_PATH, 'utf8').split('\n').filter(Boolean).reverse();
    return { ...env, ...readCommandFile(files.GITHUB_ENV), ...extra, PATH: [...added, env.PATH].join(':') };
  };
  const outputsFile = () => readCommandFile(files.GITHUB_OUTPUT);
  // The runner gives the post step the main step's inputs too.
  let inputsEnv: NodeJS.ProcessEnv = {};
  return {
    dir,
    env,
    async action(inputs, extraEnv = {}) {
      fs.writeFileSync(files.GITHUB_OUTPUT, '');
      const e: NodeJS.ProcessEnv = { ...stepEnv(), ...extraEnv };
      inputsEnv = {};
      for (const [k, v] of Object.entries(inputs)) inputsEnv[`INPUT_${k.toUpperCase()}`] = v;
      Object.assign(e, inputsEnv);
      const r = await exec(process.execPath, [path.resolve('dist/main.js')], e, env.GITHUB_WORKSPACE);
      echoLayerFailures('action', r.stdout + r.stderr);
      const outputs = outputsFile();
      const record = outputs.manifest && fs.existsSync(outputs.manifest) ? (JSON.parse(fs.readFileSync(outputs.manifest, 'utf8')) as RunRecord) : undefined;
      return { ...r, stdout: r.stdout + r.stderr, outputs, record };
    },
    async step(script, o = {}) {
      const file = path.join(env.RUNNER_TEMP!, `step-${++stepN}.sh`);
      fs.writeFileSync(file, script);
      fs.writeFileSync(files.GITHUB_OUTPUT, '');
      const template = o.shell ?? 'bash --noprofile --norc -eo pipefail {0}';
      const [cmd, ...args] = template.split(' ').map((a) => a.replace('{0}', file));
      return exec(cmd, args, stepEnv(o.env), path.resolve(env.GITHUB_WORKSPACE!, o.workingDirectory ?? '.'), o.timeoutMs);
    },
    cli(args) {
      return exec('ryra-vm', args, stepEnv(), env.GITHUB_WORKSPACE);
    },
    async post() {
      const e = { ...stepEnv(), ...inputsEnv };
      for (const [k, v] of Object.entries(readCommandFile(files.GITHUB_STATE))) e[`STATE_${k}`] = v;
      const r = await exec(process.execPath, [path.resolve('dist/post.js')], e, env.GITHUB_WORKSPACE);
      assert.equal(r.code, 0, `post step failed:\n${r.stdout}${r.stderr}`);
      return r;
    },
    summary: () => fs.readFileSync(files.GITHUB_STEP_SUMMARY, 'utf8'),
    stepOutputs: outputsFile,
  };
}

export type Outputs = OutputValues;
