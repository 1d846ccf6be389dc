#!/usr/bin/env node
import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraPathDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __ryraFilename = __ryraFileURLToPath(import.meta.url);
const __ryraDirname = __ryraPathDirname(__ryraFilename);
import {
  InputError,
  Inputs,
  SshClient,
  bootVm,
  ensureLayers,
  errorMessage,
  getVm,
  listVms,
  log,
  parseConfig,
  plainLogger,
  setLogger,
  setupHost,
  stopVm
} from "./chunks/chunk-EEU42WZ5.js";
import "./chunks/chunk-GZMXWCY5.js";

// src/cli.ts
import * as fs2 from "node:fs";
import * as path2 from "node:path";
import { parseArgs } from "node:util";

// package.json
var package_default = {
  name: "ryra-vm-action",
  version: "0.1.0",
  description: "GitHub Action: ready-to-use QEMU virtual machines from cached, snapshotted image layers",
  license: "MIT",
  private: true,
  type: "module",
  bin: {
    "ryra-vm": "dist/cli.js"
  },
  engines: {
    node: ">=20"
  },
  scripts: {
    build: "node scripts/build.mjs",
    typecheck: "tsc --noEmit",
    test: "node scripts/test.mjs",
    "test:unit": "node scripts/test.mjs unit",
    "test:e2e": "node scripts/test.mjs e2e",
    bench: "node --import tsx bench/bench.ts"
  },
  dependencies: {
    "@actions/cache": "^6.3.0",
    "@actions/core": "^3.0.1",
    "@actions/exec": "^3.0.0",
    "@actions/io": "^3.0.2",
    "@actions/tool-cache": "^4.0.0",
    "proper-lockfile": "^4.1.2",
    ssh2: "^1.17.0"
  },
  devDependencies: {
    "@types/node": "^20.19.43",
    "@types/proper-lockfile": "^4.1.4",
    "@types/ssh2": "^1.15.6",
    esbuild: "^0.28.2",
    tsx: "^4.23.15",
    typescript: "5.9",
    yaml: "^2.9.1"
  }
};

// src/version.ts
var VERSION = package_default.version;

// src/vm/transfer.ts
import * as fs from "node:fs";
import * as path from "node:path";
var p = (fn) => new Promise((resolve, reject) => fn((err, v) => err ? reject(err) : resolve(v)));
async function remoteStat(sftp, file) {
  return p((cb) => sftp.stat(file, cb)).catch(() => void 0);
}
async function upload(sftp, src, dst) {
  const existing = await remoteStat(sftp, dst);
  const target = existing?.isDirectory() ? path.posix.join(dst, path.basename(src)) : dst;
  return uploadTo(sftp, src, target);
}
async function uploadTo(sftp, src, dst) {
  const st = fs.statSync(src);
  if (st.isDirectory()) {
    if (!await remoteStat(sftp, dst)) await p((cb) => sftp.mkdir(dst, { mode: st.mode & 4095 }, (e) => cb(e, void 0)));
    let n = 0;
    for (const e of fs.readdirSync(src)) n += await uploadTo(sftp, path.join(src, e), path.posix.join(dst, e));
    return n;
  }
  await p((cb) => sftp.fastPut(src, dst, { mode: st.mode & 4095 }, (e) => cb(e, void 0)));
  return 1;
}
async function download(sftp, src, dst) {
  const target = fs.existsSync(dst) && fs.statSync(dst).isDirectory() ? path.join(dst, path.posix.basename(src)) : dst;
  return downloadTo(sftp, src, target);
}
async function downloadTo(sftp, src, dst) {
  const st = await remoteStat(sftp, src);
  if (!st) throw new Error(`no such file in the guest: ${src}`);
  if (st.isDirectory()) {
    fs.mkdirSync(dst, { recursive: true, mode: st.mode & 4095 });
    const entries = await p((cb) => sftp.readdir(src, cb));
    let n = 0;
    for (const e of entries) n += await downloadTo(sftp, path.posix.join(src, e.filename), path.join(dst, e.filename));
    return n;
  }
  await p((cb) => sftp.fastGet(src, dst, (e) => cb(e, void 0)));
  fs.chmodSync(dst, st.mode & 4095);
  return 1;
}

// src/cli.ts
var HELP = `ryra-vm ${VERSION} \u2014 QEMU VMs from cached, snapshotted image layers

Usage:
  ryra-vm prepare [options]     build or reuse the image layers; print the outputs
  ryra-vm boot [--name N] [--browser] [--memory MB] [--cpus N] [--cache-dir DIR] [--json]
                                start a VM from the snapshot (per-VM disk copies), wait for SSH
  ryra-vm ssh NAME [-- CMD...]  run CMD in the VM (exit code passed on), or an interactive shell
  ryra-vm cp SRC DST            copy files or directories; one side is NAME:path
  ryra-vm stop NAME | --all     stop VMs and remove their disks
  ryra-vm list [--json]         name, port, pid, uptime, image of every VM
  ryra-vm --help | --version

prepare options (the action's inputs; same defaults, same checks):
  --distro D            debian-13 | fedora-43                      [debian-13]
  --arch A              auto | arm64 | amd64                       [auto]
  --memory MB           guest memory in MiB, at least 512          [2048]
  --cpus N              guest vCPUs                                [2]
  --browser             also build the browser layer and snapshot
  --kvm MODE            auto | true | false                        [auto]
  --packages "a b"      extra guest packages
  --image-url URL       cloud image: http(s)://, file:// or a path
  --image-checksum C    sha512:HEX or sha256:HEX (needed with --image-url)
  --cache-dir DIR       layer cache       [$XDG_CACHE_HOME/ryra-vm or ~/.cache/ryra-vm]
  --no-snapshot         skip the savevm snapshot layer
  --redownload          download the image again and rebuild the layers above it
  --install-deps        install missing host tools with apt, dnf or pacman
  --json                print one JSON object whose keys are the action's output names
`;
var PREPARE_OPTIONS = {
  distro: { type: "string" },
  arch: { type: "string" },
  memory: { type: "string" },
  cpus: { type: "string" },
  browser: { type: "boolean" },
  kvm: { type: "string" },
  packages: { type: "string" },
  "image-url": { type: "string" },
  "image-checksum": { type: "string" },
  "cache-dir": { type: "string" },
  "no-snapshot": { type: "boolean" },
  redownload: { type: "boolean" },
  "install-deps": { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" }
};
function parseOptions(args, options) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new InputError(`${errorMessage(err).replace(/\. To specify.*$/, "")} (see ryra-vm --help)`);
  }
}
async function prepare(args) {
  const { values, positionals } = parseOptions(args, PREPARE_OPTIONS);
  if (values.help) return process.stdout.write(HELP), 0;
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm --help)`);
  const v = values;
  const raw = {
    [Inputs.Distro]: v.distro,
    [Inputs.Arch]: v.arch,
    [Inputs.Memory]: v.memory,
    [Inputs.Cpus]: v.cpus,
    [Inputs.Browser]: v.browser ? "true" : "false",
    [Inputs.Kvm]: v.kvm,
    [Inputs.Packages]: v.packages,
    [Inputs.ImageUrl]: v["image-url"],
    [Inputs.ImageChecksum]: v["image-checksum"],
    [Inputs.CacheDir]: v["cache-dir"],
    [Inputs.Snapshot]: v["no-snapshot"] ? "false" : "true",
    [Inputs.Redownload]: v.redownload ? "true" : "false",
    // Outside Actions there is no Actions cache, and installing packages is opt-in.
    [Inputs.Cache]: "false",
    [Inputs.InstallDeps]: v["install-deps"] ? "true" : "false"
  };
  const config = parseConfig((n) => raw[n]);
  const host = await setupHost(config);
  const result = await ensureLayers(config, host);
  if (v.json) process.stdout.write(JSON.stringify(result.outputs, null, 2) + "\n");
  else {
    for (const l of result.layers) log.info(`${l.layer.padEnd(17)} ${l.source.padEnd(13)} ${l.seconds.toFixed(1).padStart(7)} s`);
    for (const [k, val] of Object.entries(result.outputs)) process.stdout.write(`${k}=${val}
`);
  }
  return 0;
}
var BOOT_OPTIONS = {
  name: { type: "string" },
  browser: { type: "boolean" },
  memory: { type: "string" },
  cpus: { type: "string" },
  "cache-dir": { type: "string" },
  json: { type: "boolean" }
};
function optionalInt(flag, v, min) {
  if (v === void 0) return void 0;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new InputError(`invalid ${flag}: ${JSON.stringify(v)} (a whole number, at least ${min})`);
  return Number(v);
}
async function boot(args) {
  const { values, positionals } = parseOptions(args, BOOT_OPTIONS);
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm --help)`);
  const v = values;
  const vm = await bootVm({
    name: v.name,
    browser: !!v.browser,
    memoryMb: optionalInt("--memory", v.memory, 512),
    cpus: optionalInt("--cpus", v.cpus, 1),
    cacheDir: v["cache-dir"]
  });
  if (v.json) process.stdout.write(JSON.stringify(vm) + "\n");
  else process.stdout.write(`${vm.name} port=${vm.port} pid=${vm.pid} ready in ${(vm.readyMs / 1e3).toFixed(1)} s (${vm.mode})
`);
  return 0;
}
async function ssh(args) {
  const dash = args.indexOf("--");
  const [name, ...extra] = dash >= 0 ? args.slice(0, dash) : args;
  if (!name) throw new InputError("ryra-vm ssh needs a VM name (see ryra-vm list)");
  if (extra.length) throw new InputError(`unexpected argument: ${extra[0]} (put the command after --)`);
  const command = dash >= 0 ? args.slice(dash + 1).join(" ") : "";
  const vm = getVm(name);
  const client = await connectVm(vm);
  try {
    if (command) {
      const r = await client.exec(command, { stdout: process.stdout, stderr: process.stderr, input: process.stdin.isTTY ? void 0 : await readStdin() });
      return r.code;
    }
    const tty = process.stdin.isTTY;
    if (tty) process.stdin.setRawMode(true);
    try {
      return await client.shell(process.stdin, process.stdout, { rows: process.stdout.rows || 24, cols: process.stdout.columns || 80, term: process.env.TERM || "xterm" });
    } finally {
      if (tty) process.stdin.setRawMode(false);
      process.stdin.pause();
    }
  } finally {
    client.end();
  }
}
async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return Buffer.concat(chunks);
}
async function connectVm(vm) {
  return SshClient.connect({ port: vm.port, user: vm.user, privateKey: fs2.readFileSync(vm.key, "utf8") }, 3e4);
}
async function cp(args) {
  if (args.length !== 2) throw new InputError("ryra-vm cp takes SRC and DST, one of them NAME:path");
  const remote = (s) => /^([A-Za-z0-9][A-Za-z0-9_.-]*):(.*)$/.exec(s);
  const [src, dst] = args;
  const rs = remote(src);
  const rd = remote(dst);
  if (!!rs === !!rd) throw new InputError("ryra-vm cp: exactly one of SRC and DST must be NAME:path");
  const vm = getVm((rs ?? rd)[1]);
  const client = await connectVm(vm);
  try {
    const sftp = await client.sftp();
    const n = rs ? await download(sftp, rs[2] || ".", dst) : await upload(sftp, src, rd[2] || ".");
    log.info(`copied ${n} file${n === 1 ? "" : "s"}`);
    return 0;
  } finally {
    client.end();
  }
}
async function stop(args) {
  if (args.length !== 1) throw new InputError("ryra-vm stop takes one VM name, or --all");
  const targets = args[0] === "--all" ? listVms() : [listVms().find((v) => v.name === args[0]) ?? getVm(args[0])];
  for (const vm of targets) {
    await stopVm(vm);
    log.info(`stopped ${vm.name}`);
  }
  return 0;
}
function list(args) {
  const vms = listVms();
  if (args.includes("--json")) {
    process.stdout.write(JSON.stringify(vms) + "\n");
    return 0;
  }
  const rows = vms.map((v) => [v.name, String(v.port), String(v.pid), v.running ? `${Math.round((Date.now() - Date.parse(v.startedAt)) / 1e3)}s` : "exited", path2.basename(v.image)]);
  for (const r of [["NAME", "PORT", "PID", "UPTIME", "IMAGE"], ...rows]) process.stdout.write(r.map((c, i) => i < 4 ? c.padEnd(i === 0 ? 12 : 8) : c).join(" ") + "\n");
  return 0;
}
async function main(argv) {
  setLogger(plainLogger());
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case void 0:
      case "--help":
      case "-h":
      case "help":
        process.stdout.write(HELP);
        return cmd === void 0 ? 2 : 0;
      case "--version":
      case "-V":
        process.stdout.write(`${VERSION}
`);
        return 0;
      case "prepare":
        return await prepare(rest);
      case "boot":
        return await boot(rest);
      case "ssh":
        return await ssh(rest);
      case "cp":
        return await cp(rest);
      case "stop":
        return await stop(rest);
      case "list":
        return list(rest);
      default:
        throw new InputError(`unknown command: ${cmd} (available: prepare, boot, ssh, cp, stop, list; see ryra-vm --help)`);
    }
  } catch (err) {
    process.stderr.write(`ryra-vm: ${errorMessage(err)}
`);
    return err instanceof InputError ? 2 : 1;
  }
}
process.exit(await main(process.argv.slice(2)));
export {
  HELP,
  main
};
