/**
 * The kept breakages (scripts/mutants/*.patch, docs/guarantees.md) still fit the
 * code: every patch applies to the working tree (`git apply --check`) and names a
 * Test: file that exists. A restructure that moves the code a patch breaks makes
 * this fail, naming the patches to re-port, instead of leaving them to rot until
 * someone runs scripts/mutants/run.sh by hand. Needs a git checkout (CI clones
 * with git); skipped, saying so, without one.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dir = join(root, 'scripts', 'mutants');
const patches = readdirSync(dir).filter((f) => f.endsWith('.patch')).sort();

t.test('there are kept breakages to check', async (t) => {
  t.ok(patches.length > 0, `patches in ${dir}`);
});

t.test('every patch names a Test: file that exists', async (t) => {
  const missing = patches.filter((p) => {
    const test = /^Test: *(\S+)/m.exec(readFileSync(join(dir, p), 'utf8'))?.[1];
    return test === undefined || !existsSync(join(root, test));
  });
  t.same(missing, [], `patches whose Test: file is missing: ${missing.join(', ') || 'none'}`);
});

t.test('every patch applies to the working tree (git apply --check)', { skip: existsSync(join(root, '.git')) ? false : `no .git in ${root}: not a git checkout, so git apply cannot be checked here (CI clones with git and runs it)` }, async (t) => {
  const stale: string[] = [];
  for (const p of patches) {
    const r = spawnSync('git', ['apply', '--check', join('scripts', 'mutants', p)], { cwd: root, encoding: 'utf8' });
    if (r.error) throw r.error; // git itself missing: a failure, not a skip
    if (r.status !== 0) {
      stale.push(p.replace(/\.patch$/, ''));
      t.comment(`${p}:\n${r.stderr.trim()}`);
    }
  }
  t.same(stale, [], `patches that no longer apply (re-port them to where the code lives now): ${stale.join(', ') || 'none'}`);
});
