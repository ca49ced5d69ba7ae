import t from 'tap';
import { NatsServer } from '@gravitas/testkit';
import { bestEstimate, estimateClock, serveClock } from '../../bench/src/harness/clock.js';
import { boundedSubscribe, connectControl, decodeFromGenerator, decodeToGenerator, encodeControl, SUBJECT } from '../../bench/src/harness/control.js';
import { parsePrometheus, sumSeries } from '../../bench/src/harness/scrape.js';

const enc = new TextEncoder();

t.test('control messages are checked before anyone acts on them', async (t) => {
  const ok = decodeToGenerator(encodeControl({ type: 'start', t0: 1234 }));
  t.same(ok, { type: 'start', t0: 1234 });
  const bad = (s: string): unknown => t.throws(() => decodeToGenerator(enc.encode(s)), { code: 'CONTROL_MESSAGE_INVALID' }, s);
  bad('not json');
  bad('[1]');
  bad('{"t0": 1}');
  bad('{"type": "explode"}');
  bad('{"type": "start", "t0": "soon"}');
  bad('{"type": "assign", "run": "a.b", "index": 0, "count": 1}');
  bad('{"type": "setup", "source": {"text": "x", "format": "toml"}, "namespace": "a", "runTag": "b", "driver": {"kind": "gravitas"}}');
  bad('{"type": "setup", "source": {"text": "x", "format": "yaml"}, "namespace": "a", "runTag": "b", "driver": {"kind": "irc"}}');
  bad('{"type": "createGroups", "groups": [1, -2]}');
  bad('{"type": "groups", "ids": [1]}');
  t.throws(() => decodeFromGenerator(enc.encode('{"type": "beat"}')), { code: 'CONTROL_MESSAGE_INVALID' }, 'no generator id');
  t.throws(() => decodeFromGenerator(enc.encode('{"type": "beat", "gen": "a b"}')), { code: 'CONTROL_MESSAGE_INVALID' }, 'an id that is not a subject token');
  t.throws(() => decodeFromGenerator(enc.encode('{"type": "interval", "gen": "g1", "k": 1.5}')), { code: 'CONTROL_MESSAGE_INVALID' });
  t.same(decodeFromGenerator(enc.encode('{"type": "beat", "gen": "g1"}')), { type: 'beat', gen: 'g1' });
});

t.test('the clock estimate takes the tightest round trip', async (t) => {
  // The remote clock runs 100 ms ahead; the slow sample (rtt 40) would be off by 10 ms.
  const e = bestEstimate([
    { sentMs: 0, remoteMs: 130, receivedMs: 40 },
    { sentMs: 50, remoteMs: 151, receivedMs: 52 },
    { sentMs: 60, remoteMs: 175, receivedMs: 80 },
  ]);
  t.equal(e.rttMs, 2);
  t.equal(e.offsetMs, 100);
  t.throws(() => bestEstimate([{ sentMs: 5, remoteMs: 1, receivedMs: 4 }]), RangeError, 'a sample received before it was sent is not usable');
});

t.test('over a real nats-server: the clock of one host agrees with itself, and a bounded subscription drops the oldest', async (t) => {
  const ns = await NatsServer.start({ jetstream: false });
  t.teardown(() => ns.stop());
  const a = await connectControl(ns.url, 'a');
  const b = await connectControl(ns.url, 'b');
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const clock = serveClock(a, SUBJECT.clock('r1'));
  const e = await estimateClock(b, SUBJECT.clock('r1'), 8);
  t.ok(Math.abs(e.offsetMs) <= e.rttMs / 2 + 0.5, `one host: offset ${e.offsetMs.toFixed(3)} ms within the bound ${(e.rttMs / 2).toFixed(3)} ms`);
  clock.stop();

  // A handler that blocks until released; 10 messages arrive, the bound is 3.
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const seen: string[] = [];
  const { dropped } = boundedSubscribe(
    b,
    'x.y',
    async (data) => {
      seen.push(new TextDecoder().decode(data));
      await gate;
    },
    () => undefined,
    3,
  );
  await b.flush();
  for (let i = 0; i < 10; i++) a.publish('x.y', enc.encode(String(i)));
  await a.flush();
  await b.flush();
  release();
  await new Promise((r) => setTimeout(r, 50));
  t.equal(seen[0], '0', 'the first was being handled');
  t.same(seen.slice(1), ['7', '8', '9'], 'the newest three were kept');
  t.equal(dropped(), 6, 'the rest counted as dropped');
  await t.rejects(connectControl('nats://127.0.0.1:1', 'x'), { code: 'CONTROL_UNAVAILABLE' });
});

t.test('Prometheus text: series with labels, sums, and lines to skip', async (t) => {
  const m = parsePrometheus(
    [
      '# HELP gravitas_deliveries_total Deliveries',
      '# TYPE gravitas_deliveries_total counter',
      'gravitas_deliveries_total{path="local"} 120',
      'gravitas_deliveries_total{path="cross_cell"} 30',
      'gravitas_deliveries_total{path="mailbox"} 7',
      'gravitas_node_process_cpu_seconds_total 12.5',
      'weird{label="a b"} 3 1700000000',
      'broken line',
      '',
    ].join('\n'),
  );
  t.equal(sumSeries(m, 'gravitas_deliveries_total'), 157);
  t.equal(sumSeries(m, 'gravitas_deliveries_total', 'path="local"'), 120);
  t.equal(sumSeries(m, 'gravitas_node_process_cpu_seconds_total'), 12.5);
  t.equal(m.get('weird{label="a b"}'), 3, 'a label value with a space, and a timestamp');
  t.equal(sumSeries(m, 'gravitas_deliveries'), 0, 'a prefix of a name is not the name');
});
