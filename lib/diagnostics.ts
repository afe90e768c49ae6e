import diagnostics from 'node:diagnostics_channel'

/**
 * The plugin's diagnostics channels, created once at load (as undici does) so that subscribing costs nothing
 * per stream. Publishers check `hasSubscribers` first: with nobody listening no payload object is made.
 * Payloads are documented in types/index.d.ts (`DiagnosticsMessages`).
 */
export const channels = {
  open: diagnostics.channel('fastify-event-sources:open'),
  close: diagnostics.channel('fastify-event-sources:close'),
  publish: diagnostics.channel('fastify-event-sources:publish'),
  replay: diagnostics.channel('fastify-event-sources:replay'),
  drop: diagnostics.channel('fastify-event-sources:drop')
}
