/*
 * Audience predicates as a publisher attacking them would write them: names of
 * Object.prototype's members must find only a profile's own attributes, for every
 * op (an `exists` on `constructor` matched every profile), and only valid profile
 * attribute names are accepted.
 */
import t from 'tap';
import { unpack, pack } from '@gravitas/protocol';
import { matches, type Predicate } from '@gravitas/server/internal';
import { decodePredicate } from '@gravitas/server/internal';

const PROTO_NAMES = ['constructor', 'toString', 'valueOf', 'hasOwnProperty', 'isPrototypeOf', 'propertyIsEnumerable', 'toLocaleString', '__defineGetter__', '__lookupGetter__'];

t.test('names of prototype members see own attributes only, for every op', async (t) => {
  // Profiles as the runner gets them: decoded from msgpack, so ordinary objects with Object.prototype.
  const plain = unpack(pack({ plan: 'pro', age: 30 })) as Record<string, unknown>;
  const empty = unpack(pack({})) as Record<string, unknown>;
  for (const attr of PROTO_NAMES) {
    const ops: Array<[Predicate & { op: string }, boolean]> = [
      [{ attr, op: 'exists' }, false],
      [{ attr, op: 'eq', value: 'x' }, false],
      [{ attr, op: 'ne', value: 'x' }, true], // missing attribute: ne is true, as documented
      [{ attr, op: 'in', values: ['x', 1, true] }, false],
      [{ attr, op: 'lt', value: 1e9 }, false],
      [{ attr, op: 'lte', value: 1e9 }, false],
      [{ attr, op: 'gt', value: -1e9 }, false],
      [{ attr, op: 'gte', value: -1e9 }, false],
    ];
    for (const [p, want] of ops) {
      t.equal(matches(p, plain), want, `${attr} ${p.op} on a profile without it`);
      t.equal(matches(p, empty), want, `${attr} ${p.op} on an empty profile`);
    }
    t.equal(matches({ any: ops.filter(([, w]) => !w).map(([p]) => p) }, plain), false, `${attr}: no op in an any matches`);
    // Own attributes of those names (valid profile attribute names) do count.
    const own = unpack(pack({ [attr]: 5 })) as Record<string, unknown>;
    t.equal(matches({ attr, op: 'exists' }, own), true, `${attr} as an own attribute exists`);
    t.equal(matches({ attr, op: 'gte', value: 5 }, own), true, `${attr} as an own attribute compares`);
  }
  t.equal(matches({ attr: 'plan', op: 'eq', value: 'pro' }, plain), true, 'ordinary attributes still match');
});

t.test('predicate attribute names are profile attribute names', async (t) => {
  for (const attr of PROTO_NAMES.filter((n) => /^[A-Za-z_]/.test(n))) t.doesNotThrow(() => decodePredicate({ attr, op: 'exists' }), `${attr} is a valid name (a profile may hold it)`);
  for (const attr of ['__proto__', '1abc', 'a b', 'a/b', '', 'x'.repeat(65), 'é']) {
    t.throws(() => decodePredicate({ attr, op: 'exists' }), `${JSON.stringify(attr)} is refused`);
  }
  t.throws(() => decodePredicate({ all: [{ attr: 'ok', op: 'exists' }, { any: [{ attr: '__proto__', op: 'eq', value: 1 }] }] }), 'refused nested too');
});
