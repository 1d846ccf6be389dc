// The names action.yml declares, once. Everything else (the action, the CLI's --json, the manifest,
// the README check) refers to these constants, never to string literals.

export const Inputs = {
  Distro: 'distro',
  Arch: 'arch',
  Memory: 'memory',
  Cpus: 'cpus',
  Browser: 'browser',
  Kvm: 'kvm',
  KvmFixPermissions: 'kvm-fix-permissions',
  Redownload: 'redownload',
  Snapshot: 'snapshot',
  Cache: 'cache',
  CacheSave: 'cache-save',
  CacheDir: 'cache-dir',
  Packages: 'packages',
  BasePackages: 'base-packages',
  ImageUrl: 'image-url',
  ImageChecksum: 'image-checksum',
  ImageChecksumUrl: 'image-checksum-url',
  InstallDeps: 'install-deps',
  CacheMaxSize: 'cache-max-size',
  Prepare: 'prepare',
  BrowserSource: 'browser-source',
  DiskSize: 'disk-size',
  Boot: 'boot',
  Forward: 'forward',
  BootTimeout: 'boot-timeout',
  EnvironmentVariables: 'environment-variables',
  Sync: 'sync',
  SyncMaxSize: 'sync-max-size',
  Registry: 'registry',
  RegistryToken: 'registry-token',
} as const;
export type InputName = (typeof Inputs)[keyof typeof Inputs];

export const Outputs = {
  Image: 'image',
  EfiCode: 'efi-code',
  EfiVarsTemplate: 'efi-vars-template',
  Prepared: 'prepared',
  Snapshot: 'snapshot',
  SnapshotDisk: 'snapshot-disk',
  SnapshotEfivars: 'snapshot-efivars',
  SnapshotSeedIso: 'snapshot-seed-iso',
  SnapshotMemoryMb: 'snapshot-memory-mb',
  SshKey: 'ssh-key',
  SshPublicKey: 'ssh-public-key',
  SshUser: 'ssh-user',
  BrowserImage: 'browser-image',
  BrowserSnapshotDisk: 'browser-snapshot-disk',
  BrowserSnapshotEfivars: 'browser-snapshot-efivars',
  BrowserSnapshotSeedIso: 'browser-snapshot-seed-iso',
  Accel: 'accel',
  Qemu: 'qemu',
  CacheHit: 'cache-hit',
  CacheHitLayers: 'cache-hit-layers',
  Manifest: 'manifest',
} as const;
export type OutputName = (typeof Outputs)[keyof typeof Outputs];
export type OutputValues = Record<OutputName, string>;

/** Keys of the action's saved state between main and post. */
export const State = {
  RuntimeDir: 'runtime-dir',
  Manifest: 'manifest',
  CacheDir: 'cache-dir',
  /** A file listing the layers this job has that a remote tier may lack (the post step saves them). */
  PendingSaves: 'pending-saves',
} as const;
