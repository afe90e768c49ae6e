/** The history store interface and the message shape it holds are public: they are declared once, in types/. */
export type { HistoryStore, PublishedMessage, ReplayResult } from '../../types/index'
