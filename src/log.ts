// One logger for the action (workflow commands via @actions/core) and the CLI (plain stderr lines).
import * as core from '@actions/core';
import { getKnobs } from './env.js';

export interface Logger {
  info(msg: string): void;
  warning(msg: string): void;
  error(msg: string): void;
  debug(msg: string): void;
  group<T>(name: string, fn: () => Promise<T>): Promise<T>;
}

export const actionsLogger: Logger = {
  info: (m) => core.info(m),
  warning: (m) => core.warning(m),
  error: (m) => core.error(m),
  debug: (m) => core.debug(m),
  group: (name, fn) => core.group(name, fn),
};

export function plainLogger(stream: NodeJS.WritableStream = process.stderr, verbose = getKnobs().debug): Logger {
  const write = (m: string) => stream.write(m + '\n');
  return {
    info: write,
    warning: (m) => write(`warning: ${m}`),
    error: (m) => write(`error: ${m}`),
    debug: (m) => verbose && write(`debug: ${m}`),
    group: async (name, fn) => {
      write(`== ${name}`);
      return fn();
    },
  };
}

export let log: Logger = process.env.GITHUB_ACTIONS === 'true' ? actionsLogger : plainLogger();

export function setLogger(l: Logger): void {
  log = l;
}

/** Logs `label: elapsed/timeout` every `everyMs` until stopped (the seed's WaitProgress heartbeat). */
export function heartbeat(label: string, timeoutMs: number, everyMs = 30_000): () => void {
  const start = Date.now();
  const t = setInterval(() => {
    const s = Math.round((Date.now() - start) / 1000);
    log.info(`  still waiting for ${label}: ${s}s elapsed (timeout ${Math.round(timeoutMs / 1000)}s)`);
  }, everyMs);
  t.unref();
  return () => clearInterval(t);
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
