/** The JSON files the benchmarks write to bench/results/, and what each records about the run. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadBinding } from '../src/native/binding';

export const RESULTS_DIR = path.join(__dirname, 'results');

/** When, and on what machine. */
export function runInfo(): {
  date: string;
  machine: { kernel: string; cpus: number; cpuModel: string | undefined; node: string };
} {
  return {
    date: new Date().toISOString(),
    machine: { kernel: os.release(), cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, node: process.version },
  };
}

/** The addon the run loaded (its path), or null. */
export function addonPath(): string | null {
  const addon = loadBinding();
  return addon.ok ? addon.path : null;
}

/** Writes `doc` to bench/results/NAME-DATE.json and prints the file's path. */
export function writeResults(name: string, doc: unknown): void {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify(doc, null, 2) + '\n');
  console.log(`wrote ${path.relative(process.cwd(), file)}`);
}
