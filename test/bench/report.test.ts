import t from 'tap';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Browser } from 'playwright-core';
import { renderHtmlReport } from '../../bench/src/harness/html.js';
import { bottlenecks, judge, type RunResult } from '../../bench/src/harness/result.js';
import { syntheticResult } from './synthetic.js';
import { plotView } from '../fixtures/report-page.js';
import { chromiumMissing, launchChromium } from '../fixtures/browser.js';

/*
 * The HTML report opened in real headless Chromium (Debian's `chromium`; override with
 * CHROMIUM_PATH=path, as every browser test), on made-up data; test/bench/run.test.ts opens the
 * report of a real run.
 */

const PLOTS = ['throughput', 'presence', 'latency', 'connections', 'connect-rate', 'connect-time', 'locality', 'host-cpu', 'server-cpu', 'server-memory', 'generator-cpu', 'generator-lag'];

t.test('the verdict: generator-bound only when a generator was saturated often enough', async (t) => {
  const bad = syntheticResult();
  t.equal(bad.verdict.generatorBound, true, '6 of 50 steady intervals saturated ≥ 10 %');
  t.match(bad.verdict.reasons, [/^gen1 saturated by its own load in 6 of 50 intervals/]);
  t.match(bad.verdict.warnings, [/generator CPU peaked at 97 %/]);
  const good = syntheticResult({ saturate: false });
  t.equal(good.verdict.generatorBound, false);
  t.same(good.verdict.reasons, []);
  // One dropped send is enough: the schedule was not kept.
  const one = syntheticResult({ saturate: false });
  one.intervals[20]!.generators['gen0']!.skipped = 1;
  t.equal(judge(one.intervals, one.scenario).generatorBound, true);
  // Lag at low CPU while the shared host was out of CPU: the host's limit, not the generator's.
  const starved = syntheticResult({ saturate: false });
  for (const iv of starved.intervals.filter((x) => x.t > 40 && x.t <= 46)) {
    iv.generators['gen1'] = { ...iv.generators['gen1']!, cpu: 12, loopLagP99Ms: 90, saturated: true };
    iv.hosts['bench1'] = { ...iv.hosts['bench1']!, cpu: 198 };
  }
  const hosts = { gen0: 'bench1', gen1: 'bench1' };
  const hv = judge(starved.intervals, starved.scenario, hosts);
  t.equal(hv.generatorBound, false, 'not generator-bound');
  t.equal(hv.hostBound, true, 'host-bound');
  t.match(hv.reasons, [/^gen1 lagged in 6 of 50 intervals .*6 of them while its host bench1 was out of CPU; its own CPU peaked at/]);
  t.match(bottlenecks({ intervals: starved.intervals, verdict: hv, totals: starved.totals }), [/lagged only while the host they share with the target was out of CPU/, /^Host bench1 was out of CPU/]);
  t.match(renderHtmlReport({ ...starved, verdict: hv }), /<strong>Host-bound run\.<\/strong>/);
  // The same lag with the host idle is the generator's own.
  for (const iv of starved.intervals) iv.hosts['bench1'] = { ...iv.hosts['bench1']!, cpu: 50 };
  t.equal(judge(starved.intervals, starved.scenario, hosts).generatorBound, true, 'lag on an idle host is the generator’s own');
  // Saturation during the ramp-up does not count.
  const ramp = syntheticResult({ saturate: false });
  for (const iv of ramp.intervals.slice(0, 10)) iv.generators['gen0']!.saturated = true;
  t.equal(judge(ramp.intervals, ramp.scenario).generatorBound, false);
});

t.test('the report is one self-contained file', async (t) => {
  const html = renderHtmlReport(syntheticResult());
  t.notMatch(html, /<script(?![^>]*type="application\/json")/, 'no executable script');
  t.notMatch(html, /(src|href)="(https?:)?\/\//, 'nothing loaded from elsewhere');
  const r = syntheticResult();
  r.scenario.description = '<img src=x onerror=alert(1)>';
  r.notes = ['</script><script>alert(1)</script>'];
  const evil = renderHtmlReport(r);
  t.notOk(evil.includes('<img src=x'), 'text is escaped');
  t.equal(evil.match(/<script/g)?.length, 1, 'the embedded JSON cannot close its script element');
});

t.test('opened in headless Chromium: every plot is drawn', { skip: chromiumMissing() }, async (t) => {
  const dir = t.testdir({});
  const file = join(dir, 'report.html');
  const result: RunResult = syntheticResult();
  await writeFile(file, renderHtmlReport(result));

  const browser: Browser = await launchChromium();
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 960, height: 900 } });
  const requests: string[] = [];
  page.on('request', (req) => requests.push(req.url()));
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(pathToFileURL(file).href);

  for (const id of PLOTS) {
    const plot = await plotView(page, id);
    t.ok(plot.svg && plot.width > 300, `${id}: an SVG is laid out`);
    t.ok(plot.paths >= 1, `${id}: ${plot.paths} series`);
    t.ok(plot.lengths.every((l) => l > 0), `${id}: every series line has a length`);
    t.ok(plot.points >= 60, `${id}: points drawn (${plot.points})`);
    t.equal(plot.legend, plot.paths, `${id}: one legend entry per series`);
  }
  t.equal(await page.locator('#plot-latency path.series').count(), 6, 'latency: p50, p90, p99, p99.9, max and the generators\' send lag');
  t.equal(await page.locator('#plot-server-cpu path.series').count(), 3, 'server CPU: one line per process');
  t.ok((await page.locator('#plot-throughput rect.saturated').count()) >= 1, 'the saturated intervals are shaded');
  t.match(await page.locator('#verdict').innerText(), /Generator-bound run/, 'the header flags the run');
  const embedded = JSON.parse(await page.locator('#result').innerText()) as RunResult;
  t.equal(embedded.intervals.length, 60, 'the result JSON is embedded');
  t.same(requests.filter((u) => !u.startsWith('file:')), [], 'no network request');
  t.same(errors, [], 'no page error');

  const png = join(dir, 'report.png');
  await page.screenshot({ path: png, fullPage: true });
  t.ok(existsSync(png));
});

t.test('the scenario\'s metrics choose the plots', async (t) => {
  const r = syntheticResult({ saturate: false });
  r.scenario.metrics = ['throughput', 'latency'];
  const html = renderHtmlReport(r);
  t.match(html, /id="plot-throughput"/);
  t.match(html, /id="plot-latency"/);
  for (const id of ['connections', 'locality', 'host-cpu', 'server-cpu', 'generator-cpu']) t.notMatch(html, new RegExp(`id="plot-${id}"`), `no ${id} plot`);
});

t.test('a target that cannot tell locality gets a note, not an empty plot', async (t) => {
  const r = syntheticResult({ saturate: false });
  for (const iv of r.intervals) iv.locality = null;
  const html = renderHtmlReport(r);
  t.match(html, /<figure class="plot" id="plot-locality"><figcaption>[^<]*<\/figcaption><p class="empty">not reported by this target<\/p>/);
  t.match(html, /Generators kept up/);
});
