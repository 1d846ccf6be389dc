// The action's main and post steps. main: inputs → host → layers → outputs + job summary.
import * as core from '@actions/core';
import * as fs from 'node:fs';
import { Outputs, State, type InputName, type OutputValues } from './contract.js';
import { setupHost } from './host/setup.js';
import { InputError, parseConfig } from './inputs.js';
import { actionsLogger, errorMessage, setLogger } from './log.js';
import { ensureLayers } from './layers/pipeline.js';
import { summaryTable } from './summary.js';

export async function runMain(): Promise<void> {
  setLogger(actionsLogger);
  try {
    const config = parseConfig((name: InputName) => core.getInput(name));
    const host = await setupHost(config);
    const result = await ensureLayers(config, host);
    const outputs: OutputValues = result.outputs;
    for (const [name, value] of Object.entries(outputs)) core.setOutput(name, value);
    core.setSecret(fs.readFileSync(outputs[Outputs.SshKey], 'utf8'));
    core.saveState(State.Manifest, outputs[Outputs.Manifest]);
    core.saveState(State.RuntimeDir, result.runtimeDir);
    await core.summary.addHeading('ryra-vm', 3).addRaw(summaryTable(result.layers, outputs), true).write();
  } catch (err) {
    core.setFailed(err instanceof InputError ? err.message : errorMessage(err));
  }
}

/** Post step: nothing is left running by main itself; later steps' VMs are stopped here (see cli). */
export async function runPost(): Promise<void> {
  setLogger(actionsLogger);
  const manifest = core.getState(State.Manifest);
  if (manifest && fs.existsSync(manifest)) core.info(`ryra-vm outputs were recorded in ${manifest}`);
}
