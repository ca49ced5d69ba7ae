import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { freePort, tempDir } from '@gravitas/testkit';

t.test('freePort returns a port that can be listened on', async (t) => {
  const port = await freePort();
  t.ok(port > 0 && port < 65536 && port !== 4222);
  const srv = createServer().listen(port, '127.0.0.1');
  await once(srv, 'listening');
  await new Promise((r) => srv.close(r));
});

t.test('tempDir is created under tmpdir and removed on dispose', async (t) => {
  let path: string;
  {
    await using dir = await tempDir('gravitas-util-');
    path = dir.path;
    t.ok(path.startsWith(join(tmpdir(), 'gravitas-util-')));
    await writeFile(join(path, 'x'), 'data');
    t.ok(existsSync(join(path, 'x')));
  }
  t.notOk(existsSync(path), 'removed by await using');
});
