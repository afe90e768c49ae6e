'use strict'

// A small SVG writer for horizontal grouped bar charts: no dependencies, readable in any browser or on GitHub.

const COLORS = ['#2b6cb0', '#dd6b20', '#38a169', '#805ad5', '#d53f8c', '#718096', '#b7791f', '#319795']
const WIDTH = 880
const LABEL = 290
const ROW = 16
const GAP = 10
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"'

const escape = s => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

function format (v) {
  if (v >= 1000000) return `${(v / 1000000).toFixed(2)}M`
  if (v >= 100000) return `${Math.round(v / 1000)}k`
  if (v >= 10000) return `${(v / 1000).toFixed(1)}k`
  if (v >= 100) return String(Math.round(v))
  return String(Math.round(v * 10) / 10)
}

/**
 * One panel: `rows` (contenders) each with one bar per series.
 * panel = { title, unit, series: [name], rows: [{ label, values: [number|undefined], highlight }] }
 */
function panel (p, y) {
  const out = []
  const max = Math.max(...p.rows.flatMap(r => r.values.filter(v => v !== undefined && v !== null)), 1e-9)
  const span = WIDTH - LABEL - 80
  out.push(`<text x="10" y="${y + 16}" font-size="15" font-weight="600" ${FONT}>${escape(p.title)}</text>`)
  let legendX = LABEL
  p.series.forEach((name, k) => {
    out.push(`<rect x="${legendX}" y="${y + 26}" width="12" height="12" fill="${COLORS[k % COLORS.length]}"/>`)
    out.push(`<text x="${legendX + 16}" y="${y + 36}" font-size="12" ${FONT}>${escape(name)}</text>`)
    legendX += 24 + name.length * 7
  })
  y += 48
  for (const row of p.rows) {
    const h = p.series.length * ROW
    out.push(`<text x="${LABEL - 8}" y="${y + h / 2 + 4}" font-size="12" text-anchor="end" ${FONT}${row.highlight ? ' font-weight="600"' : ''}>${escape(row.label)}</text>`)
    row.values.forEach((v, k) => {
      const by = y + k * ROW
      if (v === undefined || v === null) {
        out.push(`<text x="${LABEL + 4}" y="${by + 12}" font-size="11" fill="#718096" ${FONT}>n/a</text>`)
        return
      }
      const w = Math.max(1, v / max * span)
      out.push(`<rect x="${LABEL}" y="${by + 2}" width="${w.toFixed(1)}" height="${ROW - 4}" fill="${COLORS[k % COLORS.length]}"/>`)
      out.push(`<text x="${(LABEL + w + 4).toFixed(1)}" y="${by + 12}" font-size="11" ${FONT}>${format(v)}${p.unit ? ' ' + escape(p.unit) : ''}</text>`)
    })
    y += h + GAP
  }
  return { svg: out.join('\n'), y: y + 14 }
}

/** panels: [panel]; returns the SVG document. */
function chart (title, subtitle, panels) {
  let y = 50
  const body = []
  for (const p of panels) {
    const r = panel(p, y)
    body.push(r.svg)
    y = r.y
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${y}" viewBox="0 0 ${WIDTH} ${y}">`,
    `<rect width="${WIDTH}" height="${y}" fill="#ffffff"/>`,
    `<text x="10" y="22" font-size="17" font-weight="700" ${FONT}>${escape(title)}</text>`,
    `<text x="10" y="40" font-size="12" fill="#4a5568" ${FONT}>${escape(subtitle)}</text>`,
    ...body,
    '</svg>',
    ''
  ].join('\n')
}

module.exports = { chart }
