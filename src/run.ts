// `ryra-vm run SCRIPT`, usable as a step's custom shell (`shell: ryra-vm run {0}`): the workspace
// goes into the VM at the same path, the script runs there with `bash -e` and the step's
// environment, its output streams live, the changed files come back, and the step exits with the
// script's status. The job's `default` VM is booted from the snapshot on first use and reused;
// `--fresh` restores a new VM for this step alone.
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { SyncMode } from './inputs.js';
import { log } from './log.js';
import { syncBack, syncIn, type Exec } from './sync.js';
import { SshClient } from './vm/ssh.js';
import { bootVm, findVm, loadRecord, stopVm } from './vms.js';

export interface RunOptions {
  script: string;
  name?: string;
  fresh?: boolean;
  browser?: boolean;
  /** Default: the action's `sync` input, else both. */
  sync?: SyncMode;
  excludes: string[];
  /** Names passed beside CI, GITHUB_* and RUNNER_*. */
  env: string[];
  config?: string;
  cacheDir?: string;
}

/** Step files the guest writes like the runner's own ($GITHUB_OUTPUT …): appended back to the host's. */
const STEP_FILES = ['GITHUB_OUTPUT', 'GITHUB_ENV', 'GITHUB_PATH', 'GITHUB_STEP_SUMMARY'] as const;

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** The environment a script gets: CI, GITHUB_*, RUNNER_*, and the named ones; values exactly as they are. */
export function scriptEnv(env: NodeJS.ProcessEnv, names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) continue;
    if (k === 'CI' || k.startsWith('GITHUB_') || k.startsWith('RUNNER_') || names.includes(k)) out[k] = v;
  }
  return out;
}

/** A shell file that exports `vars` (single-quoted: quotes, newlines and `$` arrive intact). */
export function envFile(vars: Record<string, string>): string {
  return Object.entries(vars)
    .filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
    .map(([k, v]) => `export ${k}=${shq(v)}\n`)
    .join('');
}


export async function runScript(o: RunOptions): Promise<number> {
  if (!fs.existsSync(o.script)) throw new Error(`no such script: ${o.script}`);
  const workspace = path.resolve(process.env.GITHUB_WORKSPACE || process.cwd());
  const name = o.fresh ? `run-${process.pid}-${randomUUID().slice(0, 6)}` : (o.name ?? 'default');

  let vm = findVm(name);
  if (vm && !vm.running) {
    log.info(`VM ${name} had exited; starting it again`);
    await stopVm(vm);
    vm = undefined;
  }
  // A running VM's settings (sync, environment names) are those of the run it was booted from.
  const record = loadRecord({ config: o.config ?? (vm && fs.existsSync(vm.record) ? vm.record : undefined), cacheDir: o.cacheDir });
  const sync = o.sync ?? record.run.sync;
  const names = [...record.run.environmentVariables, ...o.env];
  const booted = !vm;
  const rec = vm ?? (await bootVm({ name, browser: o.browser, config: o.config, cacheDir: o.cacheDir }));
  if (booted) log.info(`${rec.name}: ${rec.mode === 'restore' ? 'restored' : 'cold-booted'} in ${(rec.readyMs / 1000).toFixed(1)} s`);
  const client = await SshClient.connect({ port: rec.port, user: rec.user, privateKey: fs.readFileSync(rec.key, 'utf8') }, 60_000);
  const exec: Exec = (cmd, opts) => client.exec(cmd, opts);
  const id = randomUUID().slice(0, 8);
  const dir = `~/.ryra-run/${id}`;
  try {
    const syncOpts = { hostDir: workspace, guestDir: workspace, excludes: o.excludes };
    const t0 = Date.now();
    const before = sync === 'none' ? undefined : await syncIn(exec, syncOpts);
    if (before) log.info(`synced ${before.size} entries of ${workspace} into ${rec.name} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const vars = scriptEnv(process.env, names);
    for (const f of STEP_FILES) if (vars[f]) vars[f] = `/home/${rec.user}/.ryra-run/${id}/${f}`;
    const setup = await exec(`mkdir -p ${dir} && cd ${dir} && touch ${STEP_FILES.join(' ')} && cat > script && printf %s ${shq(envFile(vars))} > env`, {
      input: fs.readFileSync(o.script),
      timeoutMs: 60_000,
    });
    if (setup.code !== 0) throw new Error(`preparing the script in ${rec.name} failed: ${setup.stderr.trim()}`);

    const cd = sync === 'none' ? `mkdir -p ${shq(workspace)} 2>/dev/null || true; cd ${shq(workspace)} 2>/dev/null || cd` : `cd ${shq(workspace)}`;
    const r = await exec(`set -a; . ${dir}/env; set +a; ${cd}; bash -e ${dir}/script`, {
      stdout: process.stdout,
      stderr: process.stderr,
      timeoutMs: 24 * 3600_000,
    });

    // What the script wrote to its step files goes where the runner reads them.
    const files = await exec(`cd ${dir} && for f in ${STEP_FILES.join(' ')}; do printf '%s\\0' "$f"; base64 -w0 "$f"; printf '\\0'; done`, { timeoutMs: 60_000 });
    const parts = files.stdout.split('\0');
    for (let i = 0; i + 1 < parts.length; i += 2) {
      const target = process.env[parts[i]];
      const content = Buffer.from(parts[i + 1], 'base64');
      if (target && content.length) fs.appendFileSync(target, content);
    }
    if (before && sync === 'both') {
      const t1 = Date.now();
      const back = await syncBack(exec, syncOpts, before);
      log.info(`synced ${back.changed} changed and ${back.deleted} deleted entries back in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
    }
    await exec(`rm -rf ${dir}`, { timeoutMs: 60_000 }).catch(() => {});
    return r.code;
  } finally {
    client.end();
    if (o.fresh) await stopVm(rec);
  }
}
