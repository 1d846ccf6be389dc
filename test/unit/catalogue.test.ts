import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DISTROS, distroImage } from '../../src/distro.js';
import { parseChecksumFile } from '../../src/layers/raw.js';

test('debian-13 arm64 is the seed’s image and file names', () => {
  const d = distroImage('debian-13', 'arm64');
  assert.equal(d.url, 'https://cloud.debian.org/images/cloud/trixie/latest/debian-13-generic-arm64.qcow2');
  assert.equal(d.checksumUrl, 'https://cloud.debian.org/images/cloud/trixie/latest/SHA512SUMS');
  assert.equal(d.checksumFormat, 'sha512sums');
  assert.deepEqual(
    [d.rawFile, d.preparedFile, d.browserFile, d.snapshotBase, d.browserSnapshotBase],
    ['debian-13-generic-arm64.qcow2', 'debian-13-prepared-arm64.qcow2', 'debian-13-browser-arm64.qcow2', 'debian-13-arm64', 'debian-13-browser-arm64'],
  );
  assert.deepEqual(d.packages, ['podman', 'podman-compose', 'uidmap', 'git', 'systemd-container', 'curl', 'postgresql-client', 'restic']);
  assert.equal(d.defaultUser, 'debian');
});

test('debian-13 amd64 mirrors it', () => {
  const d = distroImage('debian-13', 'amd64');
  assert.equal(d.url, 'https://cloud.debian.org/images/cloud/trixie/latest/debian-13-generic-amd64.qcow2');
  assert.deepEqual([d.rawFile, d.preparedFile, d.snapshotBase], ['debian-13-generic-amd64.qcow2', 'debian-13-prepared-amd64.qcow2', 'debian-13-amd64']);
});

test('fedora-43 for both arches', () => {
  const a = distroImage('fedora-43', 'arm64');
  assert.equal(a.url, 'https://download.fedoraproject.org/pub/fedora/linux/releases/43/Cloud/aarch64/images/Fedora-Cloud-Base-Generic-43-1.1.aarch64.qcow2');
  assert.equal(a.checksumUrl, 'https://download.fedoraproject.org/pub/fedora/linux/releases/43/Cloud/aarch64/images/Fedora-Cloud-43-1.1-aarch64-CHECKSUM');
  assert.equal(a.checksumFormat, 'fedora-checksum');
  assert.deepEqual([a.rawFile, a.preparedFile, a.browserFile, a.snapshotBase], ['fedora-43-cloud-arm64.qcow2', 'fedora-43-prepared-arm64.qcow2', 'fedora-43-browser-arm64.qcow2', 'fedora-43-arm64']);
  assert.deepEqual(a.packages, ['podman', 'podman-compose', 'git', 'systemd-container', 'curl', 'restic']);
  assert.equal(a.defaultUser, 'fedora');
  const x = distroImage('fedora-43', 'amd64');
  assert.match(x.url, /\/43\/Cloud\/x86_64\/images\/Fedora-Cloud-Base-Generic-43-1\.1\.x86_64\.qcow2$/);
  assert.equal(x.rawFile, 'fedora-43-cloud-amd64.qcow2');
});

test('ubuntu-24.04: noble cloud images for both arches, checked against SHA256SUMS', () => {
  const base = 'https://cloud-images.ubuntu.com/releases/noble/release';
  for (const arch of ['arm64', 'amd64'] as const) {
    const u = distroImage('ubuntu-24.04', arch);
    assert.equal(u.url, `${base}/ubuntu-24.04-server-cloudimg-${arch}.img`);
    assert.equal(u.checksumUrl, `${base}/SHA256SUMS`);
    assert.equal(u.checksumFormat, 'sha256sums');
    // Cached under .qcow2 names (the image is qcow2), distinct from every other distro's.
    assert.deepEqual(
      [u.rawFile, u.preparedFile, u.browserFile, u.snapshotBase, u.browserSnapshotBase],
      [`ubuntu-24.04-cloudimg-${arch}.qcow2`, `ubuntu-24.04-prepared-${arch}.qcow2`, `ubuntu-24.04-browser-${arch}.qcow2`, `ubuntu-24.04-${arch}`, `ubuntu-24.04-browser-${arch}`],
    );
    assert.equal(u.defaultUser, 'ubuntu');
    assert.equal(u.guestPackageManager, 'apt');
    assert.deepEqual(u.packages, distroImage('debian-13', arch).packages);
  }
});

test('checksum files: Ubuntu\'s SHA256SUMS (binary-mode `*name` lines) yields the exact file\'s sha256', () => {
  const arm = 'a1'.repeat(32);
  const text = [
    `${'0f'.repeat(32)} *ubuntu-24.04-server-cloudimg-amd64.img`,
    `${'1e'.repeat(32)} *ubuntu-24.04-server-cloudimg-arm64-root.tar.xz`,
    `${'2d'.repeat(64)} *ubuntu-24.04-server-cloudimg-arm64.img`, // a sha512-length digest is not a sha256
    `${arm.toUpperCase()} *ubuntu-24.04-server-cloudimg-arm64.img`,
    '',
  ].join('\n');
  assert.deepEqual(parseChecksumFile(text, 'sha256sums', 'ubuntu-24.04-server-cloudimg-arm64.img'), { algorithm: 'sha256', hex: arm });
  assert.deepEqual(parseChecksumFile(text, 'sha256sums', 'ubuntu-24.04-server-cloudimg-amd64.img'), { algorithm: 'sha256', hex: '0f'.repeat(32) });
  assert.equal(parseChecksumFile(text, 'sha256sums', 'ubuntu-24.04-server-cloudimg-riscv64.img'), undefined);
  // Debian's sha512 lists still parse only as sha512.
  assert.equal(parseChecksumFile(`${'cd'.repeat(32)}  debian-13-generic-arm64.qcow2\n`, 'sha512sums', 'debian-13-generic-arm64.qcow2'), undefined);
});

test('no two distros share a cache file name', () => {
  for (const arch of ['arm64', 'amd64'] as const) {
    const names = DISTROS.flatMap((d) => {
      const e = distroImage(d, arch);
      return [e.rawFile, e.preparedFile, e.browserFile, e.snapshotBase, e.browserSnapshotBase];
    });
    assert.equal(new Set(names).size, names.length, arch);
  }
});

test('every distro × arch has every field', () => {
  for (const d of DISTROS) for (const arch of ['arm64', 'amd64'] as const) {
    const e = distroImage(d, arch);
    for (const [k, v] of Object.entries(e)) assert.ok(Array.isArray(v) ? v.length : v, `${d}/${arch}.${k}`);
  }
});
