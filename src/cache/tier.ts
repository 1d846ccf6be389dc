// The interface every remote layer tier implements (the Actions cache, an OCI registry). A layer is
// a flat set of files (its image files and its manifest, by name). A restore lands in a private
// staging dir that the caller made and owns: nothing a tier brings is trusted there. The caller
// checks it (cache/confine.ts) and only then moves it into the cache dir. Every failure is a warning
// and a miss: a remote tier never fails the job.

export type RestoreResult = 'restored' | 'failed' | 'miss';
export type SaveResult = 'saved' | 'exists' | 'failed';

export interface RemoteTier {
  /** For log lines: `Actions cache`, `registry ghcr.io/org/layers`. */
  readonly label: string;
  /**
   * Restores the entry `key` into `staging` (an empty dir): exactly the files named `files`, or
   * nothing. 'failed': the entry exists but its transfer failed (worth one more try); 'miss': no
   * such entry, or the tier is off.
   */
  restore(key: string, files: string[], staging: string): Promise<RestoreResult>;
  /** Saves `files` (names relative to `dir`) under `key`; 'exists' when the tier has that key already. */
  save(key: string, files: string[], dir: string): Promise<SaveResult>;
  /** Whether the tier is still on (a stall turns it off for the rest of the run). */
  readonly on: boolean;
  /** Starts anything slow to start ahead of the first call. */
  prestart?(): void;
  close(): void;
}
