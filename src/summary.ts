// The job summary: a table of the layers (source, seconds, size), the key facts, the cache dir's
// size and what was evicted; and the post step's table of VMs.
import type { RunRecord } from './record.js';
import type { VmRecord } from './vms.js';

function size(bytes: number): string {
  return bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(2)} GiB` : `${(bytes / (1 << 20)).toFixed(0)} MiB`;
}

function esc(s: string): string {
  return s.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]!);
}

export function summaryTable(r: RunRecord): string {
  const rows = r.layers
    .map((l) => `<tr><td>${l.layer}</td><td>${l.source}${l.note ? ` (${esc(l.note)})` : ''}</td><td>${l.seconds.toFixed(1)}</td><td>${size(l.bytes)}</td></tr>`)
    .join('');
  const o = r.outputs;
  const facts: [string, string][] = [
    ['accel', o.accel],
    ['snapshot', o.snapshot],
    ['snapshot-memory-mb', o['snapshot-memory-mb']],
    ['cache-hit', o['cache-hit']],
    ['cache-hit-layers', o['cache-hit-layers']],
    ['cache dir', `${esc(r.cacheDir)} (${size(r.cacheDirBytes)})`],
    ['evicted', r.evicted.length ? r.evicted.map((e) => `${esc(e.base)} (${size(e.bytes)})`).join(', ') : 'nothing'],
  ];
  return (
    `<table><tr><th>layer</th><th>source</th><th>seconds</th><th>size</th></tr>${rows}</table>` +
    `<table>${facts.map(([k, v]) => `<tr><td>${k}</td><td>${v || '—'}</td></tr>`).join('')}</table>`
  );
}

export function vmTable(vms: (VmRecord & { running: boolean })[]): string {
  const rows = vms.map((v) => `<tr><td>${esc(v.name)}</td><td>${v.mode}</td><td>${(v.readyMs / 1000).toFixed(1)}</td><td>${v.running ? 'stopped by post' : 'exited'}</td></tr>`);
  return `<table><tr><th>VM</th><th>boot</th><th>seconds to SSH</th><th>end</th></tr>${rows.join('')}</table>`;
}
