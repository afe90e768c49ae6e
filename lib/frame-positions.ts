import { follows, type Position } from './position'

/** The history position of each published frame: a source never writes one at or before the last it wrote. */
export const framePositions = new WeakMap<Buffer, Position>()

/**
 * A live-delivery gap's reset frame, with the newest id it names. A source already past that id (its replay read
 * further) gets the frame with its own position as id instead: a client's last id never moves back, or its next
 * reconnect would replay what it already has.
 */
export interface ResetFrame {
  latest: Position
  at: (position: Position) => Buffer
}
export const resetFrames = new WeakMap<Buffer, ResetFrame>()

/** The frame a source at `position` writes for `frame`: a gap's reset rebuilt with its own id when it is past the gap's. */
export function resetFrameAt (frame: Buffer, position: Position | undefined): Buffer {
  if (position === undefined) return frame
  const reset = resetFrames.get(frame)
  return reset !== undefined && follows(position, reset.latest) ? reset.at(position) : frame
}
