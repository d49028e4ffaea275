// repred in the browser: a replica of a last-write-wins map or a doc(),
// linked to a repred peer over a WebSocket. No build step, no dependency.
//
//   var data = repred.map({outbox: 'data'})       // like Python's model()
//   repred.connect(data, 'ws://' + location.host + '/replicas/data')
//   data.on(function () { render(data.toObject()) })
//   data.onrefused(function (change, why) { say(why) })
//   data.set('colour', 'blue')                    // throws if peers would refuse it
//
// The protocol is scuttlebutt's, as repred speaks it with JS peers: a
// digest {"id","clock"}, each source's entries newer than the other's
// clock as lines [change, ts, source], "SYNC", then live entries. Stamps
// are a hybrid logical clock with repred's rules (a thousandth of a
// millisecond above the newest stamp seen when the wall clock lags;
// remote stamps move it at most a minute ahead; entries stamped more than
// five minutes ahead wait for a later link), and ties between writes to
// one key are broken by (ts, source) exactly as repred does.
//
// A write is checked before anything changes, by the rules of repred's
// check_value and line limit (repred/_wire.py), and refused with an Error
// if a peer would refuse it. With {outbox: name}, a write is kept in
// localStorage before it is sent, until a digest of the peer's covers it,
// so a reload or a closed tab loses nothing: the next page of this origin
// sends it. A write the peer refuses (a read-only peer says so in its
// digest; a peer that cuts the link on it twice and never takes it) is
// taken back and reported to onrefused listeners.
(function (global) {
  'use strict'

  var MAX_DRIFT_MS = 5 * 60 * 1000
  var MAX_AHEAD_MS = 60 * 1000
  // repred's limits (repred/_wire.py): DEFAULT_MAX_LINE_BYTES, MAX_DEPTH,
  // MAX_SAFE_INTEGER.
  var MAX_LINE_BYTES = 1 << 20
  var MAX_DEPTH = 128
  var MAX_SAFE_INTEGER = 9007199254740991
  // Links that the peer closes after a write that it then lacks, before
  // the write counts as refused (once could be a network's doing).
  var STRIKES = 2
  var LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?:^|[^\ud800-\udbff])[\udc00-\udfff]/

  // Keys come from peers: held in objects without a prototype, so that no
  // key ("__proto__", "toString") means anything but itself.
  function dict () { return Object.create(null) }

  function copyDict (from) {
    var out = dict()
    if (from !== null && typeof from === 'object') {
      var keys = Object.keys(from)
      for (var i = 0; i < keys.length; i++) out[keys[i]] = from[keys[i]]
    }
    return out
  }

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
    if (b === undefined || b === null) return true
    if (a[0] !== b[0]) return a[0] > b[0]
    return a[1] > b[1]
  }

  function stampKey (entry) { return entry[2] + ' ' + entry[1] }

  // -- what a value may be: repred's check_value --------------------------

  function Refused (problem) { this.problem = problem; this.path = [] }

  function checkInner (value, depth) {
    var kind = typeof value
    if (value === null || kind === 'boolean') return
    if (kind === 'string') {
      if (LONE_SURROGATE.test(value)) throw new Refused('is a string with a lone surrogate, not UTF-8')
      return
    }
    if (kind === 'number') {
      if (!isFinite(value)) throw new Refused('is ' + value + ', which JSON cannot hold')
      // Written without a point or an exponent, peers read it as an integer.
      if (Math.abs(value) > MAX_SAFE_INTEGER && /^-?\d+$/.test(JSON.stringify(value))) {
        throw new Refused('is an integer beyond +-2**53-1, which JSON peers cannot hold exactly (send it as a string)')
      }
      return
    }
    if (kind !== 'object') throw new Refused('is a ' + kind + ', not a JSON value')
    if (depth >= MAX_DEPTH) throw new Refused('is nested deeper than ' + MAX_DEPTH + ' levels')
    if (Array.isArray(value)) {
      for (var i = 0; i < value.length; i++) {
        if (!(i in value)) throw new Refused('has a hole at [' + i + '], not a JSON value')
        checkPart(value[i], depth, '[' + i + ']')
      }
      return
    }
    var proto = Object.getPrototypeOf(value)
    if (proto !== Object.prototype && proto !== null) {
      var name = value.constructor && value.constructor.name
      throw new Refused('is a ' + (name || 'object') + ', not a JSON value (convert it before writing it)')
    }
    var keys = Object.keys(value)
    for (var k = 0; k < keys.length; k++) {
      checkInner(keys[k], depth + 1)
      checkPart(value[keys[k]], depth, '[' + JSON.stringify(keys[k]) + ']')
    }
  }

  function checkPart (item, depth, step) {
    try {
      checkInner(item, depth + 1)
    } catch (refused) {
      if (refused instanceof Refused) refused.path.push(step)
      throw refused
    }
  }

  // Refuse (TypeError, naming the offending part) anything that would not
  // come back from JSON exactly as it is. depth: how deep in its change
  // the value sits (a map's value is in [key, value]: 1).
  function checkValue (value, what, depth) {
    try {
      checkInner(value, depth || 0)
    } catch (refused) {
      if (!(refused instanceof Refused)) throw refused
      var path = what + refused.path.reverse().join('')
      if (path.length > 80) path = path.slice(0, 50) + '...' + path.slice(-25)
      throw new TypeError(path + ' ' + refused.problem)
    }
  }

  function checkKey (key, what) {
    if (typeof key !== 'string') throw new TypeError(what + ' must be a string, not ' + typeof key)
    checkValue(key, what)
  }

  var encoder = new global.TextEncoder()

  // An entry's line in UTF-8 bytes, its line break counted (as update() does).
  function lineBytes (entry) { return encoder.encode(JSON.stringify(entry)).length + 1 }

  // -- writes kept in localStorage until the peer has them ------------------

  function Outbox (name) {
    this.prefix = 'repred.outbox.' + name + '.'
    try {
      this.storage = global.localStorage || null
    } catch (e) {
      this.storage = null // (storage denied to this page: writes live in memory)
    }
  }

  // Raises (the storage is full) before anything is written.
  Outbox.prototype.add = function (entries) {
    if (!this.storage) return
    var added = []
    try {
      for (var i = 0; i < entries.length; i++) {
        this.storage.setItem(this.prefix + stampKey(entries[i]), JSON.stringify(entries[i]))
        added.push(entries[i])
      }
    } catch (e) {
      for (var j = 0; j < added.length; j++) this.remove(stampKey(added[j]))
      throw new Error('this browser cannot keep the write (' + e.message + ')')
    }
  }

  Outbox.prototype.remove = function (key) {
    if (this.storage) {
      try { this.storage.removeItem(this.prefix + key) } catch (e) {}
    }
  }

  Outbox.prototype.load = function () {
    var out = []
    if (!this.storage) return out
    for (var i = 0; i < this.storage.length; i++) {
      var name = this.storage.key(i)
      if (name === null || name.indexOf(this.prefix) !== 0) continue
      try {
        var entry = JSON.parse(this.storage.getItem(name))
        if (Array.isArray(entry) && entry.length === 3 && typeof entry[1] === 'number' &&
            typeof entry[2] === 'string' && name === this.prefix + stampKey(entry)) {
          out.push(entry)
          continue
        }
      } catch (e) {}
      // (not an entry this client wrote: left alone)
    }
    return out.sort(function (a, b) { return a[1] - b[1] })
  }

  // -- a replica ------------------------------------------------------------

  // Per-key last-write-wins entries, a clock per source, and the history
  // kept (the newest entry per key) for peers that lack it.
  function Replica (keyOf, reduce, initial, options) {
    this.id = randomId()
    this._initial = initial
    this.state = initial()
    this.clock = dict()
    this.entries = dict() // key -> [change, ts, source]
    //: The longest line the peer takes (the limit its digest announced).
    this.maxLine = MAX_LINE_BYTES
    this._keyOf = keyOf
    this._reduce = reduce
    this._last = 0
    this._listeners = []
    this._refusedListeners = []
    this._links = []
    this._pending = dict() // stamp key -> a write of ours the peer may lack
    this._base = dict() // key -> what held it before our pending writes (or null)
    this._outbox = options && options.outbox ? new Outbox(options.outbox) : null
    if (this._outbox) this._adopt(this._outbox.load())
  }

  Replica.prototype.on = function (listener) { this._listeners.push(listener) }

  // listener(change, reason): a write of ours the peer refused, taken back.
  Replica.prototype.onrefused = function (listener) { this._refusedListeners.push(listener) }

  // Writes not yet known to be held by the peer: [[change, ts, source], ...].
  Replica.prototype.pending = function () {
    var self = this
    return Object.keys(this._pending).map(function (k) { return self._pending[k] })
  }

  Replica.prototype._notify = function (change, ts, source) {
    for (var i = 0; i < this._listeners.length; i++) this._listeners[i](change, ts, source)
  }

  // Why the linked peers refuse this replica's writes, if they all said so.
  Replica.prototype._refusal = function () {
    var why = null
    for (var i = 0; i < this._links.length; i++) {
      if (!this._links[i].refuses) return null
      why = this._links[i].refuses
    }
    return why
  }

  // Stamp, check and keep checked changes, then record and send them: all
  // of them or (raising) none.
  Replica.prototype._write = function (changes) {
    var why = this._refusal()
    if (why) throw new Error(why)
    var now = Date.now()
    var last = this._last
    var entries = []
    for (var i = 0; i < changes.length; i++) {
      var ts = now > last ? now : nextStamp(last)
      var held = this.entries[this._keyOf(changes[i])]
      // A write held for this key stamped ahead of this clock (a peer's
      // clock runs fast): this one comes after it, so it is stamped above it.
      if (held && !newer([ts, this.id], [held[1], held[2]])) ts = nextStamp(held[1])
      var entry = [changes[i], ts, this.id]
      var size = lineBytes(entry)
      if (size > this.maxLine) {
        throw new RangeError('the entry would be ' + size + ' bytes, over the ' + this.maxLine +
          ' byte line limit peers apply; split the value')
      }
      entries.push(entry)
      last = ts
    }
    if (this._outbox) this._outbox.add(entries)
    this._last = last
    for (var j = 0; j < entries.length; j++) {
      this._hold(entries[j])
      this._record(entries[j])
      for (var k = 0; k < this._links.length; k++) this._links[k]._send(entries[j])
    }
  }

  // A write of ours the peer may lack: remember what held its key before.
  Replica.prototype._hold = function (entry) {
    var key = this._keyOf(entry[0])
    if (!(key in this._base)) this._base[key] = this.entries[key] || null
    this._pending[stampKey(entry)] = entry
  }

  Replica.prototype._record = function (entry) {
    var key = this._keyOf(entry[0])
    var held = this.entries[key]
    var source = entry[2]
    if (this.clock[source] === undefined || entry[1] > this.clock[source]) this.clock[source] = entry[1]
    if (held && !newer([entry[1], source], [held[1], held[2]])) { // dominated
      var base = this._base[key]
      if (key in this._base && !(stampKey(entry) in this._pending) &&
          newer([entry[1], source], base && [base[1], base[2]])) this._base[key] = entry
      return false
    }
    if (held && stampKey(held) in this._pending) this._drop(stampKey(held)) // superseded
    // A peer's write over ours: nothing of ours is pending on the key now.
    if (!(stampKey(entry) in this._pending)) delete this._base[key]
    this.entries[key] = entry
    this._reduce(this.state, entry[0])
    this._notify(entry[0], entry[1], source)
    return true
  }

  // An entry from a peer; false if it must wait (stamped too far ahead).
  Replica.prototype._apply = function (change, ts, source) {
    if (this.clock[source] !== undefined && ts <= this.clock[source]) return true
    var now = Date.now()
    if (ts > now + MAX_DRIFT_MS) return false
    this._last = Math.max(this._last, Math.min(ts, now + MAX_AHEAD_MS))
    this._record([change, ts, source])
    return true
  }

  // Writes kept by earlier pages of this origin, sent again like ours.
  Replica.prototype._adopt = function (kept) {
    for (var i = 0; i < kept.length; i++) {
      var entry = kept[i]
      var key
      try {
        key = this._keyOf(entry[0])
        checkValue(entry[0], 'a kept write')
      } catch (e) {
        continue
      }
      var held = this.entries[key]
      if (held && !newer([entry[1], entry[2]], [held[1], held[2]])) {
        this._outbox.remove(stampKey(entry)) // superseded by a later kept write
        continue
      }
      this._last = Math.max(this._last, Math.min(entry[1], Date.now() + MAX_AHEAD_MS))
      this._hold(entry)
      this._record(entry)
    }
  }

  Replica.prototype._drop = function (key) {
    delete this._pending[key]
    if (this._outbox) this._outbox.remove(key)
  }

  // Forget what held the keys that no pending write is left on.
  Replica.prototype._settle = function () {
    var live = dict()
    for (var k in this._pending) live[this._keyOf(this._pending[k][0])] = true
    for (var key in this._base) if (!live[key]) delete this._base[key]
  }

  // A digest of the peer's: the writes its clock covers, it holds.
  Replica.prototype._confirm = function (clock) {
    for (var k in this._pending) {
      var e = this._pending[k]
      if (clock[e[2]] !== undefined && e[1] <= clock[e[2]]) this._drop(k)
    }
    this._settle()
  }

  // Take back pending writes the peer refuses: each key goes back to what
  // held it before them.
  Replica.prototype._refuse = function (refused, reason) {
    if (!refused.length) return
    var undone = []
    for (var i = 0; i < refused.length; i++) {
      var entry = refused[i]
      var key = this._keyOf(entry[0])
      var held = this.entries[key]
      this._drop(stampKey(entry))
      if (held && held[1] === entry[1] && held[2] === entry[2]) {
        var base = this._base[key]
        if (base) this.entries[key] = base
        else delete this.entries[key]
        undone.push(base || [entry[0].slice(0, -1).concat([null]), entry[1], entry[2]])
      }
    }
    this._settle()
    this.state = this._initial()
    for (var k in this.entries) this._reduce(this.state, this.entries[k][0])
    for (var j = 0; j < undone.length; j++) this._notify(undone[j][0], undone[j][1], undone[j][2])
    for (var n = 0; n < refused.length; n++) {
      for (var m = 0; m < this._refusedListeners.length; m++) this._refusedListeners[m](refused[n][0], reason)
    }
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

  // A plain object of the state (keys defined, never assigned: "__proto__"
  // is a key like any other).
  function plainCopy (from) {
    var out = {}
    var keys = Object.keys(from)
    for (var i = 0; i < keys.length; i++) {
      Object.defineProperty(out, keys[i], {value: from[keys[i]], enumerable: true, writable: true, configurable: true})
    }
    return out
  }

  // -- the last-write-wins map (Python's model(), JS scuttlebutt/model) ----

  function map (options) {
    var r = new Replica(
      function (change) { return change[0] },
      function (state, change) {
        if (change[1] === null) delete state[change[0]]
        else state[change[0]] = change[1]
      },
      dict,
      options
    )
    r.set = function (key, value) {
      if (value === undefined) value = null
      checkKey(key, 'the key')
      checkValue(value, 'the value of ' + JSON.stringify(key), 1)
      var change = [key, value]
      r._write([change])
      return change
    }
    r.delete = function (key) { return r.set(key, null) }
    r.get = function (key) { return r.state[key] }
    r.toObject = function () { return plainCopy(r.state) }
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

  function doc (options) {
    var r = new Replica(
      function (change) { return JSON.stringify([change[0], change[1]]) },
      function (state, change) {
        var row = change[0], field = change[1], value = change[2]
        var fields = state[row] || (state[row] = dict())
        if (fields[DELETED]) return
        if (field === DELETED) { state[row] = dict(); state[row][DELETED] = true } else if (value === null) delete fields[field]
        else fields[field] = value
      },
      dict,
      options
    )
    // Every field is checked before any is written (Python's doc.set).
    r.set = function (row, fields) {
      checkKey(row, 'the row id')
      var changes = []
      var names = Object.keys(fields)
      for (var i = 0; i < names.length; i++) {
        var field = names[i], value = fields[field] === undefined ? null : fields[field]
        if (field === DELETED) throw new TypeError('use remove() to delete a row, not ' + DELETED)
        checkValue(field, 'the field name')
        checkValue(value, 'the field ' + JSON.stringify(field), 1)
        changes.push([row, field, value])
      }
      r._write(changes)
    }
    r.remove = function (row) {
      checkKey(row, 'the row id')
      r._write([[row, DELETED, true]])
    }
    r.get = function (row) {
      var fields = r.state[row]
      if (!fields || fields[DELETED] || Object.keys(fields).length === 0) return null
      var out = plainCopy(fields)
      out.id = row
      return out
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
        var all = plainCopy(fields)
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
    //: Why the peer refuses this replica's writes, once its digest said so.
    this.refuses = null
    //: WebSockets opened so far.
    this.opened = 0
    this.onstatus = (options && options.onstatus) || function () {}
    this._ws = null
    this._peerClock = null
    this._peerId = null
    this._backoff = 500
    this._closed = false
    this._decoder = null
    this._buffer = ''
    this._sent = dict() // stamp keys of pending writes sent on this link
    this._suspects = null // those sent on a link the peer then closed
    this._strikes = dict()
    replica._links.push(this)
    this._open()
  }

  Link.prototype._open = function () {
    var self = this
    if (self._closed) return
    var ws = self._ws = new global.WebSocket(self.url)
    self.opened++
    ws.binaryType = 'arraybuffer'
    self._decoder = new global.TextDecoder('utf-8')
    self._buffer = ''
    self._peerClock = null
    self._skipped = dict()
    self._sent = dict()
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
    ws.onclose = function (event) {
      self._ws = null
      // The peer ended a link our writes went out on: if its next digest
      // lacks them, it may have refused them.
      self._suspects = event.wasClean && !self._closed ? self._sent : null
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
      this._digest(msg)
    } else if (msg === 'SYNC') {
      this.online = true
      this.onstatus(true)
    } // anything else ("KEEPALIVE") says only that the link is alive
  }

  Link.prototype._digest = function (msg) {
    var replica = this.replica
    var clock = copyDict(msg.clock)
    this._peerClock = copyDict(clock)
    if (typeof msg.max_line === 'number' && msg.max_line >= 64) replica.maxLine = msg.max_line
    this.refuses = msg.receive === 0 ? 'the peer is read-only: it takes no writes' : null
    var samePeer = this._peerId !== null && this._peerId === msg.id
    this._peerId = msg.id
    replica._confirm(clock)
    var pending = replica.pending()
    if (this.refuses) {
      replica._refuse(pending, this.refuses)
    } else {
      replica._refuse(pending.filter(function (e) { return lineBytes(e) > replica.maxLine }),
        "over the peer's line limit")
      replica._refuse(this._struckOut(samePeer), 'the peer ends the link on it and never takes it')
    }
    this._suspects = null
    var history = replica._since(this._peerClock)
    var out = ''
    for (var i = 0; i < history.length; i++) out += JSON.stringify(history[i]) + '\n'
    out += '"SYNC"\n'
    this._ws.send(out)
    for (var j = 0; j < history.length; j++) this._sending(history[j])
  }

  // The pending writes this peer, once more, ended the link on and lacks.
  Link.prototype._struckOut = function (samePeer) {
    var out = []
    var strikes = dict()
    var pending = this.replica._pending
    if (samePeer && this._suspects) {
      for (var key in this._suspects) {
        if (!(key in pending)) continue
        strikes[key] = (this._strikes[key] || 0) + 1
        if (strikes[key] >= STRIKES) out.push(pending[key])
      }
    }
    this._strikes = strikes
    return out
  }

  Link.prototype._sending = function (entry) {
    this._peerClock[entry[2]] = entry[1]
    var key = stampKey(entry)
    if (key in this.replica._pending) this._sent[key] = true
  }

  Link.prototype._send = function (entry) {
    if (!this._ws || this._ws.readyState !== 1 || this._peerClock === null) return
    this._ws.send(JSON.stringify(entry) + '\n')
    this._sending(entry)
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

  global.repred = {map: map, doc: doc, connect: connect, between: between, checkValue: checkValue}
})(typeof window !== 'undefined' ? window : globalThis)
