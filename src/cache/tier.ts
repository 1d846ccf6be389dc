// The interface every remote layer tier implements (the Actions cache, an OCI registry). A layer is
// a flat set of files (its image files and its manifest, by name). A restore lands in a private
// staging dir that the caller made and owns: nothing a tier brings is trusted there. The caller
// checks it (cache/confine.ts) and only then moves it into the cache dir. Every failure is a warning
// and a miss: a remote tier never fails the job.

/** `refused: why`: the entry arrived but the tier itself would not unpack it (e.g. tar refused a name). */
export type RestoreResult = 'restored' | 'failed' | 'miss' | `refused: ${string}`;
export type SaveResult = 'saved' | 'exists' | 'failed';

export interface RestoreOptions {
  /**
   * The most bytes the entry may unpack to (what the layer can hold at most): a tier stops writing
   * past it and refuses the entry, so an archive that expands without end cannot fill the runner.
   */
  maxBytes: number;
  /**
   * A tier that checked a file's sha256 against the bytes it wrote may put it here (name → sha256
   * hex), so the caller need not read the file again.
   */
  verified?: Map<string, string>;
}

export interface RemoteTier {
  /** For log lines: `Actions cache`, `registry ghcr.io/org/layers`. */
  readonly label: string;
  /**
   * Restores the entry `key` into `staging` (an empty dir): exactly the files named `files`, or
   * nothing. 'failed': the entry exists but its transfer failed (worth one more try); 'miss': no
   * such entry, or the tier is off.
   */
  restore(key: string, files: string[], staging: string, opts: RestoreOptions): Promise<RestoreResult>;
  /** Whether the tier has a usable entry for `key` (undefined: it cannot tell now). */
  has?(key: string, files: string[]): Promise<boolean | undefined>;
  /** Saves `files` (names relative to `dir`) under `key`; 'exists' when the tier has that key already. */
  save(key: string, files: string[], dir: string): Promise<SaveResult>;
  /** Whether the tier is still on (a stall turns it off for the rest of the run). */
  readonly on: boolean;
  /**
   * The caller refused what restore(key) brought (checks in the staging dir failed). A tier whose
   * entries are immutable saves the next save(key) under another name its restore also finds (and
   * says so with `successors`); a tier whose entries are mutable replaces the entry at the next save.
   */
  refused?(key: string): void;
  /** After refused(key), a restore of `key` looks at its successor entries (worth asking once more). */
  readonly successors?: boolean;
  /** Starts anything slow to start ahead of the first call. */
  prestart?(): void;
  close(): void;
}
