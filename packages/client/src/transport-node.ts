import { registerDialers } from './transport.js';
import { tcpDialer } from './transport-tcp.js';
import { wsDialer } from './transport-ws.js';
import { httpDialer } from './transport-http.js';

/* The Node dialers, registered as the defaults by the Node entry point (index.ts). */
registerDialers({ tcp: tcpDialer, ws: wsDialer, http: httpDialer });

export { tcpDialer, wsDialer, httpDialer };
