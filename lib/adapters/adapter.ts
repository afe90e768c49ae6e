/** The adapter seam is public (a user may bring an adapter of their own): it is declared once, in types/. */
export type {
  AdapterHost, AdapterPublishOptions, ControlMessage, CountTarget, EventSourceAdapter, LocalPresence, PresenceListener, PublishedMessage,
  ReplayResult
} from '../../types/index'
