// The README's workflow examples as jobs: fenced blocks read from the README, and a job's steps run
// on a test runner (support/runner.ts) — the action with the test machine's inputs added, `run:`
// steps under bash or their custom shell, ${{ steps.ID.outputs.NAME }} filled in.
import assert from 'node:assert/strict';
import { parse } from 'yaml';
import type { Runner } from './runner.js';

export interface Block {
  lang: string;
  code: string;
  skip?: string;
  line: number;
}

/** Fenced blocks, each with the `<!-- readme-test: skip (why) -->` that may follow it. */
export function readmeBlocks(text: string): Block[] {
  const blocks: Block[] = [];
  const re = /^```(\w*)\n([\s\S]*?)^```\n(?:<!-- readme-test: skip \(([^)]*)\) -->)?/gm;
  for (const m of text.matchAll(re)) blocks.push({ lang: m[1], code: m[2], skip: m[3], line: text.slice(0, m.index).split('\n').length });
  return blocks;
}

export interface Step {
  id?: string;
  uses?: string;
  with?: Record<string, string | number | boolean>;
  run?: string;
  shell?: string;
  env?: Record<string, string>;
}

export function jobsOf(b: Block): [string, { steps: Step[] }][] {
  return Object.entries((parse(b.code) as { jobs: Record<string, { steps: Step[] }> }).jobs);
}

/** `${{ steps.ID.outputs.NAME }}` from what earlier steps produced. */
function expand(s: string, outputs: Record<string, Record<string, string>>): string {
  return s.replace(/\$\{\{\s*steps\.([\w-]+)\.outputs\.([\w-]+)\s*\}\}/g, (_, id: string, name: string) => {
    const v = outputs[id]?.[name];
    if (v === undefined) throw new Error(`no output ${name} from step ${id}`);
    return v;
  });
}

/**
 * Runs a job's steps on `r` (the caller runs the post step). `inputs(given)` turns the step's own
 * `with:` into the action's inputs on this machine. Returns each step's outputs by id.
 */
export async function runJob(r: Runner, label: string, steps: Step[], inputs: (given: Record<string, string>) => Record<string, string>): Promise<Record<string, Record<string, string>>> {
  const outputs: Record<string, Record<string, string>> = {};
  for (const [i, s] of steps.entries()) {
    const name = `${label}, step ${i + 1} (${s.id ?? s.uses ?? s.run?.split('\n')[0]})`;
    if (s.uses?.startsWith('actions/checkout')) continue;
    if (s.uses) {
      assert.match(s.uses, /^org\/ryra-vm-action@v1$/, name);
      const given = Object.fromEntries(Object.entries(s.with ?? {}).map(([k, v]) => [k, expand(String(v), outputs)]));
      const res = await r.action(inputs(given));
      assert.equal(res.code, 0, `${name}:\n${res.stdout.slice(-4000)}`);
      if (s.id) outputs[s.id] = res.outputs;
      continue;
    }
    const res = await r.step(expand(s.run!, outputs), { shell: s.shell, env: s.env });
    assert.equal(res.code, 0, `${name} exited ${res.code}:\n${res.stdout.slice(-3000)}\n${res.stderr.slice(-3000)}`);
    if (s.id) outputs[s.id] = r.stepOutputs();
  }
  return outputs;
}
