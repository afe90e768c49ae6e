import createError from '@fastify/error'

const P = 'fastify-event-sources: '

export const FST_ERR_SSE_ALREADY_STREAMING = createError('FST_ERR_SSE_ALREADY_STREAMING', P + 'getEventSource() was already called for this request', 500)
export const FST_ERR_SSE_HEADERS_SENT = createError('FST_ERR_SSE_HEADERS_SENT', P + 'cannot append header "%s": the response head was already written', 500)
export const FST_ERR_SSE_INVALID_HEADER = createError('FST_ERR_SSE_INVALID_HEADER', P + 'invalid header: %s', 500, TypeError)
export const FST_ERR_SSE_INVALID_FIELD = createError('FST_ERR_SSE_INVALID_FIELD', P + 'invalid field "%s": %s', 500, TypeError)
export const FST_ERR_SSE_INVALID_OPTION = createError('FST_ERR_SSE_INVALID_OPTION', P + 'invalid option "%s": %s', 500, TypeError)
export const FST_ERR_SSE_SERIALIZATION = createError('FST_ERR_SSE_SERIALIZATION', P + 'could not serialize the message: %s', 500)
export const FST_ERR_SSE_TOO_MANY_CONNECTIONS = createError('FST_ERR_SSE_TOO_MANY_CONNECTIONS', P + 'too many event streams (%s)', 503)
export const FST_ERR_SSE_CLOSING = createError('FST_ERR_SSE_CLOSING', P + 'the server is shutting down', 503)
export const FST_ERR_SSE_PUBLISH_FAILED = createError('FST_ERR_SSE_PUBLISH_FAILED', P + 'publish failed: %s', 503)
export const FST_ERR_SSE_ADAPTER = createError('FST_ERR_SSE_ADAPTER', P + 'adapter error: %s', 500)
export const FST_ERR_SSE_NOT_ACCEPTABLE = createError('FST_ERR_SSE_NOT_ACCEPTABLE', P + 'the request\'s Accept header does not allow text/event-stream', 406)
export const FST_ERR_SSE_RUN_EXISTS = createError('FST_ERR_SSE_RUN_EXISTS', P + 'a run is already going on for key "%s"', 409)
