import type { CellContext } from '../core/context.js';
import type { Connections } from './connections.js';
import { TcpListener } from './tcp.js';
import { WebListener } from './web-listener.js';

/**
 * The two listeners of a cell — TCP, and WebSocket/chunked HTTP when on — on
 * `basePort + index` (or the ports an earlier generation of the cell had, so
 * its clients find it again), and the addresses the cell advertises.
 */
export class Listeners {
  private tcp: TcpListener | undefined;
  private web: WebListener | undefined;
  private tcpAddress = '';
  private webAddr = '';

  constructor(private readonly ctx: CellContext, private readonly connections: Connections, private readonly previous: { port?: number | undefined; webPort?: number | undefined }) {}

  async listen(): Promise<void> {
    const { config, index } = this.ctx;
    const { host, basePort, webBasePort } = config.listen;
    this.tcp = new TcpListener(this.connections);
    const port = await this.tcp.listen(this.previous.port ?? (basePort === 0 ? 0 : basePort + index), host);
    this.tcpAddress = `${config.advertiseHost}:${port}`;
    if (!config.web.enabled) return;
    this.web = new WebListener(this.connections);
    const webPort = await this.web.listen(this.previous.webPort ?? (webBasePort === 0 ? 0 : webBasePort + index), host);
    this.webAddr = `${config.advertiseHost}:${webPort}`;
  }

  /** host:port of the TCP listener ('' before it listens). */
  address(): string {
    return this.tcpAddress;
  }

  /** host:port of the web listener; '' when off. */
  webAddress(): string {
    return this.webAddr;
  }

  get listening(): boolean {
    return (this.tcp?.listening ?? false) && (!this.web || this.web.listening);
  }

  close(): void {
    this.tcp?.close();
    this.web?.close();
  }
}
