// The same full sync with JS scuttlebutt, for a side-by-side figure.
//   node benchmarks/js_full_sync.js [N]   (needs tests/js/node_modules)
var path = require('path')
var Model = require(path.join(__dirname, '../tests/js/node_modules/scuttlebutt/model'))
var net = require('net')
var n = +(process.argv[2] || 100000)

var a = new Model('server')
for (var i = 0; i < n; i++) a.set('key' + i, i)
var server = net.createServer(function (sock) {
  var s = a.createStream()
  sock.pipe(s).pipe(sock)
})
server.listen(0, '127.0.0.1', function () {
  var b = new Model('client')
  var bytes = 0
  var t = process.hrtime.bigint()
  var sock = net.connect(server.address().port, '127.0.0.1')
  var s = b.createStream()
  sock.on('data', function (d) { bytes += d.length })
  s.on('synced', function () {
    var dt = Number(process.hrtime.bigint() - t) / 1e9
    console.log(JSON.stringify({bench: 'full_sync_js', keys: n, seconds: dt, bytes_in: bytes}))
    process.exit(0)
  })
  sock.pipe(s).pipe(sock)
})
