// What both peer servers share: user/group bookkeeping and the publish endpoint.
// A publish names users, groups or everyone, like a Herald notification request, and carries
// one message. Nothing is stored: these peers keep no log and no inbox (unlike Herald).
'use strict';
const http = require('http');

const MAX_BODY = 1 << 20; // bounded request bodies, as Herald's

function parseQuery(url) {
  const q = new URL(url, 'http://peer').searchParams;
  return { user: q.get('user') || '', groups: (q.get('groups') || '').split(',').filter(Boolean) };
}

function server(onPublish) {
  return http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end('{"status":"ok"}');
    }
    if (req.method !== 'POST' || req.url !== '/publish') {
      res.writeHead(404, { 'content-type': 'application/json' });
      return res.end('{"error":"not found"}');
    }
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => {
      body += c;
      if (body.length > MAX_BODY) req.destroy();
    });
    req.on('end', () => {
      let m;
      try {
        m = JSON.parse(body);
      } catch (e) {
        res.writeHead(400, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ error: 'bad JSON: ' + e.message }));
      }
      const sent = onPublish(m);
      res.writeHead(202, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ sent }));
    });
  });
}

module.exports = { parseQuery, server };
