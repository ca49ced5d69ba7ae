/** JetStream "wrong last sequence": an optimistic-concurrency (create/update) conflict. */
export function isCasConflict(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  return e?.code === 10071 || (typeof e?.message === 'string' && e.message.includes('wrong last sequence'));
}
