// The release workflow, run here as the runner runs it: its jobs in order, a job whose needs did not
// succeed skipped, each job's `run` steps in order with bash -e in a fresh clone at the release tag
// (what actions/checkout leaves), the first failing step ending its job. The remote is a scratch
// bare repository standing in for GitHub's; the move step runs the very scripts/release-tag.sh.
// The checks' npm and scripts/setup.sh are stand-ins (the real checks run in CI): the stand-in
// `npm run test:unit` fails on demand, so that a red unit test is seen to stop the move.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { parse } from 'yaml';

interface Step {
  name?: string;
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
  env?: Record<string, string>;
  if?: unknown;
  'continue-on-error'?: unknown;
}
interface Job {
  if?: string;
  needs?: string | string[];
  permissions?: Record<string, string>;
  'continue-on-error'?: unknown;
  steps: Step[];
}
interface Workflow {
  on: Record<string, unknown>;
  permissions?: Record<string, string>;
  concurrency?: { group: string; 'cancel-in-progress'?: boolean };
  jobs: Record<string, Job>;
}

const wf = parse(fs.readFileSync('.github/workflows/release.yml', 'utf8')) as Workflow;
const needsOf = (j: Job) => (j.needs === undefined ? [] : [j.needs].flat());
const TAG_EXPR = '${{ github.event.release.tag_name }}';
const NOT_PRERELEASE = '${{ !github.event.release.prerelease }}';
const moverName = Object.keys(wf.jobs).find((n) => wf.jobs[n].steps.some((s) => s.run?.includes('scripts/release-tag.sh')))!;

describe('release workflow: the checks, then the major tag', () => {
  test('a published non-pre-release runs the checks; the move needs them; nothing runs after a failure; only the move can push', () => {
    assert.deepEqual((wf.on.release as { types: string[] }).types, ['published']);
    assert.ok(moverName, 'a job runs scripts/release-tag.sh');
    const mover = wf.jobs[moverName];
    const checks = needsOf(mover).map((n) => wf.jobs[n]);
    assert.ok(checks.length > 0, 'the move needs the checks');
    const checkRuns = checks.flatMap((j) => j.steps).map((s) => s.run ?? '').join('\n');
    for (const cmd of ['npm run typecheck', 'npm run test:unit', 'npm run build']) assert.ok(checkRuns.includes(cmd), `the checks run ${cmd}`);
    assert.match(checkRuns, /npm run build\n\s*if \[ -n "\$\(git status --porcelain -- dist\)" \]; then[^]*exit 1/);
    // GitHub runs a step after a failed one, or a job whose needs failed, only under an `if:` such as
    // always() or failure(), or with continue-on-error: nothing here has either, bar the pre-release gate.
    for (const [name, j] of Object.entries(wf.jobs)) {
      assert.equal(j['continue-on-error'], undefined, name);
      assert.ok(j.if === undefined || j.if === NOT_PRERELEASE, `${name}: if ${j.if}`);
      for (const s of j.steps) assert.deepEqual([s.if, s['continue-on-error']], [undefined, undefined], `${name}: ${s.name ?? s.run ?? s.uses}`);
      assert.equal(j.steps[0].uses?.startsWith('actions/checkout@'), true, `${name} checks out first`);
      assert.equal(j.steps[0].with?.ref, TAG_EXPR, `${name} checks out the release`);
    }
    assert.ok(checks.every((j) => j.if === NOT_PRERELEASE), 'pre-releases skip the checks, and with them the move');
    // The tag reaches the script through env only (an expression inside a script is an injection).
    const move = mover.steps.find((s) => s.run?.includes('scripts/release-tag.sh'))!;
    assert.deepEqual([move.env, move.run], [{ TAG: TAG_EXPR }, 'bash scripts/release-tag.sh "$TAG"']);
    for (const s of Object.values(wf.jobs).flatMap((j) => j.steps)) assert.equal((s.run ?? '').includes('${{'), false, s.run);
    // The token that can push is the move's alone, and that job runs none of the release's dependencies.
    assert.deepEqual(wf.permissions, { contents: 'read' });
    assert.deepEqual(mover.permissions, { contents: 'write' });
    assert.equal(mover.steps.some((s) => /\bnpm\b/.test(s.run ?? '') || s.uses?.startsWith('actions/setup-node')), false);
    // One release at a time, none cancelled: each reads the remote's tags before it moves one.
    assert.equal(wf.concurrency?.['cancel-in-progress'], false);
  });

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'release-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const bin = path.join(tmp, 'bin');
  const npmCalls = path.join(tmp, 'npm-calls');
  fs.mkdirSync(bin);
  fs.writeFileSync(
    path.join(bin, 'npm'),
    '#!/bin/sh\necho "npm $*" >> "$NPM_CALLS"\nif [ "$*" = "run test:unit" ] && [ -n "$RED" ]; then echo "not ok 1 - a red unit test" >&2; exit 1; fi\n',
    { mode: 0o755 },
  );
  const env = {
    ...process.env,
    PATH: `${bin}:${path.dirname(process.execPath)}:${process.env.PATH}`,
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_AUTHOR_NAME: 't',
    GIT_AUTHOR_EMAIL: 't@t',
    GIT_COMMITTER_NAME: 't',
    GIT_COMMITTER_EMAIL: 't@t',
    NPM_CALLS: npmCalls,
  };
  const git = (cwd: string, ...args: string[]) => execFileSync('git', args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  const origin = path.join(tmp, 'origin.git');
  const work = path.join(tmp, 'work');
  git(tmp, 'init', '-q', '--bare', '-b', 'main', origin);
  git(tmp, 'clone', '-q', origin, work);
  fs.mkdirSync(path.join(work, 'scripts'));
  fs.mkdirSync(path.join(work, 'dist'));
  let clones = 0;

  /** Commits a release on main (package.json at `version`, this repository's release-tag.sh), tags and pushes it; its commit. */
  function commitRelease(tag: string, version = tag.replace(/^v/, '')): string {
    fs.writeFileSync(path.join(work, 'package.json'), JSON.stringify({ name: 'scratch', version }, null, 2) + '\n');
    fs.copyFileSync('scripts/release-tag.sh', path.join(work, 'scripts/release-tag.sh'));
    // The real setup.sh installs apt packages and runs npm ci: moot with the stand-in npm.
    fs.writeFileSync(path.join(work, 'scripts/setup.sh'), '#!/bin/sh\nexit 0\n');
    fs.writeFileSync(path.join(work, 'dist/main.js'), `// ${tag}\n`);
    git(work, 'add', '-A');
    git(work, 'commit', '-q', '-m', tag);
    git(work, 'tag', '-a', tag, '-m', tag);
    git(work, 'push', '-q', 'origin', 'HEAD:refs/heads/main', `refs/tags/${tag}`);
    return git(work, 'rev-parse', 'HEAD');
  }

  /** A fresh clone at the tag: what actions/checkout with `ref: <tag>` leaves. */
  function checkout(tag: string): string {
    const co = path.join(tmp, `co-${++clones}`);
    git(tmp, 'clone', '-q', origin, co);
    git(co, 'checkout', '-q', `refs/tags/${tag}`);
    return co;
  }

  /** Runs the workflow for a published release `tag`; each job's result, the log, and what npm was asked. */
  function publish(tag: string, o: { red?: boolean } = {}) {
    fs.rmSync(npmCalls, { force: true });
    const results: Record<string, 'success' | 'failure' | 'skipped'> = {};
    let log = '';
    for (const [name, job] of Object.entries(wf.jobs)) {
      for (const n of needsOf(job)) assert.ok(n in results, `${name} needs ${n}, a job declared before it`);
      if (needsOf(job).some((n) => results[n] !== 'success')) {
        results[name] = 'skipped';
        continue;
      }
      const co = checkout(tag);
      results[name] = 'success';
      for (const step of job.steps) {
        if (step.uses) {
          // checkout is the clone; setup-node is moot with the stand-in npm (and the script's node is this one).
          assert.match(step.uses, /^actions\/(checkout|setup-node)@v\d+$/);
          continue;
        }
        const stepEnv: NodeJS.ProcessEnv = { ...env, RED: o.red ? '1' : '' };
        for (const [k, v] of Object.entries(step.env ?? {})) stepEnv[k] = v === TAG_EXPR ? tag : assert.fail(`${name}: an expression this test does not know: ${v}`);
        const r = spawnSync('bash', ['-e', '-c', step.run!], { cwd: co, env: stepEnv, encoding: 'utf8' });
        log += r.stdout + r.stderr;
        if (r.status !== 0) {
          results[name] = 'failure';
          break;
        }
      }
    }
    const npm = fs.existsSync(npmCalls) ? fs.readFileSync(npmCalls, 'utf8').trim().split('\n') : [];
    return { results, log, npm };
  }
  const remote = (t: string) => git(tmp, 'ls-remote', origin, `refs/tags/${t}`).split(/\s/)[0] || undefined;
  const GREEN = { checks: 'success', [moverName]: 'success' };
  const ALL_CHECKS = ['npm run typecheck', 'npm run test:unit', 'npm run build'];
  const c: Record<string, string> = {};

  test('v1 moves to 1.0.0, then to 1.0.1; publishing 1.0.0 again after 1.0.1 leaves v1 at 1.0.1', () => {
    c['1.0.0'] = commitRelease('v1.0.0');
    let r = publish('v1.0.0');
    assert.deepEqual(r.results, GREEN, r.log);
    assert.deepEqual(r.npm, ALL_CHECKS, 'the checks ran, in order');
    assert.equal(remote('v1'), c['1.0.0']);
    assert.match(r.log, new RegExp(`^moved v1 to v1\\.0\\.0 \\(${c['1.0.0']}\\)$`, 'm'));

    c['1.0.1'] = commitRelease('v1.0.1');
    r = publish('v1.0.1');
    assert.deepEqual(r.results, GREEN, r.log);
    assert.equal(remote('v1'), c['1.0.1']);
    assert.match(r.log, new RegExp(`^moved v1 to v1\\.0\\.1 \\(${c['1.0.1']}\\), from ${c['1.0.0']}$`, 'm'));

    r = publish('v1.0.0');
    assert.deepEqual(r.results, GREEN, 'an older release is fine; it just moves nothing');
    assert.equal(remote('v1'), c['1.0.1'], 'v1 did not move backwards');
    assert.ok(r.log.includes(`::notice::v1.0.0 is not the highest v1 release (v1.0.1 is): v1 stays at ${c['1.0.1']}`), r.log);

    r = publish('v1.0.1');
    assert.equal(remote('v1'), c['1.0.1']);
    assert.match(r.log, /^v1 is at v1\.0\.1 \(\w+\) already$/m, 'publishing the same release again is a no-op');
  });

  test('a red unit test stops the move: the checks fail at it, the move is skipped, v1 stays', () => {
    c['1.0.2'] = commitRelease('v1.0.2');
    let r = publish('v1.0.2', { red: true });
    assert.deepEqual(r.results, { checks: 'failure', [moverName]: 'skipped' });
    assert.deepEqual(r.npm, ['npm run typecheck', 'npm run test:unit'], 'the job stopped at the red step');
    assert.match(r.log, /not ok 1 - a red unit test/);
    assert.equal(remote('v1'), c['1.0.1']);
    // The same release once its tests pass (a re-run): v1 moves.
    r = publish('v1.0.2');
    assert.deepEqual(r.results, GREEN, r.log);
    assert.equal(remote('v1'), c['1.0.2']);
  });

  test('the highest by version, not by date: 1.10.0, then 1.9.0, leaves v1 at 1.10.0; a new major gets its own tag', () => {
    c['1.10.0'] = commitRelease('v1.10.0');
    c['1.9.0'] = commitRelease('v1.9.0');
    publish('v1.10.0');
    const r = publish('v1.9.0');
    assert.deepEqual(r.results, GREEN, r.log);
    assert.equal(remote('v1'), c['1.10.0']);
    c['2.0.0'] = commitRelease('v2.0.0');
    publish('v2.0.0');
    assert.deepEqual([remote('v2'), remote('v1')], [c['2.0.0'], c['1.10.0']]);
  });

  test('refused, nothing moved: a tag that is not vX.Y.Z, a package.json of another version, a checkout not at the tag', () => {
    commitRelease('nightly-5', '3.0.0');
    let r = publish('nightly-5');
    assert.equal(r.results[moverName], 'failure');
    assert.match(r.log, /::error::release tag nightly-5 is not vMAJOR\.MINOR\.PATCH; the major tag was not moved/);
    for (const bad of ['v3.0', 'v3.0.0-rc.1', 'v03.0.0', '3.0.0']) {
      const s = spawnSync('bash', ['scripts/release-tag.sh', bad], { cwd: checkout('v2.0.0'), env, encoding: 'utf8' });
      assert.notEqual(s.status, 0, bad);
      assert.match(s.stdout, /is not vMAJOR\.MINOR\.PATCH/, bad);
    }

    commitRelease('v3.0.0', '2.9.9');
    r = publish('v3.0.0');
    assert.equal(r.results[moverName], 'failure');
    assert.match(r.log, /::error::package\.json at v3\.0\.0 says version 2\.9\.9; set it to 3\.0\.0 and release again/);
    assert.equal(remote('v3'), undefined);

    const s = spawnSync('bash', ['scripts/release-tag.sh', 'v1.10.0'], { cwd: checkout('v1.9.0'), env, encoding: 'utf8' });
    assert.notEqual(s.status, 0);
    assert.match(s.stdout, new RegExp(`::error::this checkout is at ${c['1.9.0']}, not at v1\\.10\\.0 \\(${c['1.10.0']}\\)`));
    assert.deepEqual([remote('v1'), remote('v2')], [c['1.10.0'], c['2.0.0']]);
  });
});
