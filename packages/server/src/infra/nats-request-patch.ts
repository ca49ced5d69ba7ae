import { RequestOne } from '@nats-io/nats-core/internal';

/*
 * nats.js 3.x settles a successful request and then calls cancel(), which builds
 * `new RequestError("cancelled")` (stack trace included) only to reject a promise
 * that is already resolved. Every KV get and JetStream publish pays for that
 * throw-away error: 9-11% of a cell's CPU when storing or draining mailboxes
 * (bench/custody profile). The success path below does exactly what the library
 * does — stop the timer, resolve, leave the mux — without building the error.
 * Failures still go through the library's own code. Applied once per thread.
 */
type Resolver = (this: RequestOne, err: Error | null, msg: Parameters<RequestOne['resolver']>[1]) => void;

const proto = RequestOne.prototype as RequestOne & { __gravitasPatched?: boolean };
if (!proto.__gravitasPatched) {
  const original: Resolver = proto.resolver;
  proto.resolver = function (this: RequestOne, err, msg) {
    if (err) return original.call(this, err, msg);
    this.timer?.cancel();
    this.deferred.resolve(msg);
    this.mux.cancel(this);
  } as Resolver;
  proto.__gravitasPatched = true;
}
