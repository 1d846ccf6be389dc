// qemu-img operations used by the layers and by VM boots.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run } from '../util/proc.js';

/** A qcow2 overlay on `backing`. A relative backing path keeps a cache dir movable. */
export async function createOverlay(backing: string, file: string, opts: { size?: string; relative?: boolean } = {}): Promise<void> {
  const b = opts.relative ? path.relative(path.dirname(file), backing) : path.resolve(backing);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', b, '-F', 'qcow2', file, ...(opts.size ? [opts.size] : [])]);
}

/** Points an overlay at another backing file without touching data (the same content, moved). */
export async function rebaseUnsafe(file: string, backing: string): Promise<void> {
  await run('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', file]);
}

/**
 * qemu-img convert. Compression runs clusters in parallel (`-m 16 -W`: out-of-order writes let
 * every core compress; measured here: 13 s instead of 26 s for a 500 MiB image on 2 cores) and
 * uses zstd clusters (QEMU ≥ 5.1): measured on a 200 MiB prepared image, 4.2 s and 3.7 s of CPU
 * against zlib's 9.8 s and 13.8 s, the same size, and faster for every later read of the image.
 * A qemu-img built without zstd gets zlib.
 */
export async function convert(src: string, dst: string, opts: { srcFormat?: string; compress?: boolean } = {}): Promise<void> {
  const args = (zstd: boolean) => ['convert', '-f', opts.srcFormat ?? 'qcow2', '-O', 'qcow2', ...(opts.compress ? ['-c', '-m', '16', '-W', ...(zstd ? ['-o', 'compression_type=zstd'] : [])] : []), src, dst];
  if (!opts.compress) return void (await run('qemu-img', args(false)));
  try {
    await run('qemu-img', args(true));
  } catch (err) {
    if (!/compression.type|zstd/i.test(String(err))) throw err;
    fs.rmSync(dst, { force: true });
    await run('qemu-img', args(false));
  }
}

export interface InternalSnapshot {
  tag: string;
  /** Bytes of saved VM state (RAM and devices) in this file; 0 for a disk-only snapshot. */
  vmStateBytes: number;
}

/** Internal snapshots of a qcow2 file, from `qemu-img info`'s JSON (exact sizes, no table parsing). */
export async function listSnapshots(file: string): Promise<InternalSnapshot[]> {
  const r = await run('qemu-img', ['info', '-U', '--output=json', file]);
  const j = JSON.parse(r.stdout) as { snapshots?: { name: string; 'vm-state-size': number }[] };
  return (j.snapshots ?? []).map((x) => ({ tag: x.name, vmStateBytes: x['vm-state-size'] }));
}

export interface ImageInfo {
  format: string;
  virtualSize: number;
  backingFile?: string;
  backingFormat?: string;
  /** A qcow2 image whose data lives in another file (the `data-file` option). */
  dataFile?: string;
}

/** The image's own header (its backing file is named, never opened). */
export async function imageInfo(file: string): Promise<ImageInfo> {
  const r = await run('qemu-img', ['info', '-U', '--output=json', file]);
  const j = JSON.parse(r.stdout) as {
    format: string;
    'virtual-size': number;
    'backing-filename'?: string;
    'backing-filename-format'?: string;
    'format-specific'?: { data?: { 'data-file'?: string } };
  };
  return { format: j.format, virtualSize: j['virtual-size'], backingFile: j['backing-filename'], backingFormat: j['backing-filename-format'], dataFile: j['format-specific']?.data?.['data-file'] };
}

/**
 * `qemu-img check` of the file alone: true when its qcow2 metadata is consistent. Its backing file is
 * not opened (a restored overlay is checked before it sits beside its base).
 */
export async function checkImage(file: string): Promise<boolean> {
  const spec = JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: path.resolve(file) } });
  const r = await run('qemu-img', ['check', '-q', '-U', `json:${spec}`], { allowFailure: true });
  // 0: clean; 3: leaked clusters only (wasted space, e.g. after QEMU is killed following savevm).
  return r.code === 0 || r.code === 3;
}

/** Copies a file as a reflink where the filesystem can, else a plain copy; never writes `src`. */
export function copyFile(src: string, dst: string): void {
  fs.copyFileSync(src, dst, fs.constants.COPYFILE_FICLONE);
}
