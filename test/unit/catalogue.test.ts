import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DISTROS, distroImage } from '../../src/distro.js';

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

test('every distro × arch has every field', () => {
  for (const d of DISTROS) for (const arch of ['arm64', 'amd64'] as const) {
    const e = distroImage(d, arch);
    for (const [k, v] of Object.entries(e)) assert.ok(Array.isArray(v) ? v.length : v, `${d}/${arch}.${k}`);
  }
});
