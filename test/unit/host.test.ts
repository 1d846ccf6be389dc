import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { planInstall } from '../../src/host/deps.js';
import { AARCH64_PFLASH_SIZE, firmwareNotFound, padTo, selectFromDescriptors, selectFromKnownPaths } from '../../src/host/firmware.js';
import { accelArgs, chooseAccel, hostCpuIdentity, kvmFallbackWarning, parseMachineAlias, parseQemuVersion, qemuBinary, KVM_RULES_FILE, KVM_UDEV_RULE } from '../../src/host/platform.js';
import { hostIdentity, kvmDeviceProblem, probeKvm, readVerdict, recordVerdict } from '../../src/host/kvm.js';
import { findFirmware } from '../../src/host/firmware.js';
import { qemuStandIn, type KvmShape } from '../support/qemu-stand-in.js';

describe('platform', () => {
  test('guest binary per arch', () => {
    assert.equal(qemuBinary('arm64'), 'qemu-system-aarch64');
    assert.equal(qemuBinary('amd64'), 'qemu-system-x86_64');
  });

  test('versioned machine from -machine help', () => {
    const help = 'Supported machines are:\nvirt                 QEMU 7.2 ARM Virtual Machine (alias of virt-7.2)\nvirt-7.2             QEMU 7.2 ARM Virtual Machine\n';
    assert.equal(parseMachineAlias(help, 'virt'), 'virt-7.2');
    const x86 = 'q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\npc                   Standard PC (alias of pc-i440fx-7.2)\n';
    assert.equal(parseMachineAlias(x86, 'q35'), 'pc-q35-7.2');
    assert.equal(parseMachineAlias(x86, 'virt'), undefined);
    assert.equal(parseQemuVersion('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)'), '7.2.22');
  });

  test('accelerator arguments', () => {
    assert.deepEqual(accelArgs('aarch64', 'kvm'), { accel: 'kvm', args: ['-accel', 'kvm', '-cpu', 'host'], machineProps: ['gic-version=3'] });
    assert.deepEqual(accelArgs('aarch64', 'tcg').args, ['-accel', 'tcg,thread=multi', '-cpu', 'max'], 'the seed\'s -cpu: its consumers restore with it');
    assert.deepEqual(accelArgs('x86_64', 'tcg').args, ['-accel', 'tcg,thread=multi', '-cpu', 'max']);
    assert.deepEqual(accelArgs('x86_64', 'kvm'), { accel: 'kvm', args: ['-accel', 'kvm', '-cpu', 'host'], machineProps: [] });
  });

  test('accelerator choice', () => {
    const ok = { usable: true, reason: 'the firmware printed on the serial console' };
    const no = { usable: false, reason: '/dev/kvm cannot be opened read-write (EACCES)' };
    assert.deepEqual(chooseAccel('auto', false, ok), { accel: 'kvm' });
    assert.deepEqual(chooseAccel('false', false, ok), { accel: 'tcg' });
    const auto = chooseAccel('auto', false, no);
    assert.equal(auto.accel, 'tcg');
    assert.match(auto.warning!, /^KVM is not used: .*EACCES.*Falling back to TCG.*kvm group.*udev rule.*nested virtualization/);
    const forced = chooseAccel('true', false, no);
    assert.match(forced.error!, /^kvm: true, but KVM cannot run the guest here: .*EACCES.*usermod -aG kvm.*MODE="0666"/);
    assert.equal(forced.error!.includes('\n'), false, 'one line');
    assert.match(chooseAccel('auto', true, ok).warning!, /TCG emulation/);
  });

  test('KVM verdicts are recorded per host identity', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvm-verdicts-'));
    try {
      const a = hostIdentity({ binary: 'qemu-system-x86_64', version: '7.2.22' }, 'AMD EPYC', '6.1.0');
      const b = hostIdentity({ binary: 'qemu-system-x86_64', version: '8.2.2' }, 'AMD EPYC', '6.1.0');
      assert.equal(readVerdict(dir, a), undefined);
      recordVerdict(dir, a, { usable: false, reason: 'QEMU exited under KVM: failed to set MSR 0x10a', source: 'probe' });
      assert.equal(readVerdict(dir, a)?.usable, false);
      assert.match(readVerdict(dir, a)!.at!, /^\d{4}-/);
      assert.equal(readVerdict(dir, b), undefined, 'another QEMU version is another host');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a missing /dev/kvm is named as such', () => {
    assert.match(kvmDeviceProblem('/dev/no-such-kvm')!, /does not exist/);
  });
});

describe('KVM probe (real QEMU, a few seconds each)', () => {
  // Each verdict on a host shape the test makes: a stand-in qemu-system-x86_64 that does under KVM
  // what QEMU does on such a host (test/support/qemu-stand-in.sh), whatever this host's KVM is.
  const dirs: string[] = [];
  after(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
  const tmp = (prefix: string) => (dirs.push(fs.mkdtempSync(path.join(os.tmpdir(), prefix))), dirs.at(-1)!);
  const fw = () => findFirmware('x86_64', 'pc-q35-7.2', tmp('fw-'));
  const base = () => ({ qemu: 'qemu-system-x86_64', arch: 'x86_64' as const, machine: 'q35', firmware: fw() });
  const kvm = accelArgs('x86_64', 'kvm');
  const shaped = (shape: KvmShape) => qemuStandIn(shape, tmp(`qemu-${shape}-`)).qemu;

  test('a KVM that runs the job\'s machine: its firmware shows signs of life', async () => {
    // The stand-in runs it under TCG, far slower than KVM, beside the e2e lanes' guests (and, on a
    // fresh machine, the arm64 image build): seen taking over 8 s there, ~1-6 s alone.
    const r = await probeKvm({ ...base(), qemu: shaped('works'), accel: kvm, timeoutMs: 60_000 });
    assert.equal(r.usable, true, r.reason);
  });

  for (const [shape, error] of [['missing', /^QEMU exited under KVM: Could not access KVM kernel module: No such file or directory$/], ['abort', /^QEMU exited under KVM: qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69$/]] as const) {
    test(`QEMU exiting under KVM (${shape}): not usable, QEMU's own error as the reason, at once`, async () => {
      const start = Date.now();
      const r = await probeKvm({ ...base(), qemu: shaped(shape), accel: kvm, timeoutMs: 4000 });
      assert.equal(r.usable, false);
      assert.match(r.reason, error);
      assert.ok(Date.now() - start < 4000, `${Date.now() - start} ms: before the probe's bound`);
    });
  }

  test('a KVM whose vCPU never advances: not usable, no sign of life, at the bound', async () => {
    const start = Date.now();
    const r = await probeKvm({ ...base(), qemu: shaped('hang'), accel: kvm, timeoutMs: 4000 });
    assert.equal(r.usable, false);
    assert.equal(r.reason, 'no sign of life under KVM within 4 s (the vCPU did not advance, the firmware printed nothing)');
    assert.ok(Date.now() - start >= 4000, `${Date.now() - start} ms`);
  });

  test('a QEMU that cannot start at all is not usable either', async () => {
    const r = await probeKvm({ ...base(), qemu: '/nonexistent/qemu-system-x86_64', accel: kvm, timeoutMs: 2000 });
    assert.equal(r.usable, false);
  });

  test('this host\'s own KVM, as found: the verdict that follows from it', { skip: process.arch !== 'x64' && 'an x86_64 host' }, async (t) => {
    const device = kvmDeviceProblem();
    const start = Date.now();
    const r = await probeKvm({ ...base(), accel: kvm, timeoutMs: 4000 });
    const ms = Date.now() - start;
    const accel = chooseAccel('auto', false, device ? { usable: false, reason: device } : r).accel;
    const found = device ? `no usable /dev/kvm (${device})` : r.usable ? 'KVM runs the guest' : r.reason.startsWith('QEMU exited') ? 'QEMU exits under KVM' : 'the vCPU never advances under KVM';
    t.diagnostic(`this host: ${found}; probe ${ms} ms: ${r.reason}; accel ${accel}`);
    if (device) {
      // setupHost names the device and never probes; QEMU on its own fails at once.
      assert.match(device, /^\/dev\/kvm (does not exist|cannot be opened read-write)/);
      assert.equal(r.usable, false);
      assert.match(r.reason, /^QEMU exited under KVM: .*(KVM|kvm)/);
      assert.equal(accel, 'tcg');
    } else if (r.usable) {
      assert.equal(accel, 'kvm');
    } else if (r.reason.startsWith('QEMU exited')) {
      assert.match(r.reason, /^QEMU exited under KVM: \S/, 'QEMU\'s own error');
      assert.ok(ms < 4000, `${ms} ms: at once`);
      assert.equal(accel, 'tcg');
    } else {
      assert.match(r.reason, /^no sign of life under KVM within 4 s/);
      assert.ok(ms >= 4000, `${ms} ms: the whole bound`);
      assert.equal(accel, 'tcg');
    }
  });

  test('host CPU identity', () => {
    assert.equal(hostCpuIdentity('vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Intel Xeon\n'), 'GenuineIntel Intel Xeon family 6 model 85');
    assert.equal(hostCpuIdentity('CPU implementer\t: 0x41\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\n'), 'arm implementer 0x41 part 0xd0c variant 0x3');
  });
});

describe('firmware', () => {
  const desc = (o: { arch: string; machines: string[]; features?: string[]; code: string; vars: string; format?: string }) =>
    JSON.stringify({
      'interface-types': ['uefi'],
      mapping: { device: 'flash', executable: { filename: o.code, format: o.format ?? 'raw' }, 'nvram-template': { filename: o.vars, format: o.format ?? 'raw' } },
      targets: [{ architecture: o.arch, machines: o.machines }],
      features: o.features ?? [],
    });
  const all = () => true;

  test('descriptors: arch, machine glob, no secure boot, name order', () => {
    const ds = [
      { file: '/d/50-secure.json', json: desc({ arch: 'x86_64', machines: ['pc-q35-*'], features: ['secure-boot', 'requires-smm'], code: '/s.fd', vars: '/sv.fd' }) },
      { file: '/d/60-x86.json', json: desc({ arch: 'x86_64', machines: ['pc-q35-*'], code: '/c.fd', vars: '/v.fd' }) },
      { file: '/d/40-arm.json', json: desc({ arch: 'aarch64', machines: ['virt-*'], code: '/a.fd', vars: '/av.fd' }) },
      { file: '/d/10-broken.json', json: '{not json' },
    ];
    assert.deepEqual(selectFromDescriptors(ds, 'x86_64', 'pc-q35-7.2', all), { code: '/c.fd', vars: '/v.fd', format: 'raw', source: '/d/60-x86.json' });
    assert.equal(selectFromDescriptors(ds, 'aarch64', 'virt-7.2', all)?.code, '/a.fd');
    assert.equal(selectFromDescriptors(ds, 'x86_64', 'pc-i440fx-7.2', all), undefined);
    assert.equal(selectFromDescriptors(ds, 'x86_64', 'pc-q35-7.2', (p) => p !== '/c.fd'), undefined);
  });

  test('known paths: the seed’s aarch64 pairs, Debian’s 4M OVMF first', () => {
    assert.equal(selectFromKnownPaths('aarch64', all)?.code, '/usr/share/AAVMF/AAVMF_CODE.fd');
    assert.equal(selectFromKnownPaths('aarch64', (p) => p.includes('edk2'))?.vars, '/usr/share/edk2/aarch64/vars-template-pflash.raw');
    assert.equal(selectFromKnownPaths('x86_64', all)?.code, '/usr/share/OVMF/OVMF_CODE_4M.fd');
    assert.equal(selectFromKnownPaths('x86_64', () => false), undefined);
  });

  test('not found: install commands for the right arch', () => {
    assert.match(firmwareNotFound('aarch64').message, /EFI firmware not found.*\n.*qemu-efi-aarch64.*\n.*dnf install edk2-aarch64.*\n.*pacman -S edk2-aarch64/);
    assert.match(firmwareNotFound('x86_64').message, /apt install ovmf.*\n.*edk2-ovmf/);
  });

  test('a 2 MiB aarch64 image is padded (a copy) to 64 MiB', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fw-'));
    try {
      const src = path.join(dir, 'QEMU_EFI.fd');
      fs.writeFileSync(src, Buffer.alloc(2 << 20, 7));
      const padded = padTo(src, AARCH64_PFLASH_SIZE, path.join(dir, 'pad'));
      assert.notEqual(padded, src);
      assert.equal(fs.statSync(padded).size, AARCH64_PFLASH_SIZE);
      assert.equal(fs.statSync(src).size, 2 << 20);
      assert.equal(fs.readFileSync(padded).subarray(0, 4).toString('hex'), '07070707');
      assert.equal(padTo(padded, AARCH64_PFLASH_SIZE, dir), padded);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('KVM permission fix: a stand-in sudo and device node', () => {
  // openKvmDevice runs in a child process as a user the device node is closed to (root opens any
  // file, so under root the child runs as nobody). The stand-in sudo on PATH records its argv and
  // runs the command as that user; the stand-in udevadm's trigger applies the rule's MODE to the
  // node, as udev does to /dev/kvm.
  const root = process.getuid?.() === 0;
  const NOBODY = 65534;
  const dirs: string[] = [];
  after(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
  const SUDO = `#!/bin/sh
printf '%s\\n' "$*" >> "$STANDIN_CALLS"
[ "$1" = -n ] || { echo "sudo: the stand-in expects -n" >&2; exit 1; }
shift
[ -z "$STANDIN_SUDO_PASSWORD" ] || { echo "sudo: a password is required" >&2; exit 1; }
exec "$@"
`;
  const UDEVADM = `#!/bin/sh
[ "$1" = trigger ] && [ -z "$STANDIN_UDEV_IGNORES" ] || exit 0
mode=$(sed -n 's/^KERNEL=="kvm".*MODE="\\([0-7]*\\)".*$/\\1/p' "$STANDIN_RULES")
[ -z "$mode" ] || chmod "$mode" "$STANDIN_DEVICE"
`;
  const CHILD = `
const [kvm, logging] = await Promise.all([import(${JSON.stringify(pathToFileURL(path.resolve('src/host/kvm.ts')).href)}), import(${JSON.stringify(pathToFileURL(path.resolve('src/log.ts')).href)})]);
const lines = [];
logging.setLogger({ info: (m) => lines.push('info: ' + m), warning: (m) => lines.push('warning: ' + m), error: (m) => lines.push('error: ' + m), debug: () => {}, group: (_n, f) => f() });
const problem = await kvm.openKvmDevice(JSON.parse(process.argv[1]));
console.log(JSON.stringify({ problem: problem ?? null, lines }));
`;

  interface Scenario {
    fix: boolean;
    device: 'closed' | 'open' | 'missing';
    sudoAsksPassword?: boolean;
    udevIgnores?: boolean;
    settleMs?: number;
  }
  function scenario(s: Scenario) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvm-fix-'));
    dirs.push(dir);
    const bin = path.join(dir, 'bin');
    const device = path.join(dir, 'kvm');
    const rulesFile = path.join(dir, 'rules.d', path.basename(KVM_RULES_FILE));
    const calls = path.join(dir, 'sudo-calls');
    fs.mkdirSync(bin);
    fs.mkdirSync(path.dirname(rulesFile));
    fs.writeFileSync(path.join(bin, 'sudo'), SUDO, { mode: 0o755 });
    fs.writeFileSync(path.join(bin, 'udevadm'), UDEVADM, { mode: 0o755 });
    if (s.device !== 'missing') {
      fs.writeFileSync(device, '');
      fs.chmodSync(device, s.device === 'open' ? 0o666 : 0o000);
    }
    if (root) for (const f of [dir, path.dirname(rulesFile), ...(s.device === 'missing' ? [] : [device])]) fs.chownSync(f, NOBODY, NOBODY);
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH}`, STANDIN_CALLS: calls, STANDIN_RULES: rulesFile, STANDIN_DEVICE: device };
    if (s.sudoAsksPassword) env.STANDIN_SUDO_PASSWORD = '1';
    if (s.udevIgnores) env.STANDIN_UDEV_IGNORES = '1';
    const options = { device, fix: s.fix, sudo: 'sudo', rulesFile, settleMs: s.settleMs };
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD, JSON.stringify(options)], {
      env,
      encoding: 'utf8',
      timeout: 60_000,
      ...(root ? { uid: NOBODY, gid: NOBODY } : {}),
    });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { problem: string | null; lines: string[] };
    const exists = fs.existsSync(device);
    return {
      ...out,
      device,
      rulesFile,
      calls: fs.existsSync(calls) ? fs.readFileSync(calls, 'utf8').trim().split('\n') : [],
      rules: fs.existsSync(rulesFile) ? fs.readFileSync(rulesFile, 'utf8') : undefined,
      mode: exists ? fs.statSync(device).mode & 0o777 : undefined,
    };
  }
  const FIX_CALLS = (rulesFile: string) => ['-n true', `-n tee ${rulesFile}`, '-n udevadm control --reload-rules', '-n udevadm trigger --name-match=kvm'];

  test('hosted (fix allowed): a device closed to the user gets the udev rule with sudo -n, opens, and one log line says so', () => {
    const r = scenario({ fix: true, device: 'closed' });
    assert.equal(r.problem, null);
    assert.deepEqual(r.calls, FIX_CALLS(r.rulesFile));
    assert.equal(r.rules, `${KVM_UDEV_RULE}\n`);
    assert.equal(KVM_UDEV_RULE, 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"');
    assert.equal(r.mode, 0o666);
    assert.deepEqual(r.lines, [
      `info: KVM: ${r.device} was closed to this user (EACCES); added the udev rule ${r.rulesFile} (${KVM_UDEV_RULE}) with sudo, as kvm-fix-permissions allows here, and it opens now`,
    ]);
  });

  test('self-hosted (fix not allowed): the system is left alone; the warning names the input and the manual fix', () => {
    const r = scenario({ fix: false, device: 'closed' });
    assert.equal(r.problem, `${r.device} cannot be opened read-write (EACCES); the runner's system is left alone (kvm-fix-permissions: true lets the action add the udev rule with sudo)`);
    assert.deepEqual([r.calls, r.rules, r.mode, r.lines], [[], undefined, 0, []]);
    const warning = kvmFallbackWarning(r.problem!);
    assert.match(warning, /^KVM is not used: .*\(EACCES\); .*kvm-fix-permissions: true.*Falling back to TCG.*sudo usermod -aG kvm/);
    assert.ok(warning.includes(`echo '${KVM_UDEV_RULE}' | sudo tee ${KVM_RULES_FILE} && sudo udevadm control --reload-rules && sudo udevadm trigger --name-match=kvm`), warning);
    assert.equal(warning.includes('\n'), false, 'one line');
  });

  test('no passwordless sudo: nothing but sudo -n true runs, and the problem says so', () => {
    const r = scenario({ fix: true, device: 'closed', sudoAsksPassword: true });
    assert.equal(r.problem, `${r.device} cannot be opened read-write (EACCES), and kvm-fix-permissions could not open it: sudo -n true failed (sudo: a password is required): no passwordless sudo to add the udev rule with`);
    assert.deepEqual([r.calls, r.rules, r.mode, r.lines], [['-n true'], undefined, 0, []]);
  });

  test('a rule udev does not apply: the device is still closed after the settle time, and the problem says so', () => {
    const r = scenario({ fix: true, device: 'closed', udevIgnores: true, settleMs: 300 });
    assert.equal(r.problem, `${r.device} cannot be opened read-write (EACCES), and kvm-fix-permissions could not open it: the rule is in ${r.rulesFile} and udev was triggered, but ${r.device} cannot be opened read-write (EACCES) after 0.3 s`);
    assert.deepEqual(r.calls, FIX_CALLS(r.rulesFile));
    assert.deepEqual([r.mode, r.lines], [0, []]);
  });

  test('a missing device or one that opens: no sudo at all', () => {
    const missing = scenario({ fix: true, device: 'missing' });
    assert.match(missing.problem!, /kvm does not exist \(no KVM on this host, or nested virtualization is off\)$/);
    assert.deepEqual([missing.calls, missing.lines], [[], []]);
    const open = scenario({ fix: true, device: 'open' });
    assert.deepEqual([open.problem, open.calls, open.lines], [null, [], []]);
  });
});

describe('dependency plan', () => {
  test('apt on arm64, as a user: sudo, update, then the packages', () => {
    const p = planInstall('apt', 'aarch64', ['qemu-system', 'qemu-img', 'firmware', 'zstd'], false);
    assert.deepEqual(p.packages, ['qemu-system-arm', 'qemu-utils', 'qemu-efi-aarch64', 'zstd']);
    assert.deepEqual(p.commands[0], ['sudo', '-n', 'apt-get', 'update', '-qq']);
    assert.deepEqual(p.commands[1].slice(0, 3), ['sudo', '-n', 'env']);
    assert.ok(p.commands[1].includes('qemu-efi-aarch64'));
  });
  test('only what is missing; nothing when nothing is', () => {
    assert.deepEqual(planInstall('apt', 'x86_64', ['firmware'], true), {
      packages: ['ovmf'],
      commands: [['apt-get', 'update', '-qq'], ['env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'install', '-y', '-qq', '--no-install-recommends', 'ovmf']],
    });
    assert.deepEqual(planInstall('dnf', 'x86_64', [], true), { packages: [], commands: [] });
  });
  test('dnf and pacman names', () => {
    assert.deepEqual(planInstall('dnf', 'aarch64', ['qemu-system', 'qemu-img', 'firmware'], true).packages, ['qemu-system-aarch64-core', 'qemu-img', 'edk2-aarch64']);
    assert.deepEqual(planInstall('dnf', 'x86_64', ['qemu-system', 'firmware'], true).packages, ['qemu-system-x86-core', 'edk2-ovmf']);
    const pac = planInstall('pacman', 'aarch64', ['qemu-system', 'firmware', 'zstd'], false);
    assert.deepEqual(pac.packages, ['qemu-system-aarch64', 'edk2-aarch64', 'zstd']);
    assert.deepEqual(pac.commands, [['sudo', '-n', 'pacman', '-S', '--noconfirm', '--needed', 'qemu-system-aarch64', 'edk2-aarch64', 'zstd']]);
  });
});
