#!/usr/bin/env node
import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __filename = __ryraFileURLToPath(import.meta.url);
const __dirname = __ryraDirname(__filename);
import {
  InputError,
  Inputs,
  ensureLayers,
  errorMessage,
  log,
  parseConfig,
  plainLogger,
  setLogger,
  setupHost
} from "./chunks/chunk-AWYFBMPF.js";
import "./chunks/chunk-LHFSR3XE.js";

// src/cli.ts
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

// src/cli.ts
var HELP = `ryra-vm ${VERSION} \u2014 QEMU VMs from cached, snapshotted image layers

Usage:
  ryra-vm prepare [options]     build or reuse the image layers; print the outputs
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
      default:
        throw new InputError(`unknown command: ${cmd} (available: prepare; see ryra-vm --help)`);
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
