import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { accelArgs, type Accel, type QemuArch } from '../../src/host/platform.js';
import { hmpError, Qmp } from '../../src/vm/qmp.js';
import { metaData, seedIso, userData } from '../../src/vm/seed.js';
import { layoutOf, qemuArgv, sameLayout, type VmSpec } from '../../src/vm/spec.js';
import { logTail } from '../../src/vm/machine.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-unit-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function spec(arch: QemuArch, accel: Accel, extra: Partial<VmSpec> = {}): VmSpec {
  return {
    arch,
    machine: arch === 'aarch64' ? 'virt-7.2' : 'pc-q35-7.2',
    accel: accelArgs(arch, accel),
    memoryMb: 2048,
    cpus: 2,
    firmwareFormat: 'raw',
    seed: true,
    qemu: `qemu-system-${arch}`,
    name: 'vm1',
    efiCode: '/fw/code.fd',
    efiVars: '/w/efivars.qcow2',
    disk: '/w/disk.qcow2',
    seedIso: '/w/seed.iso',
    sshPort: 40022,
    qmpSocket: '/w/qmp.sock',
    serialLog: '/w/serial.log',
    pidFile: '/w/qemu.pid',
    ...extra,
  };
}

const after2 = (argv: string[], flag: string) => argv.filter((_, i) => argv[i - 1] === flag);

describe('VmSpec → argv', () => {
  for (const arch of ['aarch64', 'x86_64'] as const) {
    for (const accel of ['kvm', 'tcg'] as const) {
      for (const restore of [false, true]) {
        for (const share of [false, true]) {
          test(`${arch} ${accel}${restore ? ' restore' : ''}${share ? ' virtfs' : ''}`, () => {
            const argv = qemuArgv(spec(arch, accel, { ...(restore ? { loadvm: 'ready' } : {}), ...(share ? { sharePath: '/cache/images', shareTag: 'images' } : {}) }));
            const machine = after2(argv, '-machine')[0];
            assert.equal(machine, arch === 'aarch64' ? (accel === 'kvm' ? 'virt-7.2,gic-version=3' : 'virt-7.2') : 'pc-q35-7.2');
            assert.deepEqual(after2(argv, '-accel'), [accel === 'kvm' ? 'kvm' : 'tcg,thread=multi']);
            assert.deepEqual(after2(argv, '-cpu'), [accel === 'kvm' ? 'host' : arch === 'aarch64' ? 'max,pauth-impdef=on' : 'max']);
            const drives = after2(argv, '-drive');
            assert.deepEqual(drives, [
              'if=pflash,unit=0,format=raw,readonly=on,file=/fw/code.fd',
              'if=pflash,unit=1,format=qcow2,file=/w/efivars.qcow2',
              'if=virtio,format=qcow2,file=/w/disk.qcow2',
              'if=virtio,format=raw,readonly=on,file=/w/seed.iso',
            ]);
            assert.deepEqual(after2(argv, '-netdev'), ['user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22']);
            assert.deepEqual(after2(argv, '-qmp'), ['unix:/w/qmp.sock,server=on,wait=off']);
            assert.deepEqual(after2(argv, '-serial'), ['file:/w/serial.log']);
            assert.deepEqual(after2(argv, '-loadvm'), restore ? ['ready'] : []);
            assert.deepEqual(after2(argv, '-virtfs'), share ? ['local,path=/cache/images,mount_tag=images,security_model=none,readonly=on'] : []);
            assert.equal(after2(argv, '-m')[0], '2048');
            assert.equal(after2(argv, '-smp')[0], '2');
          });
        }
      }
    }
  }

  test('commas in paths are escaped for QEMU’s option parser', () => {
    const argv = qemuArgv(spec('x86_64', 'tcg', { disk: '/w/a,b.qcow2' }));
    assert.ok(argv.includes('if=virtio,format=qcow2,file=/w/a,,b.qcow2'));
  });

  test('the layout ignores per-VM paths and ports but not cpu, machine, memory', () => {
    const a = spec('aarch64', 'tcg');
    assert.ok(sameLayout(layoutOf(a), layoutOf({ ...a, sshPort: 1, disk: '/other', name: 'x' })));
    assert.ok(!sameLayout(layoutOf(a), layoutOf({ ...a, machine: 'virt-8.0' })));
    assert.ok(!sameLayout(layoutOf(a), layoutOf({ ...a, memoryMb: 4096 })));
    assert.ok(!sameLayout(layoutOf(a), layoutOf({ ...a, cpus: 4 })));
    assert.ok(!sameLayout(layoutOf(a), layoutOf({ ...a, accel: { ...a.accel, args: ['-accel', 'tcg', '-cpu', 'max'] } })));
  });
});

describe('QMP', () => {
  test('HMP errors are found inside the returned text', () => {
    assert.match(hmpError("Error: Device 'pflash1' is writable but does not support snapshots")!, /pflash1/);
    assert.ok(hmpError('Error while creating snapshot on \'disk\''));
    assert.equal(hmpError(''), undefined);
    assert.equal(hmpError('List of snapshots present on all disks:\nID  TAG  VM SIZE\n--  ready  179 MiB'), undefined);
  });

  test('greeting, capabilities, ids, events, HMP error detection, close', async () => {
    const sock = path.join(tmp, 'qmp.sock');
    const seen: string[] = [];
    const server = net.createServer((c) => {
      c.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + '\r\n');
      let buf = '';
      c.on('data', (d) => {
        buf += d.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const msg = JSON.parse(buf.slice(0, i));
          buf = buf.slice(i + 1);
          seen.push(msg.execute);
          const reply = (ret: unknown) => c.write(JSON.stringify({ return: ret, id: msg.id }) + '\r\n');
          if (msg.execute === 'qmp_capabilities') reply({});
          else if (msg.execute === 'human-monitor-command') {
            // Answer out of order with an event in between, as QEMU may.
            c.write(JSON.stringify({ event: 'STOP', timestamp: {} }) + '\n');
            reply(msg.arguments['command-line'] === 'savevm bad' ? 'Error: No block device can accept snapshots\r\n' : '');
          } else if (msg.execute === 'nope') c.write(JSON.stringify({ error: { class: 'CommandNotFound', desc: 'The command nope has not been found' }, id: msg.id }) + '\n');
          else if (msg.execute === 'quit') {
            reply({});
            c.end();
          }
        }
      });
    });
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      const q = await Qmp.connect(sock);
      const stop = q.waitEvent('STOP');
      assert.equal(await q.hmp('savevm ready'), '');
      assert.equal((await stop).event, 'STOP');
      await assert.rejects(q.hmp('savevm bad'), /savevm bad: Error: No block device/);
      await assert.rejects(q.execute('nope'), /CommandNotFound: The command nope has not been found/);
      const closed = new Promise((r) => q.once('closed', r));
      await q.execute('quit');
      await closed;
      assert.equal(q.closed, true);
      await assert.rejects(q.execute('query-status'), /closed/);
      assert.deepEqual(seen, ['qmp_capabilities', 'human-monitor-command', 'human-monitor-command', 'nope', 'quit']);
    } finally {
      server.close();
    }
  });
});

describe('cloud-init seed', () => {
  const o = { publicKey: 'ssh-ed25519 AAAAC3Nza test', hostname: 'ryra-vm', packages: ['jq', 'podman'], instanceId: 'i-1' };

  test('user-data: ryra with passwordless sudo and the key, manage_etc_hosts, packages', () => {
    const text = userData(o);
    assert.ok(text.startsWith('#cloud-config\n'));
    const doc = JSON.parse(text.slice('#cloud-config\n'.length));
    assert.equal(doc.manage_etc_hosts, true);
    assert.deepEqual(doc.users[0], { name: 'ryra', sudo: 'ALL=(ALL) NOPASSWD:ALL', shell: '/bin/bash', lock_passwd: true, ssh_authorized_keys: ['ssh-ed25519 AAAAC3Nza test'] });
    assert.deepEqual(doc.packages, ['jq', 'podman']);
    assert.equal(doc.package_update, true);
    assert.equal(JSON.parse(userData({ ...o, packages: [] }).slice(14)).packages, undefined);
    assert.equal(metaData(o), 'instance-id: i-1\nlocal-hostname: ryra-vm\n');
    assert.notEqual(metaData({ ...o, instanceId: undefined }), metaData({ ...o, instanceId: undefined }));
  });

  test('seed ISO read back by isoinfo and blkid', { skip: !hasTool('isoinfo') && 'isoinfo not installed' }, () => {
    const iso = path.join(tmp, 'seed.iso');
    fs.writeFileSync(iso, seedIso(o));
    assert.equal(execFileSync('isoinfo', ['-J', '-x', '/user-data', '-i', iso], { encoding: 'utf8' }), userData(o));
    assert.equal(execFileSync('isoinfo', ['-J', '-x', '/meta-data', '-i', iso], { encoding: 'utf8' }), metaData(o));
    assert.equal(execFileSync('blkid', ['-p', '-o', 'value', '-s', 'LABEL', iso], { encoding: 'utf8' }).trim(), 'cidata');
  });
});

test('serial tail drops escape sequences and keeps the last lines', () => {
  const f = path.join(tmp, 'serial.log');
  fs.writeFileSync(f, Array.from({ length: 40 }, (_, i) => `\x1b[0;32mline ${i}\x1b[0m\r`).join('\n'));
  const t = logTail(f, 3);
  assert.equal(t, 'line 37\nline 38\nline 39');
  assert.equal(logTail(path.join(tmp, 'none.log')), '(no serial output)');
});

function hasTool(t: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${t}`]);
    return true;
  } catch {
    return false;
  }
}
