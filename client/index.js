// The browser client of fastify-event-sources: a standard ES module with no dependency and no build step.

const DEFAULT_STORAGE_PREFIX = 'fastify-event-sources:'
const CLOSED = 2

export function connect (url, options = {}) {
  return new Connection(String(url), options)
}

class Connection {
  #source
  #url
  #parse
  #storage
  #storageKey
  #lastEventId
  #closeReason
  #names = new Map()
  #tracker
  #closers = new Set()
  #openers = new Set()
  #errorHandlers = new Set()
  #parsed = new WeakMap()

  constructor (url, options) {
    const EventSourceClass = options.EventSource ?? globalThis.EventSource
    if (typeof EventSourceClass !== 'function') {
      throw new TypeError('fastify-event-sources/client: no EventSource here; pass one as options.EventSource')
    }
    this.#parse = parseOption(options.parse)
    this.#storage = options.storage === false ? undefined : (options.storage ?? sessionStorageOrUndefined())
    this.#storageKey = options.storageKey ?? DEFAULT_STORAGE_PREFIX + url
    this.#lastEventId = options.lastEventId ?? this.#read() ?? ''

    const query = options.lastEventIdQuery === undefined ? 'lastEventId' : options.lastEventIdQuery
    this.#url = query !== false && this.#lastEventId !== '' ? withQuery(url, query, this.#lastEventId) : url
    this.#source = new EventSourceClass(this.#url, { withCredentials: options.withCredentials === true })

    this.#tracker = event => {
      if (event.lastEventId === '' || event.lastEventId === this.#lastEventId) return
      this.#lastEventId = event.lastEventId
      this.#write(event.lastEventId)
    }
    // The reset event carries the newest id the server holds: the resume point even if the page ignores it.
    this.#track('reset', +1)
    const endEvent = options.endEvent === undefined ? 'end' : options.endEvent
    const terminateEvent = options.terminateEvent ?? false
    // Registered before any handler, so every handler sees the new lastEventId; close() does not stop the
    // dispatch under way, so the handlers of the closing event still run.
    if (endEvent !== false) this.#closeOn(endEvent, 'end')
    if (terminateEvent !== false) this.#closeOn(terminateEvent, 'terminate')

    this.#source.addEventListener('open', () => callEach(this.#openers))
    this.#source.addEventListener('error', event => {
      callEach(this.#errorHandlers, event)
      // The browser gave up (a 204, another status, a wrong content type): it never reconnects now.
      if (this.#source.readyState === CLOSED) this.#finish('failed')
    })
  }

  get url () {
    return this.#url
  }

  get readyState () {
    return this.#source.readyState
  }

  get lastEventId () {
    return this.#lastEventId
  }

  get closeReason () {
    return this.#closeReason
  }

  get eventSource () {
    return this.#source
  }

  on (name, handler) {
    if (typeof name !== 'string' || name === '') throw new TypeError('fastify-event-sources/client: on() needs an event name')
    if (typeof handler !== 'function') throw new TypeError('fastify-event-sources/client: on() needs a handler function')
    this.#track(name, +1)
    const listener = event => handler(this.#dataOf(event), event)
    this.#source.addEventListener(name, listener)
    let on = true
    return () => {
      if (!on) return
      on = false
      this.#source.removeEventListener(name, listener)
      this.#track(name, -1)
    }
  }

  onOpen (handler) {
    return subscribe(this.#openers, handler)
  }

  onError (handler) {
    return subscribe(this.#errorHandlers, handler)
  }

  onClose (handler) {
    return subscribe(this.#closers, handler)
  }

  close () {
    this.#finish('close')
  }

  #closeOn (name, reason) {
    this.#track(name, +1)
    this.#source.addEventListener(name, () => this.#finish(reason))
  }

  #finish (reason) {
    if (this.#closeReason !== undefined) return
    this.#closeReason = reason
    this.#source.close()
    // A task later: the handlers of the event that closed the connection run first.
    setTimeout(() => callEach(this.#closers, reason), 0)
  }

  // One id tracker per event name that has a handler: an event nobody listens to cannot be observed.
  #track (name, delta) {
    const count = (this.#names.get(name) ?? 0) + delta
    if (count === 0) {
      this.#names.delete(name)
      this.#source.removeEventListener(name, this.#tracker)
      return
    }
    if (count === 1 && delta > 0) this.#source.addEventListener(name, this.#tracker)
    this.#names.set(name, count)
  }

  #dataOf (event) {
    if (this.#parsed.has(event)) return this.#parsed.get(event)
    const data = this.#parse(event.data, event.type)
    this.#parsed.set(event, data)
    return data
  }

  #read () {
    try {
      return this.#storage?.getItem(this.#storageKey) ?? undefined
    } catch {
      return undefined
    }
  }

  #write (id) {
    try {
      this.#storage?.setItem(this.#storageKey, id)
    } catch {
      // Storage full or refused (private mode): resuming after a reload is lost, the stream is not.
    }
  }
}

function parseOption (parse) {
  if (parse === undefined || parse === true) return parseJson
  if (parse === false) return data => data
  if (typeof parse === 'function') return parse
  throw new TypeError('fastify-event-sources/client: options.parse must be a boolean or a function')
}

// The server sends strings as they are and serializes anything else, so text that is not JSON is a string.
function parseJson (data) {
  if (data === '') return undefined
  try {
    return JSON.parse(data)
  } catch {
    return data
  }
}

// Replaces a parameter of that name already in the URL: a repeated one would reach the server as an array.
function withQuery (url, name, value) {
  const hash = url.indexOf('#')
  const base = hash === -1 ? url : url.slice(0, hash)
  const mark = base.indexOf('?')
  const params = new URLSearchParams(mark === -1 ? '' : base.slice(mark + 1))
  params.set(name, value)
  return (mark === -1 ? base : base.slice(0, mark)) + '?' + params + (hash === -1 ? '' : url.slice(hash))
}

function sessionStorageOrUndefined () {
  try {
    return globalThis.sessionStorage ?? undefined
  } catch {
    // Reading sessionStorage throws where storage is denied (sandboxed frames, some privacy settings).
    return undefined
  }
}

function subscribe (set, handler) {
  if (typeof handler !== 'function') throw new TypeError('fastify-event-sources/client: a handler must be a function')
  const entry = arg => handler(arg)
  set.add(entry)
  return () => { set.delete(entry) }
}

// As an event listener's error is: reported, without keeping the other handlers (or the close) from running.
function callEach (handlers, arg) {
  for (const handler of handlers) {
    try {
      handler(arg)
    } catch (err) {
      queueMicrotask(() => { throw err })
    }
  }
}
