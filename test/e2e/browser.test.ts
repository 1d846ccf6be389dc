// The browser layer, for real (amd64, TCG): the README's browser job, step by step, on the light
// configuration (jq on an empty base list): `browser: true` builds the layer from package registries
// (bun.sh and Playwright's CDN do not answer here, so `browser-source: auto` takes the registries)
// and a plain Playwright script runs with bun in the VM; then a step in a fresh VM restored from the
// browser snapshot serves a page inside the guest, checks a value its JavaScript computed, and
// screenshots it; the PNG comes back to the runner and is checked. The rerun is all local.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inflateSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { runner } from '../support/runner.js';
import { LIGHT, configInputs, sharedDir } from '../support/shared.js';
import { jobsOf, readmeBlocks, runJob } from '../support/workflow.js';

const root = tempRoot('browser');
let fx: Fixture;
const figures: string[] = [];

before(() => {
  fx = ensureFixture('amd64');
});
after(async () => {
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`browser figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

/** Width, height, and whether the pixels hold more than one colour (a blank page is one colour and filter bytes). */
export function pngFacts(buf: Buffer): { width: number; height: number; notBlank: boolean } {
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  const idat: Buffer[] = [];
  for (let o = 8; o < buf.length; ) {
    const len = buf.readUInt32BE(o);
    if (buf.toString('latin1', o + 4, o + 8) === 'IDAT') idat.push(buf.subarray(o + 8, o + 8 + len));
    o += 12 + len;
  }
  const distinctBytes = new Set(inflateSync(Buffer.concat(idat))).size;
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20), notBlank: distinctBytes > 16 };
}

const PAGE = `<!doctype html><html><body style="margin:0;background:#fff">
<h1 id="title" style="color:#c00;font:48px sans-serif">ryra-vm</h1>
<div id="sum"></div>
<script>document.getElementById('sum').textContent = String([1, 2, 3, 4].reduce((a, b) => a + b) * 7);</script>
</body></html>`;

const SCRIPT = `import { chromium } from 'playwright';
const server = Bun.serve({ port: 0, fetch: () => new Response(await Bun.file('page.html').text(), { headers: { 'content-type': 'text/html' } }) });
const t0 = performance.now();
const browser = await chromium.launch();
const page = await browser.newPage({ viewport: { width: 800, height: 600 } });
await page.goto(\`http://127.0.0.1:\${server.port}/\`);
const sum = await page.textContent('#sum');
await page.screenshot({ path: 'shot.png' });
await browser.close();
server.stop(true);
console.log(JSON.stringify({ sum, ms: Math.round(performance.now() - t0) }));
process.exit(0);
`;

describe('the browser layer, built for real (amd64, TCG)', { timeout: 80 * 60_000 }, () => {
  test('browser: true builds it from the registries; Playwright with bun screenshots a page in a restored VM; the rerun is all local', async () => {
    const r = runner(root.dir, 'job');
    const ws = r.env.GITHUB_WORKSPACE!;
    const block = readmeBlocks(fs.readFileSync('README.md', 'utf8')).find((b) => b.code.includes('browser: true') && b.code.includes('ryra-vm run --browser'));
    assert.ok(block, 'the README has its browser example');
    const [[, job]] = jobsOf(block);
    const t00 = Date.now();
    try {
      await runJob(r, `README line ${block.line}`, job.steps, (given) => ({ ...configInputs(LIGHT, fx), ...given, arch: 'amd64', 'cache-dir': sharedDir() }));
      const a = await r.action({ ...configInputs({ ...LIGHT, browser: true }, fx), 'cache-dir': sharedDir() });
      assert.equal(a.code, 0, a.stdout.slice(-6000));
      assert.ok(a.record!.layers.every((l) => l.source === 'local'), 'the rerun is all local');
      const built = JSON.parse(fs.readFileSync(path.join(sharedDir(), path.basename(a.outputs['browser-image'], '.qcow2') + '.manifest.json'), 'utf8'));
      assert.ok(Date.parse(built.createdAt) > t00, 'the README job built the browser layer, here and now');
      assert.equal(built.source, 'registries', 'bun.sh and Playwright\'s CDN are unreachable here: auto took the registries');
      const bsnap = JSON.parse(fs.readFileSync(path.join(sharedDir(), path.basename(a.outputs['browser-snapshot-disk'], '.qcow2') + '.manifest.json'), 'utf8'));
      figures.push(`browser layer ${built.buildSeconds} s, its snapshot ${bsnap.buildSeconds} s, RAM state ${(bsnap.stateBytes / 2 ** 20).toFixed(0)} MiB`);
      fs.writeFileSync(path.join(ws, 'page.html'), PAGE);
      fs.writeFileSync(path.join(ws, 'shot.ts'), SCRIPT.replace("await Bun.file('page.html').text()", JSON.stringify(PAGE)));

      const t0 = Date.now();
      const s = await r.step(
        [
          'bun --version && test "$(command -v bunx)" = /usr/local/bin/bunx',
          'test "$(stat -c %U /opt/playwright)" = "$(id -un)"',
          // A plain Playwright script, run from the workspace: the layer's environment finds both.
          'timeout 300 bun shot.ts | tee result.json',
          'cd /opt/playwright && timeout 120 bunx playwright --version',
        ].join('\n'),
        { shell: 'ryra-vm run --browser --fresh {0}' },
      );
      assert.equal(s.code, 0, `${s.stdout}\n${s.stderr}`);
      const result = JSON.parse(fs.readFileSync(path.join(ws, 'result.json'), 'utf8')) as { sum: string; ms: number };
      assert.equal(result.sum, '70', 'the page\'s JavaScript ran');
      const png = pngFacts(fs.readFileSync(path.join(ws, 'shot.png')));
      assert.deepEqual([png.width, png.height], [800, 600]);
      assert.ok(png.notBlank, 'the screenshot is not blank');
      assert.match(s.stdout, /Version 1\.\d+/);
      figures.push(`restore → first screenshot ${((Date.now() - t0) / 1000).toFixed(1)} s (Playwright ${(result.ms / 1000).toFixed(1)} s of it)`);
    } finally {
      await r.post();
    }
    assert.deepEqual(qemuProcessesUnder(root.dir), []);
  });
});
