// Minimal ISO 9660 + Joliet writer for cloud-init NoCloud seeds. Hand-written so the action
// does not need genisoimage / xorriso / cloud-localds on the runner: a handful of small files
// in a single root directory only takes a few volume descriptors, path tables and directory
// records (ECMA-119 plus the Joliet UCS-2 supplementary volume descriptor).

export interface IsoFile {
  name: string;
  data: Buffer | string;
}

const SECTOR = 2048;
const SYSTEM_AREA_SECTORS = 16;
const MAX_NAME_LENGTH = 64; // Joliet limit (UCS-2 code units)
const MAX_EXTENT_SIZE = 0xffffffff;
const PATH_TABLE_SIZE = 10; // one record: the root directory
// Characters Joliet forbids in file identifiers (besides control characters).
const FORBIDDEN_NAME_CHARS = /[\/\\*:;?]/;

interface PreparedFile {
  name: string;
  primaryName: Buffer; // e.g. "USER_DAT.;1"
  jolietName: Buffer; // UCS-2BE of the exact name
  data: Buffer;
  lba: number;
}

/**
 * Builds an ISO 9660 image (single root directory, no subdirectories) with Joliet
 * so lowercase names like `user-data` / `meta-data` / `network-config` survive.
 * The primary tree carries uppercase 8.3 names; readers that understand Joliet
 * (Linux isofs, blkid, Windows) use the Joliet tree. Pass `date` for byte-identical output.
 */
export function buildIso(volumeId: string, files: IsoFile[], date: Date = new Date()): Buffer {
  validateVolumeId(volumeId);
  if (!(date instanceof Date) || Number.isNaN(date.getTime())) {
    throw new Error('buildIso: date must be a valid Date');
  }
  const year = date.getUTCFullYear();
  if (year < 1900 || year > 2155) {
    throw new Error(`buildIso: date year ${year} is outside the ISO 9660 range 1900-2155`);
  }
  const prepared = prepareFiles(files);

  // Layout: system area, PVD (16), Joliet SVD (17), terminator (18), four path tables
  // (primary L/M, Joliet L/M, one sector each), primary root dir, Joliet root dir, file data.
  const primaryName = (f: PreparedFile): Buffer => f.primaryName;
  const jolietName = (f: PreparedFile): Buffer => f.jolietName;
  const primaryRootRecords = [...prepared].sort((a, b) => comparePrimaryNames(a.primaryName, b.primaryName));
  const jolietRootRecords = [...prepared].sort((a, b) => Buffer.compare(a.jolietName, b.jolietName));
  const primaryRootSectors = directorySectors(primaryRootRecords, primaryName);
  const jolietRootSectors = directorySectors(jolietRootRecords, jolietName);

  let next = SYSTEM_AREA_SECTORS + 3;
  const primaryLPath = next++;
  const primaryMPath = next++;
  const jolietLPath = next++;
  const jolietMPath = next++;
  const primaryRoot = next;
  next += primaryRootSectors;
  const jolietRoot = next;
  next += jolietRootSectors;
  for (const f of prepared) {
    if (f.data.length === 0) {
      f.lba = 0; // empty files own no extent
      continue;
    }
    f.lba = next;
    next += Math.ceil(f.data.length / SECTOR);
  }
  const totalSectors = next;

  const image = Buffer.alloc(totalSectors * SECTOR);
  const recDate = recordingDate(date);
  const vdDate = volumeDescriptorDate(date);

  const primaryRootDir: DirInfo = { lba: primaryRoot, size: primaryRootSectors * SECTOR };
  const jolietRootDir: DirInfo = { lba: jolietRoot, size: jolietRootSectors * SECTOR };

  writeVolumeDescriptor(image.subarray(16 * SECTOR, 17 * SECTOR), {
    joliet: false,
    volumeId,
    totalSectors,
    lPath: primaryLPath,
    mPath: primaryMPath,
    root: primaryRootDir,
    recDate,
    vdDate,
  });
  writeVolumeDescriptor(image.subarray(17 * SECTOR, 18 * SECTOR), {
    joliet: true,
    volumeId,
    totalSectors,
    lPath: jolietLPath,
    mPath: jolietMPath,
    root: jolietRootDir,
    recDate,
    vdDate,
  });
  const terminator = image.subarray(18 * SECTOR, 19 * SECTOR);
  terminator[0] = 255;
  terminator.write('CD001', 1, 'ascii');
  terminator[6] = 1;

  writePathTable(image, primaryLPath, primaryRoot, 'le');
  writePathTable(image, primaryMPath, primaryRoot, 'be');
  writePathTable(image, jolietLPath, jolietRoot, 'le');
  writePathTable(image, jolietMPath, jolietRoot, 'be');

  writeDirectory(image, primaryRootDir, primaryRootRecords, primaryName, recDate);
  writeDirectory(image, jolietRootDir, jolietRootRecords, jolietName, recDate);

  for (const f of prepared) {
    if (f.data.length > 0) f.data.copy(image, f.lba * SECTOR);
  }
  return image;
}

// ---------------------------------------------------------------------------------------------
// Input validation and naming

function validateVolumeId(volumeId: string): void {
  if (typeof volumeId !== 'string' || volumeId.length === 0) {
    throw new Error('buildIso: volume id must be a non-empty string');
  }
  if (volumeId.length > 32) {
    throw new Error(`buildIso: volume id "${volumeId}" is longer than 32 characters`);
  }
  if (!/^[\x20-\x7e]+$/.test(volumeId)) {
    throw new Error(`buildIso: volume id "${volumeId}" must be printable ASCII`);
  }
}

function prepareFiles(files: IsoFile[]): PreparedFile[] {
  if (!Array.isArray(files)) throw new Error('buildIso: files must be an array');
  const seen = new Set<string>();
  const usedPrimary = new Set<string>();
  return files.map((file) => {
    const name = file?.name;
    if (typeof name !== 'string' || name.length === 0) {
      throw new Error('buildIso: file name must be a non-empty string');
    }
    if (name.length > MAX_NAME_LENGTH) {
      throw new Error(`buildIso: file name "${name}" is longer than ${MAX_NAME_LENGTH} characters`);
    }
    if (name.includes('/') || name.includes('\\')) {
      throw new Error(`buildIso: file name "${name}" must not contain slashes (no subdirectories)`);
    }
    if (FORBIDDEN_NAME_CHARS.test(name) || /[\x00-\x1f]/.test(name)) {
      throw new Error(`buildIso: file name "${name}" contains a character not allowed in Joliet names`);
    }
    if (name === '.' || name === '..') {
      throw new Error(`buildIso: file name "${name}" is reserved`);
    }
    if (seen.has(name)) throw new Error(`buildIso: duplicate file name "${name}"`);
    seen.add(name);

    const data = typeof file.data === 'string' ? Buffer.from(file.data, 'utf8') : file.data;
    if (!Buffer.isBuffer(data)) {
      throw new Error(`buildIso: data of "${name}" must be a Buffer or string`);
    }
    if (data.length > MAX_EXTENT_SIZE) {
      throw new Error(`buildIso: file "${name}" is too large for a single ISO 9660 extent`);
    }
    return {
      name,
      primaryName: Buffer.from(toPrimaryName(name, usedPrimary), 'ascii'),
      jolietName: Buffer.from(name, 'utf16le').swap16(),
      data,
      lba: 0,
    };
  });
}

/** Maps a name to a unique ISO 9660 level-1 identifier: 8.3 d-characters plus ";1". */
function toPrimaryName(name: string, used: Set<string>): string {
  const clean = (s: string): string => s.toUpperCase().replace(/[^A-Z0-9_]/g, '_');
  const dot = name.lastIndexOf('.');
  let base = clean(dot > 0 ? name.slice(0, dot) : name).slice(0, 8);
  const ext = dot > 0 ? clean(name.slice(dot + 1)).slice(0, 3) : '';
  if (base.length === 0) base = '_';
  let candidate = base;
  for (let n = 1; used.has(`${candidate}.${ext}`); n++) {
    const suffix = String(n);
    candidate = base.slice(0, 8 - suffix.length) + suffix;
  }
  used.add(`${candidate}.${ext}`);
  return `${candidate}.${ext};1`;
}

/** ECMA-119 9.3 ordering: name, then extension, each compared as if padded with spaces. */
function comparePrimaryNames(a: Buffer, b: Buffer): number {
  const split = (buf: Buffer): [string, string] => {
    const s = buf.toString('ascii').replace(/;1$/, '');
    const dot = s.indexOf('.');
    return [s.slice(0, dot).padEnd(8, ' '), s.slice(dot + 1).padEnd(3, ' ')];
  };
  const [an, ae] = split(a);
  const [bn, be] = split(b);
  return an < bn ? -1 : an > bn ? 1 : ae < be ? -1 : ae > be ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Structures

interface DirInfo {
  lba: number;
  size: number;
}

function recordLength(nameLength: number): number {
  const len = 33 + nameLength;
  return len % 2 === 0 ? len : len + 1;
}

/** Sectors needed for a directory with "." and ".." plus one record per file; records never straddle sectors. */
function directorySectors(files: PreparedFile[], nameOf: (f: PreparedFile) => Buffer): number {
  let sectors = 1;
  let offset = 2 * recordLength(1);
  for (const f of files) {
    const len = recordLength(nameOf(f).length);
    if (offset + len > SECTOR) {
      sectors++;
      offset = 0;
    }
    offset += len;
  }
  return sectors;
}

function writeDirectory(
  image: Buffer,
  dir: DirInfo,
  files: PreparedFile[],
  nameOf: (f: PreparedFile) => Buffer,
  recDate: Buffer,
): void {
  const start = dir.lba * SECTOR;
  let offset = 0;
  const put = (record: Buffer): void => {
    const inSector = offset % SECTOR;
    if (inSector + record.length > SECTOR) offset += SECTOR - inSector;
    if (offset + record.length > dir.size) throw new Error('buildIso: internal error, directory overflow');
    record.copy(image, start + offset);
    offset += record.length;
  };
  put(directoryRecord(dir.lba, dir.size, true, Buffer.from([0]), recDate));
  put(directoryRecord(dir.lba, dir.size, true, Buffer.from([1]), recDate));
  for (const f of files) put(directoryRecord(f.lba, f.data.length, false, nameOf(f), recDate));
}

function directoryRecord(lba: number, size: number, isDir: boolean, name: Buffer, recDate: Buffer): Buffer {
  const rec = Buffer.alloc(recordLength(name.length));
  rec[0] = rec.length;
  rec[1] = 0; // extended attribute record length
  both32(rec, 2, lba);
  both32(rec, 10, size);
  recDate.copy(rec, 18);
  rec[25] = isDir ? 0x02 : 0x00;
  rec[26] = 0; // file unit size
  rec[27] = 0; // interleave gap
  both16(rec, 28, 1); // volume sequence number
  rec[32] = name.length;
  name.copy(rec, 33);
  return rec;
}

/** A path table holding only the root directory (record number 1, parent 1). */
function writePathTable(image: Buffer, sector: number, rootLba: number, endian: 'le' | 'be'): void {
  const off = sector * SECTOR;
  image[off] = 1; // directory identifier length
  image[off + 1] = 0; // extended attribute record length
  if (endian === 'le') {
    image.writeUInt32LE(rootLba, off + 2);
    image.writeUInt16LE(1, off + 6);
  } else {
    image.writeUInt32BE(rootLba, off + 2);
    image.writeUInt16BE(1, off + 6);
  }
  image[off + 8] = 0; // root identifier, then one padding byte
}

interface VolumeDescriptorOptions {
  joliet: boolean;
  volumeId: string;
  totalSectors: number;
  lPath: number;
  mPath: number;
  root: DirInfo;
  recDate: Buffer;
  vdDate: Buffer;
}

function writeVolumeDescriptor(vd: Buffer, o: VolumeDescriptorOptions): void {
  const text = (offset: number, length: number, value: string): void => {
    if (o.joliet) {
      const n = Math.floor(length / 2); // odd-width fields keep a trailing zero byte
      const chars = value.slice(0, n).padEnd(n, ' ');
      Buffer.from(chars, 'utf16le').swap16().copy(vd, offset);
    } else {
      vd.write(value.slice(0, length).padEnd(length, ' '), offset, length, 'ascii');
    }
  };
  vd[0] = o.joliet ? 2 : 1;
  vd.write('CD001', 1, 'ascii');
  vd[6] = 1; // version
  text(8, 32, ''); // system identifier
  text(40, 32, o.volumeId);
  both32(vd, 80, o.totalSectors);
  if (o.joliet) vd.write('%/E', 88, 'ascii'); // UCS-2 level 3
  both16(vd, 120, 1); // volume set size
  both16(vd, 124, 1); // volume sequence number
  both16(vd, 128, SECTOR); // logical block size
  both32(vd, 132, PATH_TABLE_SIZE);
  vd.writeUInt32LE(o.lPath, 140);
  vd.writeUInt32BE(o.mPath, 148);
  directoryRecord(o.root.lba, o.root.size, true, Buffer.from([0]), o.recDate).copy(vd, 156);
  text(190, 128, ''); // volume set identifier
  text(318, 128, ''); // publisher
  text(446, 128, ''); // data preparer
  text(574, 128, 'RYRA-VM-ACTION'); // application
  text(702, 37, ''); // copyright file
  text(739, 37, ''); // abstract file
  text(776, 37, ''); // bibliographic file
  o.vdDate.copy(vd, 813); // creation
  o.vdDate.copy(vd, 830); // modification
  vd.write('0000000000000000', 847, 'ascii'); // expiration: not specified
  vd[863] = 0;
  vd.write('0000000000000000', 864, 'ascii'); // effective: not specified
  vd[880] = 0;
  vd[881] = 1; // file structure version
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers

function both16(buf: Buffer, offset: number, value: number): void {
  buf.writeUInt16LE(value, offset);
  buf.writeUInt16BE(value, offset + 2);
}

function both32(buf: Buffer, offset: number, value: number): void {
  buf.writeUInt32LE(value, offset);
  buf.writeUInt32BE(value, offset + 4);
}

/** 7-byte directory record date (UTC, GMT offset 0). */
function recordingDate(d: Date): Buffer {
  return Buffer.from([
    d.getUTCFullYear() - 1900,
    d.getUTCMonth() + 1,
    d.getUTCDate(),
    d.getUTCHours(),
    d.getUTCMinutes(),
    d.getUTCSeconds(),
    0,
  ]);
}

/** 17-byte volume descriptor date: "YYYYMMDDHHMMSScc" digits plus GMT offset 0. */
function volumeDescriptorDate(d: Date): Buffer {
  const p = (n: number, w: number): string => String(n).padStart(w, '0');
  const s =
    p(d.getUTCFullYear(), 4) +
    p(d.getUTCMonth() + 1, 2) +
    p(d.getUTCDate(), 2) +
    p(d.getUTCHours(), 2) +
    p(d.getUTCMinutes(), 2) +
    p(d.getUTCSeconds(), 2) +
    p(Math.floor(d.getUTCMilliseconds() / 10), 2);
  return Buffer.concat([Buffer.from(s, 'ascii'), Buffer.from([0])]);
}
