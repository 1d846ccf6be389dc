// The distro catalogue as data: one entry per distro × guest arch. Code paths never branch on a
// distro name; they read these fields. File names are the seed's, so existing caches are found.

export type Arch = 'arm64' | 'amd64';
export const ARCHES: readonly Arch[] = ['arm64', 'amd64'];
export type ChecksumFormat = 'sha512sums' | 'sha256sums' | 'fedora-checksum';

export interface DistroImage {
  distro: DistroName;
  arch: Arch;
  /** Cloud image to download. */
  url: string;
  /** File that lists the image's digest, and how to read it. */
  checksumUrl: string;
  checksumFormat: ChecksumFormat;
  /** Cache file names (seed-compatible). */
  rawFile: string;
  preparedFile: string;
  browserFile: string;
  /** `<snapshotBase>-snapshot-<mem>.qcow2` etc. */
  snapshotBase: string;
  browserSnapshotBase: string;
  /** The cloud image's own default user (the action logs in as `ryra`, created by cloud-init). */
  defaultUser: string;
  /** Packages cloud-init installs in the prepared layer (the seed's lists, exactly). */
  packages: readonly string[];
  /** Package manager inside the guest, for the browser layer's install script. */
  guestPackageManager: 'apt' | 'dnf';
}

export const DISTROS = ['debian-13', 'fedora-43', 'ubuntu-24.04'] as const;
export type DistroName = (typeof DISTROS)[number];

const DEBIAN_PACKAGES = [
  'podman',
  'podman-compose',
  'uidmap',
  'git',
  'systemd-container',
  'curl',
  'postgresql-client',
  'restic',
] as const;
// Fedora: uidmap is part of shadow-utils (already installed).
const FEDORA_PACKAGES = ['podman', 'podman-compose', 'git', 'systemd-container', 'curl', 'restic'] as const;

// Ubuntu: the same names as Debian's (podman-compose and restic are in universe, on in cloud images).
const UBUNTU_PACKAGES = DEBIAN_PACKAGES;

const DEBIAN_BASE = 'https://cloud.debian.org/images/cloud/trixie/latest';
const FEDORA_BASE = 'https://download.fedoraproject.org/pub/fedora/linux/releases/43/Cloud';
const FEDORA_ARCH: Record<Arch, string> = { arm64: 'aarch64', amd64: 'x86_64' };
const UBUNTU_BASE = 'https://cloud-images.ubuntu.com/releases/noble/release';

function debian(arch: Arch): DistroImage {
  return {
    distro: 'debian-13',
    arch,
    url: `${DEBIAN_BASE}/debian-13-generic-${arch}.qcow2`,
    checksumUrl: `${DEBIAN_BASE}/SHA512SUMS`,
    checksumFormat: 'sha512sums',
    rawFile: `debian-13-generic-${arch}.qcow2`,
    preparedFile: `debian-13-prepared-${arch}.qcow2`,
    browserFile: `debian-13-browser-${arch}.qcow2`,
    snapshotBase: `debian-13-${arch}`,
    browserSnapshotBase: `debian-13-browser-${arch}`,
    defaultUser: 'debian',
    packages: DEBIAN_PACKAGES,
    guestPackageManager: 'apt',
  };
}

function fedora(arch: Arch): DistroImage {
  const a = FEDORA_ARCH[arch];
  return {
    distro: 'fedora-43',
    arch,
    url: `${FEDORA_BASE}/${a}/images/Fedora-Cloud-Base-Generic-43-1.1.${a}.qcow2`,
    checksumUrl: `${FEDORA_BASE}/${a}/images/Fedora-Cloud-43-1.1-${a}-CHECKSUM`,
    checksumFormat: 'fedora-checksum',
    rawFile: `fedora-43-cloud-${arch}.qcow2`,
    preparedFile: `fedora-43-prepared-${arch}.qcow2`,
    browserFile: `fedora-43-browser-${arch}.qcow2`,
    snapshotBase: `fedora-43-${arch}`,
    browserSnapshotBase: `fedora-43-browser-${arch}`,
    defaultUser: 'fedora',
    packages: FEDORA_PACKAGES,
    guestPackageManager: 'dnf',
  };
}

function ubuntu(arch: Arch): DistroImage {
  return {
    distro: 'ubuntu-24.04',
    arch,
    // A qcow2 image despite the .img name; cached under a .qcow2 name like the others.
    url: `${UBUNTU_BASE}/ubuntu-24.04-server-cloudimg-${arch}.img`,
    checksumUrl: `${UBUNTU_BASE}/SHA256SUMS`,
    checksumFormat: 'sha256sums',
    rawFile: `ubuntu-24.04-cloudimg-${arch}.qcow2`,
    preparedFile: `ubuntu-24.04-prepared-${arch}.qcow2`,
    browserFile: `ubuntu-24.04-browser-${arch}.qcow2`,
    snapshotBase: `ubuntu-24.04-${arch}`,
    browserSnapshotBase: `ubuntu-24.04-browser-${arch}`,
    defaultUser: 'ubuntu',
    packages: UBUNTU_PACKAGES,
    guestPackageManager: 'apt',
  };
}

const CATALOGUE: Record<DistroName, Record<Arch, DistroImage>> = {
  'debian-13': { arm64: debian('arm64'), amd64: debian('amd64') },
  'fedora-43': { arm64: fedora('arm64'), amd64: fedora('amd64') },
  'ubuntu-24.04': { arm64: ubuntu('arm64'), amd64: ubuntu('amd64') },
};

export function isDistro(name: string): name is DistroName {
  return (DISTROS as readonly string[]).includes(name);
}

export function distroImage(distro: DistroName, arch: Arch): DistroImage {
  return CATALOGUE[distro][arch];
}

/** The user the action creates in every guest through cloud-init. */
export const GUEST_USER = 'ryra';
