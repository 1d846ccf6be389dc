// `ryra-vm run SCRIPT`, usable as a step's custom shell (`shell: ryra-vm run {0}`): the workspace
// goes into the VM at the same path, the script runs there with `bash -e` and the step's
// environment, its output streams live, the changed files come back, and the step exits with the
// script's status. The job's `default` VM is booted from the snapshot on first use and reused;
// `--fresh` restores a new VM for this step alone.
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { SFTPWrapper } from 'ssh2';
import { Inputs } from './contract.js';
import type { TestHooks } from './env.js';
import { INPUT_DEFAULTS, parseSize, type SyncMode } from './inputs.js';
import { errorMessage, log } from './log.js';
import { syncBack, syncIn, type Exec, type SyncBackResult } from './sync.js';
import { Phases } from './util/phases.js';
import { withTimeout } from './util/time.js';
import { SshClient } from './vm/ssh.js';
import type { Forward } from './vm/spec.js';
import { bootVm, findVm, loadRecord, stopVm, vmTarget, type VmRecord } from './vms.js';

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
  /** Byte budget of the sync-back. Default: the action's `sync-max-size` input. */
  syncMaxBytes?: number;
  /** The step's working directory (default: this process's). */
  cwd?: string;
  config?: string;
  cacheDir?: string;
  /** TCP forwards for the VM this step boots (a running VM keeps its own). */
  forwards?: Forward[];
  /** The test hooks the entry point read (none: NO_HOOKS). */
  hooks?: TestHooks;
}

/**
 * Step files the guest writes like the runner's own ($GITHUB_OUTPUT …): appended back to the files
 * the runner named in this process's environment, by these fixed names only.
 */
export const STEP_FILES = ['GITHUB_OUTPUT', 'GITHUB_ENV', 'GITHUB_PATH', 'GITHUB_STEP_SUMMARY'] as const;
/** Most a step file may bring back (GitHub itself takes 1 MiB of summary per step). */
export const STEP_FILE_MAX_BYTES = 16 * 2 ** 20;
/** Time bound of reading the step files back (one of them may be a FIFO nobody writes). */
const STEP_FILES_TIMEOUT_MS = 60_000;

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** Credentials (GITHUB_TOKEN, ACTIONS_RUNTIME_TOKEN …) enter the VM only when named, even under GITHUB_*. */
const TOKEN_NAME = /(^|_)TOKEN$/;

/** The environment a script gets: CI, GITHUB_*, RUNNER_* (no *_TOKEN), and the named ones; values exactly as they are. */
export function scriptEnv(env: NodeJS.ProcessEnv, names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) continue;
    const family = k === 'CI' || k.startsWith('GITHUB_') || k.startsWith('RUNNER_');
    if (names.includes(k) || (family && !TOKEN_NAME.test(k))) out[k] = v;
  }
  return out;
}

/**
 * The guest dir a script starts in: the step's working directory when it lies inside the workspace
 * (the guest has the workspace at the same path), else the workspace. `real` resolves symlinks, so
 * a workspace reached through one still matches.
 */
export function startDir(workspace: string, cwd: string, real: (p: string) => string = fs.realpathSync): string {
  let rel: string;
  try {
    rel = path.relative(real(workspace), real(cwd));
  } catch {
    return workspace;
  }
  if (!rel || rel === '..' || rel.startsWith('../') || path.isAbsolute(rel)) return workspace;
  return path.join(workspace, rel);
}

/** A guest file's bytes over SFTP (no guest tool reads it), failing past `max`; a missing file is empty. */
function readGuestFile(sftp: SFTPWrapper, file: string, max: number, label: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    const s = sftp.createReadStream(file);
    s.on('data', (d: Buffer) => {
      n += d.length;
      if (n <= max) return void chunks.push(d);
      s.destroy();
      reject(new Error(`the script wrote more than ${max >> 20} MiB to $${label}: nothing of it was kept (write large results to files in the workspace instead)`));
    });
    s.on('error', (err: Error & { code?: number }) => (err.code === 2 ? resolve(Buffer.alloc(0)) : reject(new Error(`reading $${label} from the VM failed: ${err.message}`))));
    s.on('end', () => resolve(Buffer.concat(chunks)));
  });
}

/**
 * What the script wrote to its step files, appended to the runner's own (only those the runner
 * set). All four are read before any is written, so a failure leaves the runner's files as they were.
 */
async function copyStepFiles(client: SshClient, dir: string, env: NodeJS.ProcessEnv, bound?: AbortSignal): Promise<void> {
  const targets = STEP_FILES.filter((f) => env[f]);
  if (!targets.length) return;
  let timer: NodeJS.Timeout | undefined;
  let sftp: SFTPWrapper | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`reading the step files back from the VM took over ${STEP_FILES_TIMEOUT_MS / 1000} s (is one of them a FIFO?)`)), STEP_FILES_TIMEOUT_MS);
    const stop = () => reject(bound!.reason);
    if (bound?.aborted) stop();
    bound?.addEventListener('abort', stop, { once: true });
  });
  timeout.catch(() => {});
  try {
    sftp = await Promise.race([client.sftp(), timeout]);
    const contents: Buffer[] = [];
    for (const f of targets) contents.push(await Promise.race([readGuestFile(sftp, `${dir}/${f}`, STEP_FILE_MAX_BYTES, f), timeout]));
    targets.forEach((f, i) => contents[i].length && fs.appendFileSync(env[f]!, contents[i]));
  } finally {
    clearTimeout(timer);
    sftp?.end();
  }
}

const list = (names: string[], max = 20) => names.slice(0, max).map((n) => JSON.stringify(Buffer.from(n, 'latin1').toString())).join(', ') + (names.length > max ? ` and ${names.length - max} more` : '');

/** Says what the sync-back refused; an error for what did not fit, since the workspace lacks it. */
function reportSyncBack(back: SyncBackResult, budget: number): Error | undefined {
  if (back.outsideLinks.length) log.warning(`not synced back: ${back.outsideLinks.length} symlink(s) whose targets lead outside the workspace: ${list(back.outsideLinks)}`);
  if (back.special.length) log.warning(`not synced back: ${back.special.length} entr${back.special.length === 1 ? 'y' : 'ies'} that are not files, dirs or symlinks (FIFOs, sockets, devices): ${list(back.special)}`);
  if (back.conflicts.length) log.warning(`not synced back: ${back.conflicts.length} path(s) the script replaced or deleted, kept as the runner has them because they hold what the runner did not send (excluded, or made during the step): ${list(back.conflicts)}`);
  if (!back.overBudget.length) return undefined;
  return new Error(
    `${back.overBudget.length} changed file(s) did not fit in the sync-back budget of ${(budget / 2 ** 30).toFixed(2)} GiB (sparse files count at their full size) and stayed in the VM: ${list(back.overBudget)}. ` +
      `Raise the action's ${Inputs.SyncMaxSize} input (or --sync-max-size), or leave them out with --exclude`,
  );
}

/** A shell file that exports `vars` (single-quoted: quotes, newlines and `$` arrive intact). */
export function envFile(vars: Record<string, string>): string {
  return Object.entries(vars)
    .filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
    .map(([k, v]) => `export ${k}=${shq(v)}\n`)
    .join('');
}

/** How long a cancelled step may take from the signal: the script stopped, the step files and the workspace back. */
export const CANCEL_BOUND_MS = 30_000;
/** A cancelled step's status, as a shell reports a command the signal ended: 128 + its number. */
const SIGNAL_STATUS = { SIGINT: 130, SIGTERM: 143 } as const;

interface Cancel {
  /** Starts listening for SIGINT and SIGTERM. */
  arm(): void;
  /** The first signal received, once one is. */
  readonly signal: keyof typeof SIGNAL_STATUS | undefined;
  /** Resolves at the first signal. */
  requested: Promise<void>;
  /** Aborts CANCEL_BOUND_MS after the first signal. */
  bound: AbortSignal;
  /** Time left in the bound (ms). */
  left(): number;
  dispose(): void;
}

/**
 * A step's cancel (a cancelled job, `timeout-minutes`): the runner signals the step's process.
 * Only the first signal counts; a later one (a runner escalating SIGINT to SIGTERM) leaves the
 * bound as it is. While armed, the handlers keep Node's default (exit at once) from applying.
 */
function watchCancel(): Cancel {
  const bound = new AbortController();
  let first: keyof typeof SIGNAL_STATUS | undefined;
  let deadline = Infinity;
  let timer: NodeJS.Timeout | undefined;
  let requestedNow!: () => void;
  const requested = new Promise<void>((resolve) => (requestedNow = resolve));
  const on = (sig: NodeJS.Signals) => {
    if (first) return;
    first = sig as keyof typeof SIGNAL_STATUS;
    deadline = Date.now() + CANCEL_BOUND_MS;
    timer = setTimeout(() => bound.abort(new Error(`the step was cancelled (${sig}) and its ${CANCEL_BOUND_MS / 1000} s to bring its work back are up`)), CANCEL_BOUND_MS);
    requestedNow();
  };
  let armed = false;
  return {
    arm() {
      armed = true;
      process.on('SIGINT', on);
      process.on('SIGTERM', on);
    },
    get signal() {
      return first;
    },
    requested,
    bound: bound.signal,
    left: () => Math.max(1, deadline - Date.now()),
    dispose() {
      if (armed) {
        process.off('SIGINT', on);
        process.off('SIGTERM', on);
      }
      clearTimeout(timer);
    },
  };
}

/**
 * A guest command that stops the script's process group (its pid in DIR/pgid): TERM, then KILL
 * after 5 s if anything of it is left. As root where sudo allows (the script may have started root
 * processes in its group), else as the user.
 */
export function stopGroup(dir: string): string {
  // dash's kill takes no `--`: a negative pid after the signal names the group.
  const inner = 'kill -TERM -$0; for i in $(seq 50); do kill -0 -$0 2>/dev/null || exit 0; sleep 0.1; done; kill -KILL -$0; true';
  return (
    `pg=; for i in $(seq 50); do pg=$(cat ${dir}/pgid 2>/dev/null); [ -n "$pg" ] && break; sleep 0.1; done; ` +
    `case $pg in ''|*[!0-9]*) exit 0;; esac; ` +
    `sudo -n sh -c ${shq(inner)} "$pg" 2>/dev/null || sh -c ${shq(inner)} "$pg"`
  );
}

export async function runScript(o: RunOptions): Promise<number> {
  if (!fs.existsSync(o.script)) throw new Error(`no such script: ${o.script}`);
  const workspace = path.resolve(process.env.GITHUB_WORKSPACE || process.cwd());
  const name = o.fresh ? `run-${process.pid}-${randomUUID().slice(0, 6)}` : (o.name ?? 'default');
  const phases = new Phases();

  let vm = findVm(name);
  if (vm && !vm.running) {
    log.info(`VM ${name} had exited; starting it again`);
    await stopVm(vm);
    vm = undefined;
  }
  // A running VM's settings (sync, environment names) are those of the run it was booted from.
  const record = loadRecord({ config: o.config ?? (vm && fs.existsSync(vm.record) ? vm.record : undefined), cacheDir: o.cacheDir });
  const sync = o.sync ?? record.run.sync;
  const syncMaxBytes = o.syncMaxBytes ?? record.run.syncMaxBytes ?? parseSize(Inputs.SyncMaxSize, INPUT_DEFAULTS[Inputs.SyncMaxSize]);
  const names = [...record.run.environmentVariables, ...o.env];
  const booted = !vm;
  phases.mark('record');
  const rec: VmRecord & { session?: SshClient } = vm ?? (await bootVm({ name, browser: o.browser, config: o.config, cacheDir: o.cacheDir, forwards: o.forwards, hooks: o.hooks, phases, keepSession: true }));
  if (booted) log.info(`${rec.name}: ${rec.mode === 'restore' ? 'restored' : 'cold-booted'} in ${(rec.readyMs / 1000).toFixed(1)} s`);
  // A VM this step booted: the boot's own session (its host key pinned); a running one: a new login.
  const client = rec.session ?? (await SshClient.connect(vmTarget(rec), 60_000));
  phases.mark('connect');
  const exec: Exec = (cmd, opts) => client.exec(cmd, opts);
  const id = randomUUID().slice(0, 8);
  const dir = `~/.ryra-run/${id}`;
  const cancel = watchCancel();
  try {
    const syncOpts = { hostDir: workspace, guestDir: workspace, excludes: o.excludes, maxBytes: syncMaxBytes };
    const t0 = Date.now();
    const before = sync === 'none' ? undefined : await syncIn(exec, syncOpts);
    phases.mark('sync in');
    if (before) log.info(`synced ${before.guest.size} entries of ${workspace} into ${rec.name} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const vars = scriptEnv(process.env, names);
    for (const f of STEP_FILES) if (vars[f]) vars[f] = `/home/${rec.user}/.ryra-run/${id}/${f}`;
    const setup = await exec(`mkdir -p ${dir} && cd ${dir} && touch ${STEP_FILES.join(' ')} && cat > script && printf %s ${shq(envFile(vars))} > env`, {
      input: fs.readFileSync(o.script),
      timeoutMs: 60_000,
    });
    if (setup.code !== 0) throw new Error(`preparing the script in ${rec.name} failed: ${setup.stderr.trim()}`);
    phases.mark('script setup');

    const start = shq(startDir(workspace, o.cwd ?? process.cwd()));
    const cd = sync === 'none' ? `mkdir -p ${start} 2>/dev/null || true; cd ${start} 2>/dev/null || cd` : `cd ${start} || exit 1`;
    // From here a signal cancels the step (before, it ends the process as it always did: nothing
    // ran in the guest yet). The login shell's pid is the process group sshd made for the
    // command: a cancel stops that group.
    cancel.arm();
    const dropScript = new AbortController();
    const running = exec(`echo $$ > ${dir}/pgid; set -a; . ${dir}/env; set +a; ${cd}; bash -e ${dir}/script`, {
      stdout: process.stdout,
      stderr: process.stderr,
      timeoutMs: 24 * 3600_000,
      signal: dropScript.signal,
    });
    running.catch(() => {});
    const r = await Promise.race([running, cancel.requested.then(() => undefined)]);
    phases.mark('script');
    if (cancel.signal) {
      log.warning(`${cancel.signal}: stopping the script in ${rec.name}, then bringing back the step files and the workspace (at most ${CANCEL_BOUND_MS / 1000} s)`);
      await exec(stopGroup(dir), { timeoutMs: cancel.left() }).catch((err) => log.warning(`stopping the script failed: ${errorMessage(err)}`));
      // Its channel closes once the group is gone; one that does not is closed here.
      await withTimeout(running, Math.min(5_000, cancel.left()), 'the script\'s channel').catch(() => dropScript.abort());
    }

    // Both run even when one fails; the step fails after them, naming each failure. A cancel
    // bounds both (cancel.bound aborts them when its time is up).
    const failures: string[] = [];
    await copyStepFiles(client, `.ryra-run/${id}`, process.env, cancel.bound).catch((err) => failures.push(errorMessage(err)));
    phases.mark('step files');
    if (before && sync === 'both') {
      const t1 = Date.now();
      try {
        const back = await syncBack(exec, { ...syncOpts, signal: cancel.bound, ...(cancel.signal ? { timeoutMs: cancel.left() } : {}) }, before);
        log.info(`synced ${back.changed} changed and ${back.deleted} deleted entries back in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
        const over = reportSyncBack(back, syncMaxBytes);
        if (over) failures.push(over.message);
      } catch (err) {
        failures.push(`syncing the workspace back failed: ${errorMessage(err)}`);
      }
    }
    phases.mark('sync back');
    // A fresh VM goes with its files; a reused one keeps no step's.
    if (!o.fresh) await exec(`rm -rf ${dir}`, { timeoutMs: cancel.signal ? Math.min(10_000, cancel.left()) : 60_000 }).catch(() => {});
    phases.mark('cleanup');
    if (cancel.signal) {
      // A cancelled step ends with the signal's status whatever else failed; the failures are said.
      for (const f of failures) log.error(f);
      return SIGNAL_STATUS[cancel.signal];
    }
    if (failures.length) throw new Error(failures.join('\n'));
    return r!.code;
  } finally {
    cancel.dispose();
    client.end();
    if (o.fresh) await stopVm(rec);
    phases.mark('stop');
    phases.write({ fresh: !!o.fresh, booted });
  }
}
