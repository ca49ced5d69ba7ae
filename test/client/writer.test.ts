import t from 'tap';
import { decodeClientFrame, pack, SecureChannel, unpack } from '@gravitas/protocol';
import { BATCH_TARGET_BYTES, FrameWriter } from '@gravitas/client/internal';
import type { FrameConnection } from '@gravitas/client';

/*
 * The SDK's writer (packages/client/src/writer.ts): with `batch` negotiated, what one event-loop
 * turn writes leaves as one sealed frame (one socket write); a frame stays under 256 messages and
 * BATCH_TARGET_BYTES; without `batch`, one frame per message as before.
 */

const key1 = new Uint8Array(32).fill(7);
const key2 = new Uint8Array(32).fill(9);
const turn = (): Promise<void> => new Promise((r) => setImmediate(r)); // after the writer's microtask

function pair(batch: boolean): { w: FrameWriter; sent: Buffer[]; server: SecureChannel } {
  const sent: Buffer[] = [];
  const socket: FrameConnection = { kind: 'tcp', send: (b) => void sent.push(Buffer.from(b)), bufferedBytes: 0, close: () => undefined, destroy: () => undefined };
  return { w: new FrameWriter(socket, new SecureChannel(key1, key2, 'chacha20poly1305'), batch), sent, server: new SecureChannel(key2, key1, 'chacha20poly1305') };
}

const acks = (n: number, from = 'alice'): Array<{ t: 'ack'; id: string; from: string }> => Array.from({ length: n }, (_, i) => ({ t: 'ack', id: `m${i}`, from }));

t.test('one turn, one frame: 100 acks leave as one batch', async (t) => {
  const { w, sent, server } = pair(true);
  for (const a of acks(100)) w.write(a);
  t.equal(sent.length, 0, 'nothing is written during the turn');
  await turn();
  t.equal(sent.length, 1, 'one frame after it');
  t.strictSame(decodeClientFrame(server.open(sent[0]!), true), acks(100), 'all 100, in order');
  w.write({ t: 'ping', n: 1 });
  await turn();
  t.equal(sent.length, 2);
  t.strictSame(unpack(server.open(sent[1]!)), { t: 'ping', n: 1 }, 'a lone message is sent as itself, not as a batch of one');
});

t.test('a frame holds at most 256 messages and about BATCH_TARGET_BYTES', async (t) => {
  const { w, sent, server } = pair(true);
  for (const a of acks(600)) w.write(a);
  await turn();
  t.strictSame(sent.map((f) => decodeClientFrame(server.open(f), true).length), [256, 256, 88], '600 acks: 256 + 256 + 88');
  const big = 'x'.repeat(3000);
  for (let i = 0; i < 5; i++) w.write({ t: 'send', id: `s${i}`, to: 'bob', text: big });
  await turn();
  const frames = sent.slice(3).map((f) => server.open(f));
  t.ok(frames.length >= 2, `five 3 KB messages take ${frames.length} frames`);
  for (const f of frames) t.ok(f.length <= BATCH_TARGET_BYTES, `${f.length} bytes of plaintext`);
  t.equal(frames.flatMap((f) => decodeClientFrame(f, true)).length, 5, 'none lost');
  const huge = pack({ t: 'send', id: 'h', to: 'bob', text: 'y'.repeat(BATCH_TARGET_BYTES * 2) });
  w.write(unpack(huge) as object);
  await turn();
  t.equal(server.open(sent.at(-1)!).length, huge.length, 'a message larger than the target goes alone');
});

t.test('flush() sends now; drop() forgets; without batch one frame per message', async (t) => {
  const { w, sent } = pair(true);
  w.write({ t: 'ping', n: 1 });
  w.flush();
  t.equal(sent.length, 1, 'flushed at once (before a goodbye, or a move)');
  w.write({ t: 'ping', n: 2 });
  w.drop();
  await turn();
  t.equal(sent.length, 1, 'dropped with its session');
  const plain = pair(false);
  for (const a of acks(3)) plain.w.write(a);
  t.equal(plain.sent.length, 3, 'no batch negotiated: written at once, one frame each');
  t.strictSame(plain.sent.map((f) => unpack(plain.server.open(f))), acks(3));
});
