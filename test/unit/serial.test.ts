// The serial log's cap: QEMU writes a guest's console to a socket whose reader (a process of ours,
// started beside QEMU) keeps the log at most its cap, with the tail kept. Here the writer is the
// real one and the "QEMU" a socket client that writes without end; the recipe's own serial line
// (what an outside tool restores with) stays a file.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { accelArgs } from '../../src/host/platform.js';
import { serialThroughSocket, startSerialWriter } from '../../src/vm/machine.js';
import { fillRecipe, recipe } from '../../src/vm/spec.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'serial-unit-'));
const started: number[] = [];
after(() => {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* exited, as it should */
    }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !ok(); ) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the serial log', () => {
  test('the engine\'s QEMU gets the same serial port on a socket; the recipe keeps its file', () => {
    const layout = { arch: 'x86_64' as const, machine: 'pc-q35-7.2', accel: accelArgs('x86_64', 'tcg'), memoryMb: 1024, cpus: 2, firmwareFormat: 'raw' as const, seed: false };
    const argv = fillRecipe(recipe(layout, { efiCode: '/fw/code.fd' }), { disk: '/vm/d.qcow2', efivars: '/vm/v.qcow2', sshPort: '2222', serialLog: '/vm/serial.log', shareDir: '' });
    const at = argv.indexOf('-serial');
    assert.equal(argv[at + 1], 'file:/vm/serial.log', 'the recipe (restore.argv) still names a file');
    const s = serialThroughSocket(argv, '/tmp/rvm-x,y/serial.sock')!;
    assert.deepEqual(s.slice(at, at + 4), ['-chardev', 'socket,id=serial0,path=/tmp/rvm-x,,y/serial.sock', '-serial', 'chardev:serial0']);
    assert.deepEqual([...s.slice(0, at), ...s.slice(at + 4)], [...argv.slice(0, at), ...argv.slice(at + 2)], 'nothing else changes');
    assert.equal(serialThroughSocket(['-m', '512'], '/s'), undefined);
  });

  test('a console written without end leaves a log of at most the cap, ending with what came last; the writer exits with its QEMU', async () => {
    const cap = 256 * 1024;
    const sock = path.join(tmp, 'serial.sock');
    const log = path.join(tmp, 'serial.log');
    const writer = await startSerialWriter(sock, log, cap);
    started.push(writer.pid!);
    const c = net.connect(sock);
    await new Promise<void>((resolve, reject) => c.once('connect', resolve).once('error', reject));
    await until('one connection: the socket is gone once QEMU holds it', () => !fs.existsSync(sock));

    let largest = 0;
    const sample = setInterval(() => (largest = Math.max(largest, fs.statSync(log).size)), 1);
    let n = 0;
    const total = 12 * cap;
    let sent = 0;
    try {
      while (sent < total) {
        let chunk = '';
        while (chunk.length < 4000) chunk += `line ${n++}\n`;
        sent += chunk.length;
        if (!c.write(chunk)) await new Promise((r) => c.once('drain', r));
      }
      await new Promise<void>((r) => c.end(r));
      await until('the writer exits once its QEMU closes the socket', () => !alive(writer.pid!));
    } finally {
      clearInterval(sample);
      c.destroy();
    }
    const text = fs.readFileSync(log, 'utf8');
    largest = Math.max(largest, text.length);
    assert.ok(largest <= cap, `the log reached ${largest} bytes (cap ${cap})`);
    assert.ok(text.length >= cap / 2 - 4000, `the tail is kept: ${text.length} bytes`);
    assert.ok(text.endsWith(`line ${n - 1}\n`), 'it ends with the last line written');
    // The tail is contiguous: after the first (possibly cut) line, every number follows the last.
    const nums = text.split('\n').slice(1, -1).map((l) => Number(l.slice(5)));
    assert.ok(nums.every((x, i) => i === 0 || x === nums[i - 1] + 1), 'no gap in the kept tail');
    assert.equal(fs.existsSync(`${log}.tmp`), false);
  });
});
