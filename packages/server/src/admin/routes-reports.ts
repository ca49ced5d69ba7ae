import type { KV } from '@nats-io/kv';
import { unpack } from '@gravitas/protocol';
import { campaignReport, userReport, type ReportSources } from '../engage/reports.js';
import { queryUnarchived } from '../engage/shipper.js';
import { canRead, need, seesAll } from './auth.js';
import { AdminError, AdminErrorCode } from './http.js';
import { CAMPAIGN_ID, userParam, visibleCampaign, type Route, type RouteCall } from './route.js';

/** Default and bounds of a campaign report's time bucket. */
const BUCKET_DEFAULT_MS = 3600_000;
const BUCKET_MIN_MS = 60_000;
/** How long a report waits for nodes' local records (it returns at once when every live node answered). */
const LOCAL_WAIT_MS = 1000;

/** Nodes with a live cell, from the membership bucket (entries expire with their heartbeats). */
async function liveNodes(cells: KV): Promise<number> {
  const nodes = new Set<string>();
  for await (const key of await cells.keys()) {
    const e = await cells.get(key).catch(() => null);
    if (!e || e.operation !== 'PUT') continue;
    try {
      const node = (unpack(e.value) as { node?: unknown }).node;
      if (typeof node === 'string') nodes.add(node);
    } catch {
      // a malformed heartbeat names no node
    }
  }
  return nodes.size;
}

function sources(call: RouteCall): ReportSources {
  const { ctx } = call;
  return {
    archive: ctx.archive,
    local: async (q) => queryUnarchived(ctx.nc, ctx.names, q, { maxWaitMs: LOCAL_WAIT_MS, expectNodes: Math.max(1, await liveNodes(ctx.cells)) }),
    campaign: (id) => ctx.campaigns.get(id),
    profileAt: (user, version) => ctx.profiles.at(user, version),
  };
}

/**
 * Reports (engage/reports.ts). Role `reports` reads its own campaigns' reports
 * (a user report lists only its campaigns); `auditor` and `admin` read all.
 * Another publisher's campaign is 404, as everywhere.
 */
function reportRoutes(): Route[] {
  return [
    {
      method: 'GET',
      path: /^\/admin\/reports\/users\/([^/]+)\/campaigns$/,
      async run(call) {
        need(call.who, 'reports', 'auditor');
        const user = userParam(call.params[0]!);
        const profiles = call.query.get('profiles');
        if (profiles !== null && profiles !== '0' && profiles !== '1') throw new AdminError(400, AdminErrorCode.BAD_REQUEST, 'profiles must be 0 or 1');
        const who = call.who;
        const report = await userReport(sources(call), user, {
          // A campaign whose record is gone is shown only to those who see everything.
          visible: (c) => (c ? canRead(who, c) : seesAll(who)),
          withProfiles: profiles === '1',
        });
        return { status: 200, body: report };
      },
    },
    {
      method: 'GET',
      path: new RegExp(`^/admin/reports/campaigns/${CAMPAIGN_ID}$`),
      async run(call) {
        need(call.who, 'reports', 'auditor');
        const c = await visibleCampaign(call, call.params[0]!);
        const b = call.query.get('bucket');
        if (b !== null && !(/^\d{1,12}$/.test(b) && Number(b) >= BUCKET_MIN_MS)) throw new AdminError(400, AdminErrorCode.BAD_REQUEST, `bucket must be a whole number of milliseconds ≥ ${BUCKET_MIN_MS}`);
        const report = await campaignReport(sources(call), c.id, b === null ? BUCKET_DEFAULT_MS : Number(b));
        return { status: 200, body: { ...report, name: c.name, state: c.state, progress: await call.ctx.campaigns.progress(c.id) } };
      },
    },
  ];
}

export const REPORT_ROUTES: readonly Route[] = reportRoutes();
