// The demo page's logic: plain JavaScript on top of the browser SDK bundle.
import { createBrowserClient, generateKeyPair, keyPairFromSecret, toBase64Url, fromBase64Url } from '/gravitas.js';

const $ = (id) => document.getElementById(id);
const NAMES = { ws: 'WebSocket', http: 'chunked HTTP' };
let client;

function setState(state, text) {
  $('state').dataset.state = state;
  $('state').textContent = text ?? state;
}

function note(text) {
  const li = document.createElement('li');
  li.className = 'note';
  li.textContent = text;
  $('log').append(li);
  li.scrollIntoView({ block: 'end' });
}

function bubble(dir, who, text) {
  const li = document.createElement('li');
  li.className = `msg ${dir}`;
  li.dataset.from = who;
  const w = document.createElement('span');
  w.className = 'who';
  w.textContent = who;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  li.append(w, body);
  $('log').append(li);
  li.scrollIntoView({ block: 'end' });
  return li;
}

/** One device per user per browser: its key and id stay in localStorage (dev mode). */
function deviceFor(user) {
  const slot = `gravitas.demo.${user}`;
  const saved = JSON.parse(localStorage.getItem(slot) ?? 'null');
  if (saved) return { device: saved.device, identity: keyPairFromSecret(fromBase64Url(saved.secretKey, 32)) };
  const identity = generateKeyPair();
  const device = `web-${toBase64Url(identity.publicKey).slice(0, 8)}`;
  localStorage.setItem(slot, JSON.stringify({ device, secretKey: toBase64Url(identity.secretKey) }));
  return { device, identity };
}

async function join(ev) {
  ev.preventDefault();
  const me = $('me').value.trim();
  const transports = $('transports').value.split(',');
  $('connect').disabled = true;
  setState('connecting');
  try {
    const config = await (await fetch('/demo/config')).json();
    const { device, identity } = deviceFor(me);
    client = createBrowserClient({
      web: config.web,
      serverPublicKey: fromBase64Url(config.serverPublicKey, 32),
      identity,
      user: me,
      device,
      registration: '',
      transports,
    });
    client.on('connected', (w) => {
      $('where').textContent = `${me} (device ${device}) on cell ${w.cell}${w.resumed ? ', resumed' : ''}.`;
    });
    // Right after 'connected', with the transport this connection uses.
    client.on('transport', (kind) => {
      $('transport').textContent = `transport: ${NAMES[kind] ?? kind}`;
      $('transport').dataset.kind = kind;
      setState('connected');
    });
    client.on('disconnected', () => setState('reconnecting'));
    client.on('error', (e) => note(`error: ${e.code ?? ''} ${e.message}`));
    client.on('message', (m) => bubble('in', m.from, m.text));
    await client.connect();
    for (const el of [$('text'), $('send')]) el.disabled = false;
    for (const el of [$('me'), $('peer'), $('transports')]) el.disabled = true;
    $('text').focus();
  } catch (err) {
    setState('failed', `failed: ${err.code ?? err.message}`);
    note(`could not connect: ${err.message}`);
    $('connect').disabled = false;
  }
}

function send(ev) {
  ev.preventDefault();
  const text = $('text').value.trim();
  const peer = $('peer').value.trim();
  if (!text || !client) return;
  $('text').value = '';
  const li = bubble('out', `to ${peer}`, text);
  const status = document.createElement('span');
  status.className = 'status';
  status.textContent = '…';
  li.append(status);
  client.send(peer, text).then(
    (r) => (status.textContent = r.status === 'delivered' ? '✓✓ delivered' : '✓ stored'),
    (e) => (status.textContent = `✗ ${e.code ?? e.message}`),
  );
}

const preset = new URLSearchParams(location.search);
for (const k of ['me', 'peer', 'transports']) if (preset.has(k)) $(k).value = preset.get(k);
$('join').addEventListener('submit', join);
$('compose').addEventListener('submit', send);
