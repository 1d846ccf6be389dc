// Child processes with a time limit, optional stdin and captured output. @actions/exec has no
// timeout or abort, and a probe of a hanging QEMU must never hang the job. Every call is bounded:
// without a timeoutMs of its own it gets DEFAULT_TIMEOUT_MS.
import { spawn } from 'node:child_process';

/** The bound of a child process that names none: long enough for a qemu-img conversion of a large image. */
export const DEFAULT_TIMEOUT_MS = 20 * 60_000;

export interface RunOptions {
  timeoutMs?: number;
  input?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Return a non-zero exit instead of throwing. */
  allowFailure?: boolean;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export class CommandError extends Error {
  constructor(
    message: string,
    readonly result: RunResult,
  ) {
    super(message);
    this.name = 'CommandError';
  }
}

export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${cmd}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const result = { code, signal, stdout, stderr, timedOut };
      if ((code === 0 && !timedOut) || opts.allowFailure) return resolve(result);
      const why = timedOut ? `timed out after ${Math.round(timeoutMs / 1000)} s` : `exited with ${code ?? signal}`;
      const detail = stderr.trim().split('\n').slice(-5).join('\n');
      reject(new CommandError(`${cmd} ${args.join(' ')} ${why}${detail ? `: ${detail}` : ''}`, result));
    });
    child.stdin.on('error', () => {}); // the child may exit before reading its input
    child.stdin.end(opts.input ?? '');
  });
}

/** True when `cmd` is found on PATH. */
export async function which(cmd: string): Promise<string | undefined> {
  const r = await run('sh', ['-c', `command -v "$1"`, 'sh', cmd], { allowFailure: true, timeoutMs: 10_000 });
  const p = r.stdout.trim();
  return r.code === 0 && p ? p : undefined;
}
