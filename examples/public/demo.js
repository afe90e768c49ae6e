import { connect as openStream } from '/client/index.js'

;(function () {
  const store = window.sessionStorage
  const $ = id => document.getElementById(id)
  const demo = window.demo = { tab: null, es: null, status: 'connecting', events: [], clock: null, replayed: 0 }

  function newTabId () {
    const bytes = new Uint8Array(6)
    crypto.getRandomValues(bytes)
    return Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('')
  }

  function setStatus (status, text) {
    demo.status = status
    const el = $('status')
    el.dataset.status = status
    el.textContent = text ?? status
  }

  function record (type, event, extra) {
    demo.events.push({ type, data: event.data, lastEventId: event.lastEventId, ...extra })
    if (demo.events.length > 1000) demo.events.shift()
  }

  function post (path, body) {
    return fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body ?? {}) })
  }

  function time (iso) {
    return new Date(iso).toLocaleTimeString()
  }

  function addFeedItem (message, id, replayed) {
    const li = document.createElement('li')
    li.dataset.id = id
    if (replayed) li.className = 'replayed'
    const head = document.createElement('div')
    head.className = 'head'
    const who = document.createElement('strong')
    who.textContent = message.from === demo.tab ? message.from + ' (you)' : message.from
    const when = document.createElement('span')
    when.textContent = time(message.at)
    head.append(who, when)
    if (replayed) {
      const badge = document.createElement('span')
      badge.className = 'badge'
      badge.textContent = 'replayed'
      head.append(badge)
    }
    const text = document.createElement('p')
    text.textContent = message.text
    li.append(head, text)
    $('feed').prepend(li)
  }

  // The feed survives a reload; the resume point (lastEventId) fetches only what came after it.
  function keepFeedItem (message, id) {
    const kept = JSON.parse(store.getItem('demo.feed') ?? '[]')
    kept.push({ message, id })
    store.setItem('demo.feed', JSON.stringify(kept.slice(-50)))
  }

  function restoreFeed () {
    for (const { message, id } of JSON.parse(store.getItem('demo.feed') ?? '[]')) addFeedItem(message, id, false)
  }

  function renderTabs (tabs) {
    const list = $('tabs')
    list.replaceChildren()
    for (const entry of tabs) {
      const li = document.createElement('li')
      li.dataset.tab = entry.tab
      const name = document.createElement('code')
      name.textContent = entry.tab
      li.append(name)
      if (entry.tab === demo.tab) {
        li.className = 'self'
        li.append(' (this tab)')
      }
      const actions = document.createElement('span')
      actions.className = 'actions'
      for (const [label, path, title] of [
        ['wave', 'notice', 'send this tab a plain multi-line message'],
        ['drop', 'drop', 'close its stream; it reconnects in a few seconds and is replayed what it missed'],
        ['kick', 'kick', 'termination event, close, and 204 to any reconnect']
      ]) {
        const button = document.createElement('button')
        button.type = 'button'
        button.textContent = label
        button.title = title
        button.dataset.action = path
        button.addEventListener('click', () => {
          post(`/tabs/${entry.tab}/${path}`, path === 'notice' ? { text: `👋 from tab ${demo.tab}\nat ${new Date().toLocaleTimeString()}` } : {})
        })
        actions.append(button)
      }
      li.append(actions)
      list.append(li)
    }
  }

  function connect () {
    setStatus('connecting')
    $('stopped').hidden = true
    // The client keeps the last id in sessionStorage: a reloaded page resumes through ?lastEventId=, and a
    // reconnect of the same page through the Last-Event-ID header. `terminate` closes it for good.
    const events = openStream('/events?tab=' + encodeURIComponent(demo.tab), { terminateEvent: 'terminate' })
    demo.es = events
    window.demoRooms?.attach(events, record)
    // Feed events before `hello` are the replay: the server queues everything it sends behind it.
    let catchingUp = true
    let caughtUp = 0

    events.onOpen(() => {
      setStatus('open')
      catchingUp = true
      caughtUp = 0
    })

    events.onError(() => {
      if (events.readyState !== 2) setStatus('reconnecting')
    })

    events.onClose(reason => {
      if (reason !== 'failed') return
      setStatus('stopped')
      showStopped('The server answered the reconnect with 204 No Content: this tab will not reconnect.')
    })

    // Data arrives parsed: JSON for the objects the server serialized, the text itself for plain strings.
    events.on('message', (text, event) => {
      record('message', event)
      $('notice').textContent = text
    })

    events.on('hello', (hello, event) => {
      record('hello', event)
      const resume = $('resume')
      if (hello.resumedFrom !== null) {
        resume.hidden = false
        resume.textContent = `Reconnected from event ${hello.resumedFrom}: ${caughtUp} missed message${caughtUp === 1 ? '' : 's'} replayed.`
      }
      catchingUp = false
    })

    events.on('feed', (message, event) => {
      record('feed', event, { replayed: catchingUp })
      if (catchingUp) {
        caughtUp++
        demo.replayed++
      }
      addFeedItem(message, event.lastEventId, catchingUp)
      keepFeedItem(message, event.lastEventId)
    })

    events.on('reset', (reset, event) => {
      record('reset', event)
      $('feed').replaceChildren()
      store.removeItem('demo.feed')
      const resume = $('resume')
      resume.hidden = false
      resume.textContent = 'The server no longer holds history that old: the feed starts over.'
    })

    events.on('connections', (connections, event) => {
      record('connections', event)
      $('count').textContent = String(connections.count)
      renderTabs(connections.tabs)
    })

    events.on('clock', clock => {
      demo.clock = clock
      $('clock-time').textContent = time(clock.now)
      $('clock-uptime').textContent = clock.uptime + ' s'
      $('clock-memory').textContent = `rss ${(clock.rss / 1048576).toFixed(1)} MB · heap ${(clock.heapUsed / 1048576).toFixed(1)} MB`
      $('clock-streams').textContent = String(clock.openStreams)
      $('clock-published').textContent = String(clock.published)
    })

    // The client has closed the connection already: the browser will not reconnect after the server's close.
    events.on('terminate', (terminate, event) => {
      record('terminate', event)
      setStatus('kicked')
      showStopped('The server kicked this tab (termination event): it stopped reconnecting.')
    })
  }

  function showStopped (text) {
    $('stopped-text').textContent = text
    $('stopped').hidden = false
    $('count').textContent = '–'
    $('tabs').replaceChildren()
  }

  $('rejoin').addEventListener('click', () => {
    demo.es?.close()
    demo.tab = newTabId()
    store.setItem('demo.tab', demo.tab)
    store.removeItem('demo.feed')
    $('feed').replaceChildren()
    $('tab').textContent = demo.tab
    connect()
  })

  const text = $('text')
  text.addEventListener('keydown', event => {
    if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault()
      $('post').requestSubmit()
    }
  })
  $('post').addEventListener('submit', event => {
    event.preventDefault()
    if (text.value.trim() === '') return
    post('/messages', { text: text.value, from: demo.tab })
    text.value = ''
  })

  demo.tab = store.getItem('demo.tab') ?? newTabId()
  store.setItem('demo.tab', demo.tab)
  $('tab').textContent = demo.tab
  restoreFeed()
  connect()
})()
