// repred in the browser: a replica of a last-write-wins map or a doc(),
// linked to a repred peer over a WebSocket. No build step, no dependency.
//
//   var data = repred.map()                       // like Python's model()
//   repred.connect(data, 'ws://' + location.host + '/replicas/data')
//   data.on(function () { render(data.toObject()) })
//   data.set('colour', 'blue')
//
// The protocol is scuttlebutt's, as repred speaks it with JS peers: a
// digest {"id","clock"}, each source's entries newer than the other's
// clock as lines [change, ts, source], "SYNC", then live entries. Stamps
// are a hybrid logical clock with repred's rules (a thousandth of a
// millisecond above the newest stamp seen when the wall clock lags;
// remote stamps move it at most a minute ahead; entries stamped more than
// five minutes ahead wait for a later link), and ties between writes to
// one key are broken by (ts, source) exactly as repred does.
(function (global) {
  'use strict'

  var MAX_DRIFT_MS = 5 * 60 * 1000
  var MAX_AHEAD_MS = 60 * 1000

  function randomId () {
    var bytes = new Uint8Array(12)
    global.crypto.getRandomValues(bytes)
    var text = ''
    for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i])
    return global.btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
  }

  function nextStamp (ts) {
    var next = ts + 0.001
    if (next <= ts) next = ts * (1 + Number.EPSILON)
    return next
  }

  function newer (a, b) { // stamps [ts, source]: is a after b?
    if (b === undefined) return true
    if (a[0] !== b[0]) return a[0] > b[0]
    return a[1] > b[1]
  }

  // A replica: per-key last-write-wins entries, a clock per source, and
  // the history kept (the newest entry per key) for peers that lack it.
  function Replica (keyOf, reduce, initial) {
    this.id = randomId()
    this.state = initial
    this.clock = {}
    this.entries = {} // key -> [change, ts, source]
    this._keyOf = keyOf
    this._reduce = reduce
    this._last = 0
    this._listeners = []
    this._links = []
  }

  Replica.prototype.on = function (listener) { this._listeners.push(listener) }

  Replica.prototype._write = function (change) {
    var now = Date.now()
    var ts = now > this._last ? now : nextStamp(this._last)
    var held = this.entries[this._keyOf(change)]
    // A write held for this key stamped ahead of this clock (a peer's clock
    // runs fast): this one comes after it, so it is stamped above it.
    if (held && !newer([ts, this.id], [held[1], held[2]])) ts = nextStamp(held[1])
    this._last = ts
    this._record(change, ts, this.id)
    for (var i = 0; i < this._links.length; i++) this._links[i]._send(change, ts, this.id)
    return change
  }

  Replica.prototype._record = function (change, ts, source) {
    var key = this._keyOf(change)
    var held = this.entries[key]
    if (this.clock[source] === undefined || ts > this.clock[source]) this.clock[source] = ts
    if (held && !newer([ts, source], [held[1], held[2]])) return false // dominated
    this.entries[key] = [change, ts, source]
    this._reduce(this.state, change)
    for (var i = 0; i < this._listeners.length; i++) this._listeners[i](change, ts, source)
    return true
  }

  // An entry from a peer; false if it must wait (stamped too far ahead).
  Replica.prototype._apply = function (change, ts, source) {
    if (this.clock[source] !== undefined && ts <= this.clock[source]) return true
    var now = Date.now()
    if (ts > now + MAX_DRIFT_MS) return false
    this._last = Math.max(this._last, Math.min(ts, now + MAX_AHEAD_MS))
    this._record(change, ts, source)
    return true
  }

  // Every entry newer than clock, source by source, in stamp order.
  Replica.prototype._since = function (clock) {
    var out = []
    for (var key in this.entries) {
      var e = this.entries[key]
      if (clock[e[2]] === undefined || e[1] > clock[e[2]]) out.push(e)
    }
    out.sort(function (a, b) {
      if (a[2] !== b[2]) return a[2] < b[2] ? -1 : 1
      return a[1] - b[1]
    })
    return out
  }

  // -- the last-write-wins map (Python's model(), JS scuttlebutt/model) ----

  function map () {
    var r = new Replica(
      function (change) { return change[0] },
      function (state, change) {
        if (change[1] === null) delete state[change[0]]
        else state[change[0]] = change[1]
      },
      {}
    )
    r.set = function (key, value) { return r._write([key, value === undefined ? null : value]) }
    r.delete = function (key) { return r._write([key, null]) }
    r.get = function (key) { return r.state[key] }
    r.toObject = function () { return Object.assign({}, r.state) }
    r.writer = function (key) { // [ts, source] of the write that holds key
      var e = r.entries[key]
      return e ? [e[1], e[2]] : null
    }
    return r
  }

  // -- doc(): rows of last-write-wins fields, sets and seqs of rows --------

  var DELETED = '__deleted'
  var ORDER = '_order'
  var DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'

  function between (lo, hi) { // a key with lo < key < hi (Python's between)
    lo = lo || ''
    var out = ''
    for (var i = 0; ; i++) {
      var a = i < lo.length ? DIGITS.indexOf(lo[i]) : 0
      var b = hi !== null && hi !== undefined && i < hi.length ? DIGITS.indexOf(hi[i]) : DIGITS.length
      if (b - a > 1) { out += DIGITS[(a + b) >> 1]; break }
      out += DIGITS[a]
      if (b - a === 1) hi = null
    }
    for (var j = 0; j < 2; j++) out += DIGITS[1 + Math.floor(Math.random() * (DIGITS.length - 1))]
    return out
  }

  function doc () {
    var r = new Replica(
      function (change) { return JSON.stringify([change[0], change[1]]) },
      function (state, change) {
        var row = change[0], field = change[1], value = change[2]
        var fields = state[row] || (state[row] = {})
        if (fields[DELETED]) return
        if (field === DELETED) { state[row] = {}; state[row][DELETED] = true } else if (value === null) delete fields[field]
        else fields[field] = value
      },
      {}
    )
    r.set = function (row, fields) {
      for (var field in fields) r._write([row, field, fields[field] === undefined ? null : fields[field]])
    }
    r.remove = function (row) { r._write([row, DELETED, true]) }
    r.get = function (row) {
      var fields = r.state[row]
      if (!fields || fields[DELETED] || Object.keys(fields).length === 0) return null
      return Object.assign({id: row}, fields)
    }
    r.rows = function () {
      return Object.keys(r.state).sort().map(r.get).filter(function (x) { return x })
    }
    // An ordered live view of the rows whose `key` field equals `value`,
    // as Python's doc.create_seq(key, value).
    r.seq = function (key, value) {
      function rows () {
        return r.rows().filter(function (row) { return row[key] === value }).sort(function (a, b) {
          var x = String(a[ORDER] || ''), y = String(b[ORDER] || '')
          if (x !== y) return x < y ? -1 : 1
          return a.id < b.id ? -1 : a.id > b.id ? 1 : 0
        })
      }
      function place (id, fields, beforeId, afterId) {
        var order = rows().filter(function (row) { return row.id !== id })
        var i = order.length
        for (var k = 0; k < order.length; k++) {
          if (beforeId !== undefined && order[k].id === beforeId) { i = k; break }
          if (afterId !== undefined && order[k].id === afterId) { i = k + 1; break }
        }
        var lo = i > 0 ? String(order[i - 1][ORDER] || '') : null
        var hi = i < order.length ? String(order[i][ORDER] || '') : null
        var all = Object.assign({}, fields)
        all[key] = value
        all[ORDER] = between(lo, hi)
        r.set(id, all)
        return id
      }
      return {
        rows: rows,
        push: function (id, fields) { return place(id, fields || {}) },
        before: function (id, otherId) { return place(id, {}, otherId) },
        after: function (id, otherId) { return place(id, {}, undefined, otherId) }
      }
    }
    return r
  }

  // -- a link to a repred peer, re-opened with backoff -------------------

  function Link (replica, url, options) {
    this.replica = replica
    this.url = url
    this.online = false
    this.onstatus = (options && options.onstatus) || function () {}
    this._ws = null
    this._peerClock = null
    this._backoff = 500
    this._closed = false
    this._decoder = null
    this._buffer = ''
    replica._links.push(this)
    this._open()
  }

  Link.prototype._open = function () {
    var self = this
    if (self._closed) return
    var ws = self._ws = new global.WebSocket(self.url)
    ws.binaryType = 'arraybuffer'
    self._decoder = new global.TextDecoder('utf-8')
    self._buffer = ''
    self._peerClock = null
    self._skipped = {}
    ws.onopen = function () {
      self._backoff = 500
      ws.send(JSON.stringify({id: self.replica.id, clock: self.replica.clock}) + '\n')
    }
    ws.onmessage = function (event) {
      var text = typeof event.data === 'string'
        ? event.data
        : self._decoder.decode(new Uint8Array(event.data), {stream: true})
      self._buffer += text
      var lines = self._buffer.split('\n')
      self._buffer = lines.pop()
      for (var i = 0; i < lines.length; i++) if (lines[i]) self._line(lines[i])
    }
    ws.onclose = function () {
      self._ws = null
      if (self.online) { self.online = false; self.onstatus(false) }
      if (self._closed) return
      var wait = self._backoff
      self._backoff = Math.min(self._backoff * 2, 30000)
      global.setTimeout(function () { self._open() }, wait)
    }
    ws.onerror = function () { ws.close() }
  }

  Link.prototype._line = function (line) {
    var msg = JSON.parse(line)
    if (Array.isArray(msg)) {
      if (this._peerClock === null) return // (a peer sends its digest first)
      var change = msg[0], ts = msg[1], source = msg[2]
      if (this._skipped[source]) return
      if (!this.replica._apply(change, ts, source)) this._skipped[source] = true
      // Never sent back: the peer has it.
      if (this._peerClock[source] === undefined || ts > this._peerClock[source]) this._peerClock[source] = ts
    } else if (msg !== null && typeof msg === 'object') {
      this._peerClock = Object.assign({}, msg.clock || {})
      var history = this.replica._since(this._peerClock)
      var out = ''
      for (var i = 0; i < history.length; i++) out += JSON.stringify(history[i]) + '\n'
      out += '"SYNC"\n'
      this._ws.send(out)
      for (var j = 0; j < history.length; j++) this._peerClock[history[j][2]] = history[j][1]
    } else if (msg === 'SYNC') {
      this.online = true
      this.onstatus(true)
    } // anything else ("KEEPALIVE") says only that the link is alive
  }

  Link.prototype._send = function (change, ts, source) {
    if (!this._ws || this._ws.readyState !== 1 || this._peerClock === null) return
    this._ws.send(JSON.stringify([change, ts, source]) + '\n')
    this._peerClock[source] = ts
  }

  // Go offline (as if the network went away); reconnect() comes back.
  Link.prototype.disconnect = function () {
    this._closed = true
    if (this._ws) this._ws.close()
  }

  Link.prototype.reconnect = function () {
    this._closed = false
    if (!this._ws) this._open()
  }

  function connect (replica, url, options) { return new Link(replica, url, options) }

  global.repred = {map: map, doc: doc, connect: connect, between: between}
})(typeof window !== 'undefined' ? window : globalThis)
