// The action's main and post steps. main: inputs → host → layers → outputs + job summary (and the
// VMs named by `boot`); post: stop what later steps left running, release the job's hold on its
// layers, summarise.
import * as core from '@actions/core';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { jobHolder, releaseHolder } from './cache/local.js';
import { Outputs, State, type InputName } from './contract.js';
import { readHooks } from './env.js';
import { setupHost } from './host/setup.js';
import { InputError, parseConfig, type Config } from './inputs.js';
import { actionsLogger, errorMessage, setLogger } from './log.js';
import { ensureLayers, openTiers, syncTiers } from './layers/pipeline.js';
import type { PendingSave } from './layers/context.js';
import { RuntimeFiles } from './names.js';
import { JOB_ENV, newJobId } from './paths.js';
import { summaryTable, vmTable } from './summary.js';
import { logTail } from './vm/machine.js';
import { bootVm, forgetSshHosts, listVms, stopVm } from './vms.js';

/** The inputs, parsed; the registry token is masked in the log before anything can print it. */
function readConfig(): Config {
  const config = parseConfig((name: InputName) => core.getInput(name));
  if (config.registryToken) core.setSecret(config.registryToken);
  return config;
}

export async function runMain(): Promise<void> {
  setLogger(actionsLogger);
  try {
    const config = readConfig();
    const hooks = readHooks();
    // The tiers start (the cache worker loads, the registry signs in) and the SSH key is fetched
    // while the host is set up; ensureLayers waits for the host, and closes the tiers.
    const tiers = openTiers(config, hooks);
    // Layers a tier lacks are saved by the post step: the job's own steps do not wait for them.
    const result = await ensureLayers(config, setupHost(config, hooks), tiers, { deferSaves: true, hooks });
    const { outputs } = result;
    if (result.pending.length) {
      const file = path.join(result.runtimeDir, 'pending-saves.json');
      fs.writeFileSync(file, JSON.stringify(result.pending));
      core.saveState(State.PendingSaves, file);
    }
    for (const [name, value] of Object.entries(outputs)) core.setOutput(name, value);
    // Masking works per line: register each line of the key's body.
    for (const line of fs.readFileSync(outputs[Outputs.SshKey], 'utf8').split('\n')) if (line.length > 20 && !line.startsWith('-----')) core.setSecret(line);
    core.saveState(State.Manifest, outputs[Outputs.Manifest]);
    core.saveState(State.RuntimeDir, result.runtimeDir);
    core.saveState(State.CacheDir, config.cacheDir);
    addCliToPath(result.runtimeDir);
    // The job's id, for its later steps: their plain `ssh NAME` reaches this job's VMs only (vms.ts).
    if (!process.env[JOB_ENV]) core.exportVariable(JOB_ENV, newJobId());
    const vms = [];
    for (const name of config.boot) {
      const vm = await core.group(`Booting VM ${name}`, () => bootVm({ name, config: outputs[Outputs.Manifest], forwards: config.forward[name] ?? [], hooks }));
      const fwd = vm.forwards.map((f) => `, 127.0.0.1:${f.host} → ${f.guest}`).join('');
      core.info(`${vm.name}: ready in ${(vm.readyMs / 1000).toFixed(1)} s (${vm.mode}), ssh ${vm.name} or ryra-vm ssh ${vm.name}${fwd}`);
      vms.push(vm);
    }
    await core.summary.addHeading('ryra-vm', 3).addRaw(summaryTable(result.record), true).write();
  } catch (err) {
    core.setFailed(err instanceof InputError ? err.message : errorMessage(err));
  }
}

/** Puts `ryra-vm` on PATH for later steps: a wrapper that runs this action's bundled CLI with this Node. */
function addCliToPath(rt: string): void {
  const bin = path.join(rt, RuntimeFiles.bin);
  fs.mkdirSync(bin, { recursive: true });
  const cli = path.join(path.dirname(path.resolve(process.argv[1])), 'cli.js');
  fs.writeFileSync(path.join(bin, 'ryra-vm'), `#!/bin/sh\nexec "${process.execPath}" "${cli}" "$@"\n`, { mode: 0o755 });
  core.addPath(bin);
}

/** Saves the layers the main step found a tier lacking (they are still held by this job). */
async function savePending(): Promise<void> {
  const file = core.getState(State.PendingSaves);
  if (!file || !fs.existsSync(file)) return;
  const pending = JSON.parse(fs.readFileSync(file, 'utf8')) as PendingSave[];
  const tiers = openTiers(readConfig(), readHooks());
  try {
    const saved = await syncTiers(pending, tiers);
    if (saved.length) core.info(`saved what the remote tiers lacked: ${saved.join(', ')}`);
  } finally {
    for (const t of tiers) t.close();
  }
}

/** Post step: stops the VMs later steps left running, shows the serial tail of those that died, summarises. */
export async function runPost(): Promise<void> {
  setLogger(actionsLogger);
  try {
    const rt = core.getState(State.RuntimeDir);
    if (rt) process.env.RYRA_VM_RUNTIME_DIR = rt;
    const vms = listVms();
    for (const vm of vms) {
      if (!vm.running) {
        await core.group(`VM ${vm.name} exited on its own: serial console, last lines`, async () => core.info(logTail(vm.serialLog, 60)));
      }
      await stopVm(vm);
      if (vm.running) core.info(`stopped VM ${vm.name} (left running by a later step)`);
    }
    await forgetSshHosts();
    await savePending();
    const cacheDir = core.getState(State.CacheDir);
    if (cacheDir && rt) releaseHolder(cacheDir, jobHolder(rt).id);
    if (vms.length) await core.summary.addHeading('ryra-vm: VMs', 3).addRaw(vmTable(vms), true).write();
  } catch (err) {
    core.warning(`post step: ${errorMessage(err)}`);
  }
}
