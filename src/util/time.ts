// The one sleep, the one retry loop and the one time bound that every wait in the engine uses.

export class TimeoutError extends Error {
  override name = 'TimeoutError';
}

/** Resolves after `ms`. The timer keeps the process alive (a wait that is part of the work must). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });
}

/**
 * Races `p` against a timer: rejects with a TimeoutError naming `what` after `ms`. The timer is
 * ref'd, so a wait on a promise that only unref'd handles could settle still ends.
 */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout?: () => void): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  p.catch(() => {}); // a rejection after the timer won is nobody's to handle
  const timer = new Promise<never>((_, reject) => {
    t = setTimeout(() => {
      onTimeout?.();
      reject(new TimeoutError(`${what} did not finish within ${fmtSeconds(ms)}`));
    }, ms);
  });
  try {
    return await Promise.race([p, timer]);
  } finally {
    clearTimeout(t);
  }
}

export interface RetryOptions {
  /** Attempts in all (≥ 1). */
  attempts: number;
  /** Pause before attempt n+1, given n (1-based). */
  delayMs: (attempt: number) => number;
  /** Whether an error is worth another attempt (default: every error). */
  retryable?: (err: unknown) => boolean;
  /** Called before each pause with the error and the pause. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
  /** No new attempt starts after this time (ms since the epoch). */
  deadline?: number;
}

export async function retry<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      const delay = o.delayMs(attempt);
      const last = attempt >= o.attempts || (o.retryable && !o.retryable(err)) || (o.deadline !== undefined && Date.now() + delay >= o.deadline);
      if (last) throw err;
      o.onRetry?.(err, attempt, delay);
      await sleep(delay);
    }
  }
}

export function fmtSeconds(ms: number): string {
  return ms >= 10_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(1)} s`;
}
