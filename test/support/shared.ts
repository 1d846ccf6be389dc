// Layers shared by the end-to-end files of one test run: `npm test` makes one cache dir for the run
// (RYRA_TEST_SHARED) and removes it after. Layer names carry their keys and builds take per-layer
// locks, so files that only *use* a configuration find it built (or wait for the file building it)
// instead of building it again. Run alone, a file gets a shared dir of its own.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { OutputValues } from '../../src/contract.js';
import type { RunRecord } from '../../src/record.js';
import { ensureFixture, type Fixture } from './fixtures.js';
import { runCli } from './cli.js';

export function sharedDir(): string {
  let dir = process.env.RYRA_TEST_SHARED;
  if (!dir) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ryra-test-shared-'));
    process.env.RYRA_TEST_SHARED = dir;
    process.on('exit', () => fs.rmSync(dir!, { recursive: true, force: true }));
  }
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** A configuration the suite shares: its inputs. */
export interface SharedConfig {
  name: string;
  arch: 'amd64' | 'arm64';
  memory: string;
  packages: string;
  /** The catalogue's package list (podman & co.) when true; none (`base-packages: false`) when false. */
  fullList: boolean;
  browser?: boolean;
}

/** jq alone (`base-packages: false`): the light configuration most files use. */
export const LIGHT: SharedConfig = { name: 'light', arch: 'amd64', memory: '1024', packages: 'jq', fullList: false };
/** The catalogue's real package list plus jq, at the action's default memory: the README's examples. */
export const FULL: SharedConfig = { name: 'full', arch: 'amd64', memory: '2048', packages: 'jq', fullList: true };

/** Action inputs for a configuration (plus the test image and TCG). */
export function configInputs(c: SharedConfig, fx: Fixture): Record<string, string> {
  return {
    arch: c.arch,
    kvm: 'false',
    'install-deps': 'false',
    memory: c.memory,
    packages: c.packages,
    ...(c.fullList ? {} : { 'base-packages': 'false' }),
    'image-url': fx.image,
    'image-checksum': fx.checksum,
    ...(c.browser ? { browser: 'true' } : {}),
  };
}

/** `ryra-vm prepare` arguments for a configuration. */
export function prepareArgs(c: SharedConfig, fx: Fixture, cacheDir: string, extra: string[] = []): string[] {
  return ['prepare', '--json', '--arch', c.arch, '--kvm', 'false', '--memory', c.memory, '--packages', c.packages, ...(c.fullList ? [] : ['--base-packages', 'false']), '--image-url', fx.image, '--image-checksum', fx.checksum, '--cache-dir', cacheDir, ...(c.browser ? ['--browser'] : []), ...extra];
}

/** The configuration's layers in the shared dir: built there if nobody has, else used (or waited for). */
export async function sharedLayers(c: SharedConfig, runtimeDir: string): Promise<{ outputs: OutputValues; record: RunRecord; stderr: string }> {
  const fx = ensureFixture(c.arch);
  const r = await runCli(prepareArgs(c, fx, sharedDir()), { RYRA_VM_RUNTIME_DIR: runtimeDir }).done;
  if (r.code !== 0) throw new Error(`shared layers ${c.name}: prepare failed:\n${r.stderr.slice(-4000)}`);
  const outputs = JSON.parse(r.stdout) as OutputValues;
  return { outputs, record: JSON.parse(fs.readFileSync(outputs.manifest, 'utf8')) as RunRecord, stderr: r.stderr };
}

/**
 * Copies a cache dir's layers into another as hard links (layers are immutable files): a file gets
 * a private cache dir that starts with what the shared one has. `only` filters by file name.
 */
export function linkLayers(from: string, to: string, only: (name: string) => boolean = () => true): string[] {
  fs.mkdirSync(to, { recursive: true });
  const linked: string[] = [];
  for (const n of fs.readdirSync(from)) {
    const src = path.join(from, n);
    if (!fs.statSync(src).isFile() || n.includes('.ryra-tmp-') || n.endsWith('.lock-owner') || n === 'kvm-verdicts.json' || !only(n)) continue;
    fs.linkSync(src, path.join(to, n));
    linked.push(n);
  }
  return linked;
}
