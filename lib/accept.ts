const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const QVALUE = /^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$/

interface MediaRange {
  type: string
  subtype: string
  params: [string, string][]
  q: number
}

/** Splits on `separator` outside quoted strings (a quoted parameter value may hold commas and semicolons). */
function split (text: string, separator: string): string[] {
  const parts: string[] = []
  let start = 0
  let quoted = false
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (quoted) {
      if (c === '\\') i++
      else if (c === '"') quoted = false
    } else if (c === '"') {
      quoted = true
    } else if (c === separator) {
      parts.push(text.slice(start, i))
      start = i + 1
    }
  }
  parts.push(text.slice(start))
  return parts
}

function unquote (value: string): string {
  if (value.length < 2 || value[0] !== '"' || value[value.length - 1] !== '"') return value
  return value.slice(1, -1).replace(/\\(.)/g, '$1')
}

/** One element of Accept, or undefined when it is not a valid media range (it is then ignored, as negotiator does). */
function parseRange (element: string): MediaRange | undefined {
  const [range, ...rest] = split(element, ';')
  const slash = range.indexOf('/')
  if (slash === -1) return undefined
  const type = range.slice(0, slash).trim().toLowerCase()
  const subtype = range.slice(slash + 1).trim().toLowerCase()
  if (!TOKEN.test(type) || !TOKEN.test(subtype) || (type === '*' && subtype !== '*')) return undefined
  const params: [string, string][] = []
  let q = 1
  for (const param of rest) {
    const eq = param.indexOf('=')
    if (eq === -1) {
      if (param.trim() === '') continue
      return undefined
    }
    const name = param.slice(0, eq).trim().toLowerCase()
    const value = param.slice(eq + 1).trim()
    if (!TOKEN.test(name) || value === '') return undefined
    if (name === 'q') {
      if (!QVALUE.test(value)) return undefined
      q = Number(value)
      // Whatever follows the weight is an accept extension, not a media type parameter.
      break
    }
    params.push([name, unquote(value)])
  }
  return { type, subtype, params, q }
}

/** How specifically a range names `text/event-stream; charset=utf-8` (higher wins), or -1 if it does not match it. */
function specificity (range: MediaRange): number {
  if (range.type === '*') return 0
  if (range.type !== 'text') return -1
  if (range.subtype === '*') return 1
  if (range.subtype !== 'event-stream') return -1
  if (range.params.length === 0) return 2
  for (const [name, value] of range.params) {
    if (name !== 'charset' || value.toLowerCase() !== 'utf-8') return -1
  }
  return 3
}

/**
 * Whether an Accept header allows `text/event-stream` (RFC 9110 §12.5.1): the most specific matching range
 * decides, and a weight of 0 rules the type out. No header accepts anything; a header that names no valid
 * range (an empty one included) accepts nothing.
 */
export function acceptsEventStream (accept: string | undefined): boolean {
  if (accept === undefined) return true
  let best = -1
  let q = 0
  for (const element of split(accept, ',')) {
    if (element.trim() === '') continue
    const range = parseRange(element)
    if (range === undefined) continue
    const s = specificity(range)
    if (s > best) {
      best = s
      q = range.q
    } else if (s === best && range.q > q) {
      q = range.q
    }
  }
  return best >= 0 && q > 0
}
