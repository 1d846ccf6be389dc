// The job summary: one table of layers (source, seconds, size) and the key outputs.
import type { OutputValues } from './contract.js';
import type { LayerResult } from './layers/pipeline.js';

function size(bytes: number): string {
  return bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(2)} GiB` : `${(bytes / (1 << 20)).toFixed(0)} MiB`;
}

function esc(s: string): string {
  return s.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]!);
}

export function summaryTable(layers: LayerResult[], outputs: Partial<OutputValues>): string {
  const rows = layers
    .map((l) => `<tr><td>${l.layer}</td><td>${l.source}${l.note ? ` (${esc(l.note)})` : ''}</td><td>${l.seconds.toFixed(1)}</td><td>${size(l.bytes)}</td></tr>`)
    .join('');
  const facts = ['accel', 'snapshot', 'snapshot-memory-mb', 'cache-hit']
    .map((k) => `<tr><td>${k}</td><td>${esc(outputs[k as keyof OutputValues] || '—')}</td></tr>`)
    .join('');
  return `<table><tr><th>layer</th><th>source</th><th>seconds</th><th>size</th></tr>${rows}</table><table>${facts}</table>`;
}
