// The real apt path of install-deps: with one need missing (the aarch64 UEFI firmware), the action
// installs exactly that package, and a second call installs nothing. It changes the machine, so it
// runs in CI (CI=true) or when asked (RYRA_TEST_APT=1), as root on a Debian/Ubuntu host.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { ensureHostDeps, missingNeeds } from '../../src/host/deps.js';
import { firmwareInstalled } from '../../src/host/firmware.js';

const enabled = (process.env.CI === 'true' || process.env.RYRA_TEST_APT === '1') && process.getuid?.() === 0;

test('install-deps installs only what is missing, with apt', { skip: !enabled && 'changes the machine: set RYRA_TEST_APT=1 (root)', timeout: 15 * 60_000 }, async () => {
  try {
    execFileSync('dpkg', ['-r', 'qemu-efi-aarch64'], { stdio: 'ignore' });
    assert.equal(firmwareInstalled('aarch64'), false, 'the firmware is gone');
    assert.deepEqual(await missingNeeds('aarch64', true), ['firmware']);
    assert.deepEqual(await ensureHostDeps('aarch64', true), ['qemu-efi-aarch64']);
    assert.equal(firmwareInstalled('aarch64'), true);
    assert.deepEqual(await ensureHostDeps('aarch64', true), [], 'nothing left to install');
  } finally {
    // Whatever happened, leave the machine as the other tests need it.
    execFileSync('sh', ['-c', 'dpkg -s qemu-efi-aarch64 >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-efi-aarch64'], { stdio: 'ignore' });
  }
});
