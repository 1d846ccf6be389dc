// The README's examples, run: every YAML workflow runs as a job (the bundled action with the test
// image, TCG and the suite's shared cache dir; `run:` steps under bash or their custom shell;
// ${{ steps.* }} expressions; then the post step), and every shell block runs, unless the block is
// marked `<!-- readme-test: skip (why) -->`. Checked here too: every fenced block is one of those.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { runner } from '../support/runner.js';
import { FULL, configInputs, sharedDir } from '../support/shared.js';
import { jobsOf, readmeBlocks, runJob } from '../support/workflow.js';

const root = tempRoot('readme');
const readme = fs.readFileSync('README.md', 'utf8');
const blocks = readmeBlocks(readme);
let fx: Fixture;

before(() => {
  fx = ensureFixture('amd64');
});
after(async () => {
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

test('every fenced block is YAML or shell, and either runs here or says why not', () => {
  assert.ok(blocks.length >= 8, `found ${blocks.length} blocks`);
  for (const b of blocks) {
    assert.ok(['yaml', 'sh'].includes(b.lang), `README line ${b.line}: a \`\`\`${b.lang} block`);
    if (b.skip !== undefined) assert.ok(b.skip.length > 10, `README line ${b.line}: a skip needs a reason`);
  }
});

describe('README examples (full package list, amd64, TCG)', { timeout: 60 * 60_000 }, () => {
  for (const b of blocks.filter((x) => x.lang === 'yaml' && x.skip === undefined)) {
    for (const [jobName, job] of jobsOf(b)) {
      test(`line ${b.line}: job ${jobName}`, async () => {
        const r = runner(root.dir, `job-${b.line}`);
        try {
          // The test machine's image, TCG, and the suite's shared layers; the host's own arch.
          await runJob(r, `README line ${b.line}`, job.steps, (given) => ({ ...configInputs(FULL, fx), ...given, arch: 'amd64', 'cache-dir': sharedDir() }));
        } finally {
          await r.post();
        }
        assert.deepEqual(qemuProcessesUnder(root.dir), [], 'the post step stopped every VM');
      });
    }
  }
});
