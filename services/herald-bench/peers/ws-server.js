// A bare `ws` server doing Herald's delivery job in memory: node ws-server.js PORT
'use strict';
const { WebSocketServer } = require('ws');
const { parseQuery, server } = require('./common');

const port = Number(process.argv[2]);
const sockets = new Map(); // user -> Set<ws>
const members = new Map(); // group -> Set<user>
const all = new Set();

const http = server((m) => {
  const text = JSON.stringify(m.message);
  let sent = 0;
  const send = (ws) => {
    ws.send(text);
    sent++;
  };
  if (m.everyone) {
    all.forEach(send);
    return sent;
  }
  const users = new Set(m.users || []);
  for (const g of m.groups || []) for (const u of members.get(g) || []) users.add(u);
  for (const u of users) for (const ws of sockets.get(u) || []) send(ws);
  return sent;
});

const wss = new WebSocketServer({ server: http, path: '/ws', maxPayload: 64 * 1024 });
wss.on('connection', (ws, req) => {
  const { user, groups } = parseQuery(req.url);
  if (!sockets.has(user)) sockets.set(user, new Set());
  sockets.get(user).add(ws);
  all.add(ws);
  for (const g of groups) {
    if (!members.has(g)) members.set(g, new Set());
    members.get(g).add(user);
  }
  ws.on('close', () => {
    sockets.get(user).delete(ws);
    all.delete(ws);
  });
  ws.on('error', () => {});
});

http.listen(port, '127.0.0.1', () => console.log(`ws peer on ${port}`));
