import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __filename = __ryraFileURLToPath(import.meta.url);
const __dirname = __ryraDirname(__filename);
import {
  InputError,
  Outputs,
  State,
  actionsLogger,
  ensureLayers,
  errorMessage,
  parseConfig,
  setLogger,
  setupHost
} from "./chunk-AWYFBMPF.js";
import {
  getInput,
  getState,
  info,
  saveState,
  setFailed,
  setOutput,
  setSecret,
  summary
} from "./chunk-LHFSR3XE.js";

// src/action.ts
import * as fs from "node:fs";

// src/summary.ts
function size(bytes) {
  return bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(2)} GiB` : `${(bytes / (1 << 20)).toFixed(0)} MiB`;
}
function esc(s) {
  return s.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
}
function summaryTable(layers, outputs) {
  const rows = layers.map((l) => `<tr><td>${l.layer}</td><td>${l.source}${l.note ? ` (${esc(l.note)})` : ""}</td><td>${l.seconds.toFixed(1)}</td><td>${size(l.bytes)}</td></tr>`).join("");
  const facts = ["accel", "snapshot", "snapshot-memory-mb", "cache-hit"].map((k) => `<tr><td>${k}</td><td>${esc(outputs[k] || "\u2014")}</td></tr>`).join("");
  return `<table><tr><th>layer</th><th>source</th><th>seconds</th><th>size</th></tr>${rows}</table><table>${facts}</table>`;
}

// src/action.ts
async function runMain() {
  setLogger(actionsLogger);
  try {
    const config = parseConfig((name) => getInput(name));
    const host = await setupHost(config);
    const result = await ensureLayers(config, host);
    const outputs = result.outputs;
    for (const [name, value] of Object.entries(outputs)) setOutput(name, value);
    setSecret(fs.readFileSync(outputs[Outputs.SshKey], "utf8"));
    saveState(State.Manifest, outputs[Outputs.Manifest]);
    saveState(State.RuntimeDir, result.runtimeDir);
    await summary.addHeading("ryra-vm", 3).addRaw(summaryTable(result.layers, outputs), true).write();
  } catch (err) {
    setFailed(err instanceof InputError ? err.message : errorMessage(err));
  }
}
async function runPost() {
  setLogger(actionsLogger);
  const manifest = getState(State.Manifest);
  if (manifest && fs.existsSync(manifest)) info(`ryra-vm outputs were recorded in ${manifest}`);
}

export {
  runMain,
  runPost
};
