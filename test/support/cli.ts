// Runs the bundled CLI (dist/cli.js) the way a user does, in its own process group so a test can
// kill it and every QEMU it started at once, as a cancelled job would be.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface CliRun {
  child: ChildProcess;
  done: Promise<{ code: number | null; stdout: string; stderr: string; ms: number }>;
  /** Resolves when stderr has printed a line matching `re`. */
  waitFor(re: RegExp): Promise<void>;
  killGroup(): void;
}

const running = new Set<ChildProcess>();

/**
 * A layer that failed (the run goes on without it, and a test's later assertion only sees its
 * absence): its warning goes to the test's stderr whatever the verbosity, so a CI log shows the cause.
 */
export function echoLayerFailures(label: string, text: string): void {
  if (process.env.RYRA_TEST_VERBOSE) return;
  for (const l of text.split('\n')) if (/failed to create the |gave up after waiting|compromised/.test(l)) process.stderr.write(`${label}: ${l}\n`);
}

export function killAllCliRuns(): void {
  for (const c of running) {
    try {
      process.kill(-c.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): CliRun {
  const start = Date.now();
  const child = spawn(process.execPath, [path.resolve('dist/cli.js'), ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  running.add(child);
  let stdout = '';
  let stderr = '';
  const watchers: { re: RegExp; resolve: () => void }[] = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
    if (process.env.RYRA_TEST_VERBOSE) process.stderr.write(d);
    for (const w of [...watchers]) if (w.re.test(stderr)) (watchers.splice(watchers.indexOf(w), 1), w.resolve());
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string; ms: number }>((resolve) =>
    child.on('close', (code) => {
      running.delete(child);
      echoLayerFailures(`ryra-vm ${args[0]}`, stderr);
      resolve({ code, stdout, stderr, ms: Date.now() - start });
    }),
  );
  return {
    child,
    done,
    waitFor: (re) =>
      new Promise((resolve, reject) => {
        if (re.test(stderr)) return resolve();
        watchers.push({ re, resolve });
        void done.then(() => reject(new Error(`CLI exited before printing ${re}:\n${stderr.slice(-3000)}`)));
      }),
    killGroup: () => process.kill(-child.pid!, 'SIGKILL'),
  };
}

export function readJson<T>(file: string): T {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
}
