// An unmodified JS scuttlebutt Model over websocket-stream, driven by the
// WebSocket interop test.
//   node ws_peer.js ID URL   -> replicates with the repred peer at URL
// Reads commands as JSON lines on stdin: {"set":[key,value]}, {"dump":true};
// prints events as JSON lines: synced, update, dump.
var Model = require('scuttlebutt/model')
var websocket = require('websocket-stream')
var readline = require('readline')

var id = process.argv[2], url = process.argv[3]
var model = new Model(id)

function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

model.on('update', function (change, ts, source) {
  out({event: 'update', key: change[0], value: change[1], ts: ts, source: source})
})

var socket = websocket(url)
var stream = model.createStream()
stream.on('error', function (err) { out({event: 'error', message: String(err)}) })
stream.on('synced', function () { out({event: 'synced'}) })
socket.on('error', function (err) { out({event: 'error', message: String(err)}) })
socket.pipe(stream).pipe(socket)

readline.createInterface({input: process.stdin}).on('line', function (line) {
  var cmd = JSON.parse(line)
  if (cmd.set) model.set(cmd.set[0], cmd.set[1])
  if (cmd.dump) out({event: 'dump', state: model.toJSON()})
}).on('close', function () { process.exit(0) })
