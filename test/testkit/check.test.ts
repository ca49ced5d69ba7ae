import t from 'tap';
import { check, CheckTimeoutError } from '@gravitas/testkit';

t.test('resolves with the first truthy value', async (t) => {
  let calls = 0;
  const value = await check('counter reaches 3', () => (++calls >= 3 ? { calls } : undefined), { interval: 5 });
  t.same(value, { calls: 3 });
});

t.test('throws and rejections count as "not yet"', async (t) => {
  let calls = 0;
  const value = await check(
    'flaky',
    async () => {
      if (++calls < 3) throw new Error('not yet');
      return 'ok';
    },
    { interval: 5 },
  );
  t.equal(value, 'ok');
});

t.test('times out with the name and the last error', async (t) => {
  const started = Date.now();
  const err = await check(
    'never happens',
    () => {
      throw new Error('still broken');
    },
    { timeout: 200, interval: 20 },
  ).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof CheckTimeoutError);
  t.match((err as Error).message, /^check "never happens" timed out after 200ms: still broken$/);
  t.ok(Date.now() - started >= 190, 'polled for the whole timeout');
});

t.test('times out without an error when fn only returns falsy', async (t) => {
  await t.rejects(check('falsy', () => false, { timeout: 100 }), {
    message: 'check "falsy" timed out after 100ms',
  });
});

t.test('an attempt that hangs does not outlive the timeout', async (t) => {
  const started = Date.now();
  await t.rejects(check('hangs', () => new Promise<boolean>(() => {}), { timeout: 150 }), {
    message: /check "hangs" timed out after 150ms/,
  });
  t.ok(Date.now() - started < 1000);
});
