import { WebSocket } from 'undici';

/*
 * Forces a full GC in another Node process — its main thread and every worker thread (the
 * cells) — over the inspector protocol, so that RSS readings compare live memory instead of
 * whatever garbage and heap headroom the last allocation burst left behind. The process must run
 * with `--inspect=127.0.0.1:0`; its stderr names the WebSocket URL ("Debugger listening on ws://…").
 */

interface CdpMessage {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  result?: unknown;
  error?: { message: string };
}

export const INSPECT_URL_RE = /Debugger listening on (ws:\/\/\S+)/;

export class RemoteGc {
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  /** sessionId of every attached worker thread. */
  private readonly workers = new Set<string>();

  private constructor(private readonly ws: WebSocket) {
    ws.addEventListener('message', (ev) => this.onMessage(JSON.parse(String(ev.data)) as CdpMessage));
    ws.addEventListener('close', () => this.failAll(new Error('inspector connection closed')));
  }

  static async connect(url: string, timeoutMs = 5000): Promise<RemoteGc> {
    const ws = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`inspector at ${url} did not answer`)), timeoutMs);
      ws.addEventListener('open', () => (clearTimeout(t), resolve()));
      ws.addEventListener('error', () => (clearTimeout(t), reject(new Error(`cannot connect to inspector at ${url}`))));
    });
    const gc = new RemoteGc(ws);
    await gc.call('NodeWorker.enable', { waitForDebuggerOnStart: false });
    // attachedToWorker events for existing workers arrive right after enable.
    await new Promise((r) => setTimeout(r, 200));
    return gc;
  }

  get workerCount(): number {
    return this.workers.size;
  }

  private failAll(e: Error): void {
    for (const p of this.waiting.values()) p.reject(e);
    this.waiting.clear();
  }

  private onMessage(m: CdpMessage): void {
    if (m.id !== undefined) {
      const p = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (m.error) p?.reject(new Error(m.error.message));
      else p?.resolve(m.result);
      return;
    }
    if (m.method === 'NodeWorker.attachedToWorker') this.workers.add(String(m.params?.['sessionId']));
    else if (m.method === 'NodeWorker.detachedFromWorker') this.workers.delete(String(m.params?.['sessionId']));
    else if (m.method === 'NodeWorker.receivedMessageFromWorker') {
      // Replies of worker sessions come wrapped; ids share our sequence.
      this.onMessage(JSON.parse(String(m.params?.['message'])) as CdpMessage);
    }
  }

  private call(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<unknown> {
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`inspector: ${method} timed out`));
      }, 30_000);
      this.waiting.set(id, { resolve: (v) => (clearTimeout(t), resolve(v)), reject: (e) => (clearTimeout(t), reject(e)) });
      const msg = JSON.stringify({ id, method, params });
      if (sessionId === undefined) this.ws.send(msg);
      else this.ws.send(JSON.stringify({ id: ++this.seq, method: 'NodeWorker.sendMessageToWorker', params: { sessionId, message: msg } }));
    });
  }

  /** Full GC on every thread of the process; resolves with the number of threads collected. */
  async collect(): Promise<number> {
    await Promise.all([this.call('HeapProfiler.collectGarbage'), ...[...this.workers].map((s) => this.call('HeapProfiler.collectGarbage', {}, s))]);
    return 1 + this.workers.size;
  }

  close(): void {
    this.ws.close();
  }
}
