import { pack } from '@gravitas/protocol';
import type { Invalidation } from '../core/envelope.js';
import { accountRecords, listDevices, readAccount, setSuspended } from '../session/accounts.js';
import type { Principal } from './auth.js';
import { AdminError, AdminErrorCode } from './http.js';
import { userParam, type EngageContext, type Route } from './route.js';

/**
 * Accounts (docs/security.md, "Suspending an account"): the operator only (the admin
 * token, not a publisher's key, whatever its roles). A suspension ends every session
 * of the account and refuses its devices on every cell; messages to it are undeliverable.
 */
function accountRoutes(): Route[] {
  const operator = (who: Principal): void => {
    if (who.kind !== 'root') throw new AdminError(403, AdminErrorCode.FORBIDDEN, 'only the operator (the admin token) manages accounts');
  };
  const invalidate = (ctx: EngageContext, i: Invalidation): void => ctx.nc.publish(ctx.names.invalidations, pack(i));
  const suspension = (on: boolean): Route => ({
    method: 'POST',
    path: new RegExp(`^/admin/accounts/([^/]+)/${on ? 'suspend' : 'unsuspend'}$`),
    async run(call) {
      operator(call.who);
      const user = userParam(call.params[0]!);
      if (!(await setSuspended(accountRecords(call.ctx.accounts), user, on))) throw new AdminError(404, AdminErrorCode.NOT_FOUND, `no account ${user}`);
      // Written first: from now on no handshake gets in; then every live session is told, and caches dropped.
      if (on) invalidate(call.ctx, { kind: 'revoked', key: user });
      invalidate(call.ctx, { kind: 'devices', key: user });
      return { status: 200, body: { user, suspended: on } };
    },
  });
  return [
    {
      method: 'GET',
      path: /^\/admin\/accounts\/([^/]+)$/,
      async run(call) {
        operator(call.who);
        const user = userParam(call.params[0]!);
        const r = await readAccount(call.ctx.accounts, user);
        if (r.d.size === 0 && r.s === undefined) throw new AdminError(404, AdminErrorCode.NOT_FOUND, `no account ${user}`);
        return { status: 200, body: { user, devices: listDevices(r), ...(r.s !== undefined && { suspendedAt: r.s }) } };
      },
    },
    suspension(true),
    suspension(false),
  ];
}

export const ACCOUNT_ROUTES: readonly Route[] = accountRoutes();
