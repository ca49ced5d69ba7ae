/** A cell's web address as a base URL without a trailing slash: `host:port` (ready line, /demo/config) gets http://. */
export function webBase(web: string): string {
  return (/^https?:\/\//i.test(web) ? web : `http://${web}`).replace(/\/+$/, '');
}

/** `path` under a cell's web base URL (a base path, e.g. behind a proxy, is kept). */
export function webUrl(web: string, path: string): URL {
  return new URL(path, `${webBase(web)}/`);
}
