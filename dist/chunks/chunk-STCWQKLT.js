import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraPathDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __ryraFilename = __ryraFileURLToPath(import.meta.url);
const __ryraDirname = __ryraPathDirname(__ryraFilename);
import {
  InputError,
  JOB_ENV,
  Outputs,
  RuntimeFiles,
  State,
  actionsLogger,
  bootVm,
  ensureLayers,
  errorMessage,
  forgetSshHosts,
  jobHolder,
  listVms,
  logTail,
  newJobId,
  openTiers,
  parseConfig,
  readHooks,
  releaseHolder,
  setLogger,
  setupHost,
  stopVm,
  syncTiers
} from "./chunk-3KA26JRU.js";
import {
  addPath,
  exportVariable,
  getInput,
  getState,
  group,
  info,
  saveState,
  setFailed,
  setOutput,
  setSecret,
  summary,
  warning
} from "./chunk-JPQAZDAJ.js";

// src/action.ts
import * as fs from "node:fs";
import * as path from "node:path";

// src/summary.ts
function size(bytes) {
  return bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(2)} GiB` : `${(bytes / (1 << 20)).toFixed(0)} MiB`;
}
function esc(s) {
  return s.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
}
function summaryTable(r) {
  const rows = r.layers.map((l) => `<tr><td>${l.layer}</td><td>${l.source}${l.note ? ` (${esc(l.note)})` : ""}</td><td>${l.seconds.toFixed(1)}</td><td>${size(l.bytes)}</td></tr>`).join("");
  const o = r.outputs;
  const facts = [
    ["accel", o.accel],
    ["snapshot", o.snapshot],
    ["snapshot-memory-mb", o["snapshot-memory-mb"]],
    ["cache-hit", o["cache-hit"]],
    ["cache-hit-layers", o["cache-hit-layers"]],
    ["cache dir", `${esc(r.cacheDir)} (${size(r.cacheDirBytes)})`],
    ["evicted", r.evicted.length ? r.evicted.map((e) => `${esc(e.base)} (${size(e.bytes)})`).join(", ") : "nothing"]
  ];
  return `<table><tr><th>layer</th><th>source</th><th>seconds</th><th>size</th></tr>${rows}</table><table>${facts.map(([k, v]) => `<tr><td>${k}</td><td>${v || "\u2014"}</td></tr>`).join("")}</table>`;
}
function vmTable(vms) {
  const rows = vms.map((v) => `<tr><td>${esc(v.name)}</td><td>${v.mode}</td><td>${(v.readyMs / 1e3).toFixed(1)}</td><td>${v.running ? "stopped by post" : "exited"}</td></tr>`);
  return `<table><tr><th>VM</th><th>boot</th><th>seconds to SSH</th><th>end</th></tr>${rows.join("")}</table>`;
}

// src/action.ts
function readConfig() {
  const config = parseConfig((name) => getInput(name));
  if (config.registryToken) setSecret(config.registryToken);
  return config;
}
async function runMain() {
  setLogger(actionsLogger);
  try {
    const config = readConfig();
    const hooks = readHooks();
    const tiers = openTiers(config, hooks);
    const result = await ensureLayers(config, setupHost(config, hooks), tiers, { deferSaves: true, hooks });
    const { outputs } = result;
    if (result.pending.length) {
      const file = path.join(result.runtimeDir, "pending-saves.json");
      fs.writeFileSync(file, JSON.stringify(result.pending));
      saveState(State.PendingSaves, file);
    }
    for (const [name, value] of Object.entries(outputs)) setOutput(name, value);
    for (const line of fs.readFileSync(outputs[Outputs.SshKey], "utf8").split("\n")) if (line.length > 20 && !line.startsWith("-----")) setSecret(line);
    saveState(State.Manifest, outputs[Outputs.Manifest]);
    saveState(State.RuntimeDir, result.runtimeDir);
    saveState(State.CacheDir, config.cacheDir);
    addCliToPath(result.runtimeDir);
    if (!process.env[JOB_ENV]) exportVariable(JOB_ENV, newJobId());
    const vms = [];
    for (const name of config.boot) {
      const vm = await group(`Booting VM ${name}`, () => bootVm({ name, config: outputs[Outputs.Manifest], forwards: config.forward[name] ?? [], hooks }));
      const fwd = vm.forwards.map((f) => `, 127.0.0.1:${f.host} \u2192 ${f.guest}`).join("");
      info(`${vm.name}: ready in ${(vm.readyMs / 1e3).toFixed(1)} s (${vm.mode}), ssh ${vm.name} or ryra-vm ssh ${vm.name}${fwd}`);
      vms.push(vm);
    }
    await summary.addHeading("ryra-vm", 3).addRaw(summaryTable(result.record), true).write();
  } catch (err) {
    setFailed(err instanceof InputError ? err.message : errorMessage(err));
  }
}
function addCliToPath(rt) {
  const bin = path.join(rt, RuntimeFiles.bin);
  fs.mkdirSync(bin, { recursive: true });
  const cli = path.join(path.dirname(path.resolve(process.argv[1])), "cli.js");
  fs.writeFileSync(path.join(bin, "ryra-vm"), `#!/bin/sh
exec "${process.execPath}" "${cli}" "$@"
`, { mode: 493 });
  addPath(bin);
}
async function savePending() {
  const file = getState(State.PendingSaves);
  if (!file || !fs.existsSync(file)) return;
  const pending = JSON.parse(fs.readFileSync(file, "utf8"));
  const tiers = openTiers(readConfig(), readHooks());
  try {
    const saved = await syncTiers(pending, tiers);
    if (saved.length) info(`saved what the remote tiers lacked: ${saved.join(", ")}`);
  } finally {
    for (const t of tiers) t.close();
  }
}
async function runPost() {
  setLogger(actionsLogger);
  try {
    const rt = getState(State.RuntimeDir);
    if (rt) process.env.RYRA_VM_RUNTIME_DIR = rt;
    const vms = listVms();
    for (const vm of vms) {
      if (!vm.running) {
        await group(`VM ${vm.name} exited on its own: serial console, last lines`, async () => info(logTail(vm.serialLog, 60)));
      }
      await stopVm(vm);
      if (vm.running) info(`stopped VM ${vm.name} (left running by a later step)`);
    }
    await forgetSshHosts();
    await savePending();
    const cacheDir = getState(State.CacheDir);
    if (cacheDir && rt) releaseHolder(cacheDir, jobHolder(rt).id);
    if (vms.length) await summary.addHeading("ryra-vm: VMs", 3).addRaw(vmTable(vms), true).write();
  } catch (err) {
    warning(`post step: ${errorMessage(err)}`);
  }
}

export {
  runMain,
  runPost
};
