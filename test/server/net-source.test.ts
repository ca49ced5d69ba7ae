/**
 * The pieces behind per-source caps, without a node: canonical addresses and
 * prefixes, X-Forwarded-For resolution, the PROXY protocol parser fed hostile
 * input byte by byte, the per-source tables (entries vanish at 0), and the
 * `network` config section.
 */
import t from 'tap';
import { ErrorCode } from '@gravitas/protocol';
import { canonicalIp, ConfigError, loadConfig, prefixOf, proxyV1, proxyV2, readProxyHeader, SourceLimits, SourceResolver, SourceTable, isRefusal, validateConfig } from '@gravitas/server';
import { codeOf } from '../fixtures/codes.js';

t.test('canonical addresses and their prefixes', async (t) => {
  t.equal(canonicalIp('::ffff:127.0.0.1'), '127.0.0.1', 'IPv4-mapped IPv6 is IPv4');
  t.equal(canonicalIp('2001:DB8:0:0:0:0:0:1'), '2001:db8::1', 'IPv6 lower-case and compressed');
  t.equal(canonicalIp('[::1]'), '::1');
  t.equal(canonicalIp('fe80::1%eth0'), 'fe80::1', 'zone dropped');
  for (const bad of ['', 'unknown', '1.2.3', '256.1.1.1', '::g', '_hidden', '1.2.3.4:80']) t.equal(canonicalIp(bad), undefined, `"${bad}" is no address`);
  t.equal(prefixOf('10.1.2.3'), '10.1.2.0/24');
  t.equal(prefixOf('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64');
  t.equal(prefixOf('::1'), '::/64');
});

t.test('X-Forwarded-For: the rightmost hop that is not a trusted proxy, only from a trusted peer', async (t) => {
  const r = new SourceResolver(['10.0.0.0/8', '2001:db8::/32']);
  const proxy = r.peer('::ffff:10.0.0.5');
  t.equal(proxy.ip, '10.0.0.5');
  t.ok(r.isTrusted(proxy.ip));
  t.notOk(r.isTrusted('11.0.0.1'));
  const cases: Array<[string | undefined, string]> = [
    [undefined, '10.0.0.5'],
    ['198.51.100.7', '198.51.100.7'],
    ['203.0.113.1, 198.51.100.7', '198.51.100.7'],
    ['198.51.100.7, 10.1.1.1, 10.2.2.2', '198.51.100.7'],
    ['198.51.100.7:4711', '198.51.100.7'],
    ['[2001:db9::7]:443', '2001:db9::7'],
    ['10.1.1.1, 10.2.2.2', '10.1.1.1'],
    ['198.51.100.7, unknown', '10.0.0.5'],
    ['198.51.100.7, garbage, 10.3.3.3', '10.3.3.3'],
    ['', '10.0.0.5'],
  ];
  for (const [xff, want] of cases) t.equal(r.forwarded(proxy, xff).ip, want, `X-Forwarded-For ${JSON.stringify(xff)} → ${want}`);
  t.equal(r.forwarded(proxy, '198.51.100.7').via, 'proxy');
  t.equal(new SourceResolver([]).isTrusted('10.0.0.5'), false, 'nobody is trusted by default');
});

t.test('PROXY protocol v1 and v2', async (t) => {
  const v1 = proxyV1('198.51.100.7', '10.0.0.1', 40000, 7400);
  t.same(readProxyHeader(v1), { done: true, used: v1.length, ip: '198.51.100.7' });
  const six = Buffer.from('PROXY TCP6 2001:DB8::7 2001:db8::1 40000 7400\r\nhello', 'latin1');
  t.same(readProxyHeader(six), { done: true, used: six.length - 5, ip: '2001:db8::7' }, 'the bytes after the header are the client\'s');
  t.same(readProxyHeader(Buffer.from('PROXY UNKNOWN\r\n', 'latin1')), { done: true, used: 15, ip: undefined }, 'UNKNOWN: the proxy itself');
  const v2 = proxyV2('198.51.100.7', '10.0.0.1', 40000, 7400);
  t.same(readProxyHeader(v2), { done: true, used: 28, ip: '198.51.100.7' });
  t.same(readProxyHeader(proxyV2('2001:db8::7', '2001:db8::1', 1, 2)), { done: true, used: 52, ip: '2001:db8::7' });
  t.same(readProxyHeader(proxyV2('0.0.0.0', '0.0.0.0', 0, 0, true)), { done: true, used: 28, ip: undefined }, 'LOCAL');
  const tlv = Buffer.concat([v2, Buffer.from([0x04, 0x00, 0x02, 0xab, 0xcd])]);
  tlv.writeUInt16BE(12 + 5, 14);
  t.same(readProxyHeader(tlv), { done: true, used: 33, ip: '198.51.100.7' }, 'TLVs after the addresses are skipped');
  // Fed byte by byte: never done early.
  const early: string[] = [];
  for (const h of [v1, v2]) {
    for (let i = 0; i < h.length; i++) if (readProxyHeader(h.subarray(0, i)).done) early.push(`${h === v1 ? 'v1' : 'v2'}[0..${i}]`);
  }
  t.same(early, [], 'no prefix of a header is taken for a whole one');
});

t.test('PROXY protocol: hostile headers fail with BAD_PROXY_HEADER, early and bounded', async (t) => {
  const bad = (what: string, b: Buffer): void => void t.equal(codeOf(() => readProxyHeader(b)), ErrorCode.BAD_PROXY_HEADER, what);
  bad('a frame instead of a header (first byte)', Buffer.from([0x00]));
  bad('HTTP instead of a header', Buffer.from('GET / HTTP/1.1\r\n', 'latin1'));
  bad('a lower-case signature', Buffer.from('proxy ', 'latin1'));
  bad('a v1 line that never ends', Buffer.from(`PROXY TCP4 ${'1'.repeat(200)}`, 'latin1'));
  bad('v1 with too few fields', Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n', 'latin1'));
  bad('v1 TCP4 with an IPv6 source', Buffer.from('PROXY TCP4 ::1 5.6.7.8 1 2\r\n', 'latin1'));
  bad('v1 with a port over 65535', Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n', 'latin1'));
  bad('v1 with a hostname', Buffer.from('PROXY TCP4 evil.example 5.6.7.8 1 2\r\n', 'latin1'));
  bad('v1 with another protocol', Buffer.from('PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n', 'latin1'));
  const v2 = proxyV2('1.2.3.4', '5.6.7.8', 1, 2);
  const mutate = (at: number, byte: number): Buffer => {
    const b = Buffer.from(v2);
    b[at] = byte;
    return b;
  };
  bad('v2 version 1', mutate(12, 0x11));
  bad('v2 command 2', mutate(12, 0x22));
  bad('v2 address family 4', mutate(13, 0x41));
  const long = Buffer.from(v2);
  long.writeUInt16BE(5000, 14);
  bad('v2 announcing 5,000 bytes (refused before they come)', long.subarray(0, 16));
  const short = Buffer.from(v2.subarray(0, 20));
  short.writeUInt16BE(4, 14);
  bad('v2 TCP4 with a 4-byte address block', short);
});

t.test('per-source tables: caps per source and prefix, entries gone at 0', async (t) => {
  const r = new SourceResolver([]);
  const table = new SourceTable('connections', { perSource: 2, perPrefix: 3 });
  const a = r.peer('10.0.0.1');
  const b = r.peer('10.0.0.2');
  const c1 = table.acquire(a);
  const c2 = table.acquire(a);
  const c3 = table.acquire(a);
  t.ok(!isRefusal(c1) && !isRefusal(c2), 'two slots for one source');
  t.match(c3, { kind: 'connections', scope: 'source' }, 'a third is refused at source scope');
  const c4 = table.acquire(b);
  t.notOk(isRefusal(c4), 'another address of the /24 takes the third prefix slot');
  t.match(table.acquire(b), { scope: 'prefix' }, 'then the /24 is full');
  t.notOk(isRefusal(table.acquire(r.peer('10.0.1.1'))), 'the next /24 is not');
  t.equal(table.count(a), 2);
  if (isRefusal(c1) || isRefusal(c2) || isRefusal(c4)) return;
  c1.release();
  c1.release();
  t.equal(table.count(a), 1, 'a double release counts once');
  c2.release();
  c4.release();
  t.equal(table.size, 2, 'only 10.0.1.1 and its prefix are left');
  const refused: string[] = [];
  const limits = new SourceLimits({ maxConnectionsPerSource: 1, maxConnectionsPerPrefix: 1, maxHandshakesPerSource: 1, maxHandshakesPerPrefix: 1, maxPendingStreamsPerSource: 1, maxPendingStreamsPerPrefix: 1 }, (x) => void refused.push(`${x.kind}/${x.scope}`));
  const h = limits.take('handshakes', a);
  limits.take('handshakes', a);
  t.same(refused, ['handshakes/source'], 'a refusal is reported (the metric)');
  t.equal(limits.entries, 2);
  if (!isRefusal(h)) h.release();
  t.equal(limits.entries, 0, 'empty once released');
});

t.test('the network config section', async (t) => {
  const base = { serverKey: 'A'.repeat(43), ticketKeys: [{ id: 1, key: 'A'.repeat(43) }], registration: { mode: 'open' } };
  const cfg = validateConfig({ ...base, network: { trustedProxies: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.7'] } });
  t.same(cfg.network.trustedProxies, ['10.0.0.0/8', '2001:db8::/32', '192.0.2.7']);
  t.equal(cfg.network.maxConnectionsPerSource, 256, 'defaults');
  t.equal(cfg.web.maxConnections, 2 * cfg.limits.maxConnectionsPerCell, 'web.maxConnections defaults to twice the cell cap');
  const env = loadConfig({ env: { GRAVITAS_TRUSTED_PROXIES: '10.0.0.0/8, 172.16.0.0/12' }, overrides: base });
  t.same(env.network.trustedProxies, ['10.0.0.0/8', '172.16.0.0/12'], 'GRAVITAS_TRUSTED_PROXIES, comma-separated');
  const flag = loadConfig({ flags: { 'trusted-proxies': '127.0.0.9' }, overrides: base });
  t.same(flag.network.trustedProxies, ['127.0.0.9'], '--trusted-proxies');
  const issues = (raw: Record<string, unknown>): string[] => {
    try {
      validateConfig({ ...base, ...raw });
      return [];
    } catch (err) {
      return (err as ConfigError).issues.map((i) => `${i.path}: ${i.message}`);
    }
  };
  t.match(issues({ network: { trustedProxies: ['10.0.0.0/33'] } }), [/network.trustedProxies: .*prefix length must be 0..32/]);
  t.match(issues({ network: { trustedProxies: ['proxy.example'] } }), [/network.trustedProxies: .*not an IP address/]);
  t.match(issues({ network: { trustedProxies: ['0.0.0.0/0'] } }), [/network.trustedProxies: .*trusts every address/], 'trusting everyone is refused');
  t.same(issues({ network: { trustedProxies: '10.0.0.0/8' } }), [], 'a string is split like the env var');
  t.match(issues({ network: { maxConnectionsPerSource: 10, maxConnectionsPerPrefix: 5 } }), [/network.maxConnectionsPerPrefix: must be at least network.maxConnectionsPerSource/]);
  t.match(issues({ network: { maxConnectionPerSource: 1 } }), [/network.maxConnectionPerSource: unknown setting/], 'a misspelt cap is not silently ignored');
});
