// A full sync of N distinct keys with JS scuttlebutt, in the same shape as
// benchmarks/full_sync.py runs repred, so the two figures compare:
//
// - two processes joined by TCP on 127.0.0.1 (as the scuttlebutt README
//   pipes them): this process fills a Model with N keys ("key" + i -> i,
//   repred's keys and values) and serves it; a child node process with an
//   empty Model connects and syncs;
// - timed in the child, from just before it connects until its stream says
//   `synced` (both sides have sent everything they hold), as repred's child
//   times connect_tcp(live=False);
// - the child reports one JSON line, which this process prints: the keys it
//   received, the seconds, and the bytes that crossed.
//
//   node benchmarks/js_full_sync.js [N]      (default: 100000)
//
// Needs tests/js's node_modules (npm ci in tests/js).
var path = require('path')
var net = require('net')
var childProcess = require('child_process')
var Model = require(path.join(__dirname, '../tests/js/node_modules/scuttlebutt/model'))

function serve (n) {
  var model = new Model('server')
  for (var i = 0; i < n; i++) model.set('key' + i, i)
  var server = net.createServer(function (sock) {
    var stream = model.createStream()
    // The client hangs up as soon as it is synced: not an error here.
    sock.on('error', function () {})
    stream.on('error', function () { sock.destroy() })
    sock.pipe(stream).pipe(sock)
  })
  server.listen(0, '127.0.0.1', function () {
    var args = [__filename, '--client', String(server.address().port), String(n)]
    var child = childProcess.spawn(process.execPath, args, {
      stdio: ['ignore', 'pipe', 'inherit']
    })
    var out = ''
    child.stdout.on('data', function (d) { out += d })
    child.on('close', function (code) {
      process.stdout.write(out)
      process.exit(code === null ? 1 : code)
    })
  })
}

function client (port, n) {
  var model = new Model('client')
  var bytesIn = 0
  var t = process.hrtime.bigint()
  var sock = net.connect(port, '127.0.0.1')
  var stream = model.createStream()
  sock.on('data', function (d) { bytesIn += d.length })
  stream.on('synced', function () {
    var seconds = Number(process.hrtime.bigint() - t) / 1e9
    var received = Object.keys(model.toJSON()).length
    console.log(JSON.stringify({
      bench: 'full_sync_js',
      keys: n,
      received: received,
      transport: 'tcp',
      processes: 2,
      seconds: seconds,
      bytes: bytesIn + sock.bytesWritten,
      bytes_per_entry: Math.round(bytesIn / n * 100) / 100
    }))
    sock.destroy()
    process.exit(received === n ? 0 : 1)
  })
  sock.pipe(stream).pipe(sock)
}

if (process.argv[2] === '--client') client(+process.argv[3], +process.argv[4])
else serve(+(process.argv[2] || 100000))
