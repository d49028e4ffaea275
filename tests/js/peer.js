// An unmodified JS scuttlebutt Model peer, driven by the interop test.
//   node peer.js ID listen          -> prints {"event":"listening","port":N}
//   node peer.js ID connect PORT
// Reads commands as JSON lines on stdin: {"set":[key,value]}, {"dump":true};
// prints events as JSON lines: synced, update, dump.
var Model = require('scuttlebutt/model')
var net = require('net')
var readline = require('readline')

var id = process.argv[2], mode = process.argv[3], port = +process.argv[4]
var model = new Model(id)

function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

model.on('update', function (change, ts, source) {
  out({event: 'update', key: change[0], value: change[1], ts: ts, source: source})
})

function attach (socket) {
  var stream = model.createStream()
  stream.on('error', function (err) {
    out({event: 'error', message: String(err)})
    socket.destroy()
  })
  stream.on('synced', function () { out({event: 'synced'}) })
  socket.on('error', function () {})
  socket.pipe(stream).pipe(socket)
}

if (mode === 'listen') {
  var server = net.createServer(attach)
  server.listen(0, '127.0.0.1', function () {
    out({event: 'listening', port: server.address().port})
  })
} else {
  attach(net.connect(port, '127.0.0.1'))
}

readline.createInterface({input: process.stdin}).on('line', function (line) {
  var cmd = JSON.parse(line)
  if (cmd.set) model.set(cmd.set[0], cmd.set[1])
  if (cmd.dump) out({event: 'dump', state: model.toJSON()})
}).on('close', function () { process.exit(0) })
