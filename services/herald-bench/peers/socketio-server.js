// A Socket.IO server doing Herald's delivery job, with connection state recovery on (its
// closest feature to Herald's resume: packets missed while disconnected are kept in memory for
// maxDisconnectionDuration and replayed on reconnect): node socketio-server.js PORT
'use strict';
const { Server } = require('socket.io');
const { parseQuery, server } = require('./common');

const port = Number(process.argv[2]);
let io;
const http = server((m) => {
  if (m.everyone) {
    io.emit('n', m.message);
    return -1;
  }
  const rooms = [...(m.users || []).map((u) => 'u:' + u), ...(m.groups || []).map((g) => 'g:' + g)];
  if (rooms.length) io.to(rooms).emit('n', m.message);
  return -1; // Socket.IO does not say how many sockets a room emit reached
});

io = new Server(http, {
  transports: ['websocket'],
  serveClient: false,
  maxHttpBufferSize: 64 * 1024,
  connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true },
});
io.on('connection', (socket) => {
  if (socket.recovered) return; // rooms and missed packets restored by Socket.IO
  const { user, groups } = parseQuery(socket.request.url);
  socket.join('u:' + user);
  for (const g of groups) socket.join('g:' + g);
});

http.listen(port, '127.0.0.1', () => console.log(`socket.io peer on ${port}`));
