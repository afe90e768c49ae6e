'use strict'

// The assistant panel: a question starts a run on the server; this page follows it with an EventSource that
// resumes by itself after a drop (Last-Event-ID), and after a reload from the last id kept in sessionStorage.
;(function () {
  const $ = id => document.getElementById(id)
  const STORE = 'assistant'
  // What tests (and curious readers) can look at: every event seen, and the state of the panel.
  const state = window.assistant = { key: null, question: '', text: '', lastEventId: '', status: 'idle', events: [], opens: 0, reason: null }
  let es = null

  function save () {
    sessionStorage.setItem(STORE, JSON.stringify({ key: state.key, question: state.question, text: state.text, lastEventId: state.lastEventId, status: state.status, reason: state.reason }))
  }

  function render () {
    $('answer-question').textContent = state.question
    $('answer').textContent = state.text
    $('answer-status').textContent = state.status === 'done' ? `over (${state.reason})` : state.status
    $('answer-status').dataset.status = state.status
    $('ask-stop').disabled = state.status !== 'streaming' && state.status !== 'resuming'
    $('ask-drop').disabled = $('ask-stop').disabled
  }

  function follow () {
    es?.close()
    const query = state.lastEventId === '' ? '' : '?lastEventId=' + encodeURIComponent(state.lastEventId)
    es = new window.EventSource(`/assistant/answers/${encodeURIComponent(state.key)}${query}`)
    es.onopen = () => {
      state.opens++
      state.status = 'streaming'
      render()
    }
    es.onerror = () => {
      // The browser reconnects by itself with Last-Event-ID; a 204 (the run is over for this page) closes it.
      state.status = es.readyState === window.EventSource.CLOSED ? 'done' : 'resuming'
      if (es.readyState === window.EventSource.CLOSED && state.reason === null) state.reason = 'gone'
      render()
    }
    es.addEventListener('token', e => {
      state.events.push({ type: 'token', data: e.data, lastEventId: e.lastEventId })
      state.text += e.data
      state.lastEventId = e.lastEventId
      save()
      render()
    })
    es.addEventListener('reset', e => {
      // Events between the last one seen and the oldest kept are gone: start the text over from what is kept.
      state.events.push({ type: 'reset', data: e.data, lastEventId: e.lastEventId })
      state.text = ''
    })
    es.addEventListener('end', e => {
      state.events.push({ type: 'end', data: e.data, lastEventId: e.lastEventId })
      state.lastEventId = e.lastEventId
      state.reason = JSON.parse(e.data).reason
      state.status = 'done'
      es.close()
      save()
      render()
    })
  }

  $('ask').addEventListener('submit', async event => {
    event.preventDefault()
    const question = $('question').value
    if (question.trim() === '') return
    const res = await fetch('/assistant/questions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ question }) })
    if (!res.ok) return
    const { key } = await res.json()
    Object.assign(state, { key, question, text: '', lastEventId: '', status: 'connecting', reason: null, events: [] })
    save()
    render()
    follow()
  })

  $('ask-stop').addEventListener('click', () => {
    if (state.key !== null) fetch(`/assistant/answers/${encodeURIComponent(state.key)}/stop`, { method: 'POST' })
  })

  $('ask-drop').addEventListener('click', () => {
    if (state.key !== null) fetch(`/assistant/answers/${encodeURIComponent(state.key)}/drop`, { method: 'POST' })
  })

  // A reload: show the answer so far, and follow on from the last event this tab saw.
  const kept = JSON.parse(sessionStorage.getItem(STORE) ?? 'null')
  if (kept !== null && kept.key !== null) {
    Object.assign(state, kept)
    if (state.status !== 'done') {
      state.status = 'resuming'
      follow()
    }
  }
  render()
})()
