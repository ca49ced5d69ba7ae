// Fails when a source file of packages/ grows past MAX_LINES (docs/architecture.md,
// "Rules that keep it"): past that, a file holds more than one job.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

const MAX_LINES = 450;
const over = [];
function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (p.endsWith('.ts')) {
      const lines = readFileSync(p, 'utf8').split('\n').length - 1;
      if (lines > MAX_LINES) over.push(`${p}: ${lines} lines`);
    }
  }
}
for (const pkg of readdirSync('packages')) walk(join('packages', pkg, 'src'));
if (over.length > 0) {
  console.error(`source files over ${MAX_LINES} lines (split them along their jobs):\n  ${over.join('\n  ')}`);
  process.exit(1);
}
