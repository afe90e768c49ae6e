'use strict'

// Rooms: a tab joins and leaves them (the server makes the stream follow the room's topic), posts to one, and
// sees room messages. Messages that arrive before `hello` on a connection are the replay of the tab's rooms.
;(function () {
  const $ = id => document.getElementById(id)
  const joined = new Set()
  let tab = null

  function post (path, body) {
    return fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  }

  function render (all) {
    const list = $('rooms')
    const target = $('room-target')
    list.replaceChildren()
    target.replaceChildren()
    for (const room of all) {
      const button = document.createElement('button')
      button.type = 'button'
      button.dataset.room = room
      button.setAttribute('aria-pressed', String(joined.has(room)))
      button.textContent = '#' + room
      button.title = joined.has(room) ? 'leave this room' : 'join this room'
      button.addEventListener('click', () => toggle(room, all))
      list.append(button)
      const option = document.createElement('option')
      option.value = room
      option.textContent = '#' + room
      target.append(option)
    }
  }

  async function toggle (room, all) {
    const res = await post(`/rooms/${room}/${joined.has(room) ? 'leave' : 'join'}`, { tab })
    if (!res.ok) return
    const { rooms } = await res.json()
    joined.clear()
    for (const r of rooms) joined.add(r)
    render(all)
  }

  function addRoomMessage (message, replayed) {
    const li = document.createElement('li')
    li.dataset.room = message.room
    if (replayed) li.className = 'replayed'
    const room = document.createElement('strong')
    room.textContent = '#' + message.room
    const who = document.createElement('span')
    who.textContent = ' ' + (message.from === tab ? 'you' : message.from) + ': '
    const text = document.createElement('span')
    text.className = 'text'
    text.textContent = message.text
    li.append(room, who, text)
    if (replayed) {
      const badge = document.createElement('span')
      badge.className = 'badge'
      badge.textContent = 'replayed'
      li.append(badge)
    }
    $('room-log').prepend(li)
  }

  const roomsReady = fetch('/rooms').then(res => res.json()).then(({ rooms }) => rooms, () => [])

  // The page's connection: the plugin's browser client (`on`, `onOpen`) or a plain EventSource.
  function listen (connection, name, handler) {
    if (typeof connection.on === 'function') connection.on(name, (_data, event) => handler(event))
    else connection.addEventListener(name, handler)
  }

  function onOpen (connection, handler) {
    if (typeof connection.onOpen === 'function') connection.onOpen(handler)
    else connection.addEventListener('open', handler)
  }

  window.demoRooms = {
    attach (connection, record) {
      let catchingUp = true
      onOpen(connection, () => { catchingUp = true })
      listen(connection, 'hello', event => {
        const hello = JSON.parse(event.data)
        tab = hello.tab
        joined.clear()
        for (const room of hello.rooms ?? []) joined.add(room)
        roomsReady.then(render)
        catchingUp = false
      })
      listen(connection, 'room', event => {
        record('room', event, { replayed: catchingUp })
        addRoomMessage(JSON.parse(event.data), catchingUp)
      })
    }
  }

  $('room-post').addEventListener('submit', event => {
    event.preventDefault()
    const text = $('room-text')
    if (text.value.trim() === '' || tab === null) return
    post(`/rooms/${$('room-target').value}/messages`, { text: text.value, from: tab })
    text.value = ''
  })
})()
