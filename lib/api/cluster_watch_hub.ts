/**
 * Fan-out of the store's committed changes to every open watch stream
 * (server-sent events). Each change is encoded once and the same bytes are
 * queued on every stream, so a change costs one JSON encoding however many
 * nodes watch. Behind our HTTP server the frames go to each connection
 * directly (see `pushBody`), without a stream read, promise or timer per
 * frame and stream; `app.request()` reads the same frames from the stream.
 * A stream that stops reading is closed once its queue passes a
 * bound; its node reconnects with its last revision and catches up by replay.
 * One credential holds a few streams at most: opening one more closes its
 * oldest (a node that reconnects over a connection the server still thinks
 * open wins over the stale one).
 */
import type { Logger } from "../log.ts";
import type { WatchEvent } from "./cluster_types.ts";
import type { ClusterStore } from "../store/cluster_store.ts";
import { type BodySink, pushBody } from "./http_server.ts";

const encoder = new TextEncoder();

/** One SSE frame: `event`, one `data` line of JSON, and `id` when given. */
export function sseFrame(event: string, data: unknown, id?: number): Uint8Array {
  const idLine = id === undefined ? "" : `id: ${id}\n`;
  return encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n${idLine}\n`);
}

/** The frame of a watch event: `snapshot`, or `delta` for upsert and delete. */
export function eventFrame(event: WatchEvent): Uint8Array {
  return sseFrame(event.type === "snapshot" ? "snapshot" : "delta", event, event.revision);
}

interface Watcher {
  readonly controller: ReadableStreamDefaultController<Uint8Array>;
  /**
   * The connection itself, once the HTTP server took the stream over: frames
   * are then written to it directly rather than through the stream.
   */
  sink: BodySink | undefined;
  /** The node whose credential opened the stream; its removal ends the stream. */
  readonly node: string | undefined;
  /** Who opened it (`node/NAME`, `admin`): streams are counted per owner. */
  readonly owner: string;
  /**
   * Frames the reader has not taken yet (shared with every other stream:
   * each is encoded once), and their size. A reader that falls behind takes
   * them in one chunk, so a slow or busy connection gets fewer, larger writes.
   */
  pending: Uint8Array[];
  pendingBytes: number;
  /** The reader asked while nothing was pending: the next frame goes straight to it. */
  wanted: boolean;
}

/** Frames this large go out alone rather than be copied into a batch. */
const BATCH_LIMIT = 64 * 1024;

/**
 * The last batch joined from the frames starting at a frame. Streams that
 * fall behind together hold the same frames (each is queued on every
 * stream), so the first of them joins a batch and the others take the same
 * bytes instead of copying their own.
 */
const joined = new WeakMap<Uint8Array, { frames: Uint8Array[]; bytes: Uint8Array }>();

/** The next chunk for a reader: the pending frames up to a large one, joined. */
function takeBatch(w: Watcher): Uint8Array {
  let n = 0;
  let bytes = 0;
  while (n < w.pending.length) {
    const f = w.pending[n]!;
    if (n > 0 && (f.byteLength >= BATCH_LIMIT || bytes + f.byteLength > BATCH_LIMIT)) break;
    n++;
    bytes += f.byteLength;
    if (f.byteLength >= BATCH_LIMIT) break;
  }
  const frames = w.pending.splice(0, n);
  w.pendingBytes -= bytes;
  if (frames.length === 1) return frames[0]!;
  const seen = joined.get(frames[0]!);
  if (seen?.frames.length === n && seen.frames.every((f, i) => f === frames[i])) return seen.bytes;
  const out = new Uint8Array(bytes);
  let at = 0;
  for (const f of frames) {
    out.set(f, at);
    at += f.byteLength;
  }
  joined.set(frames[0]!, { frames, bytes: out });
  return out;
}

export interface WatchHubOptions {
  readonly logger?: Logger;
  /** Interval of `ping` frames that keep idle streams open through proxies (default 15 s). */
  readonly keepAliveMs?: number;
  /** Bytes a stream may have queued before it is dropped as too slow (default 1 MiB). */
  readonly maxQueueBytes?: number;
  /** Streams one credential may hold open (default 4); one more closes its oldest. */
  readonly maxStreamsPerOwner?: number;
}

/** What a new stream started with, for logs and tests. */
export type WatchStart = "snapshot" | "replay";

/** Streams of every watcher of one store. */
export class WatchHub {
  readonly #store: ClusterStore;
  readonly #logger: Logger | undefined;
  readonly #keepAliveMs: number;
  readonly #maxQueueBytes: number;
  readonly #maxPerOwner: number;
  readonly #watchers = new Set<Watcher>();
  /** Each owner's streams, oldest first. */
  readonly #byOwner = new Map<string, Watcher[]>();
  readonly #unlisten: () => void;
  #timer: ReturnType<typeof setInterval> | undefined;
  #snapshotCache: { revision: number; frame: Uint8Array } | undefined;
  #closed = false;
  #framesSent = 0;
  #bytesSent = 0;
  #dropped = 0;
  #replaced = 0;

  constructor(store: ClusterStore, options: WatchHubOptions = {}) {
    this.#store = store;
    this.#logger = options.logger;
    this.#keepAliveMs = options.keepAliveMs ?? 15_000;
    this.#maxQueueBytes = options.maxQueueBytes ?? 2 ** 20;
    this.#maxPerOwner = options.maxStreamsPerOwner ?? 4;
    this.#unlisten = store.listen((event) => {
      this.#publish(eventFrame(event));
      if (event.type === "delete" && event.kind === "node") this.#endStreamsOf(event.name);
    });
  }

  /** Open streams. */
  get size(): number {
    return this.#watchers.size;
  }

  /**
   * Frames and bytes queued so far, streams dropped as too slow, and streams
   * closed for a newer one of the same owner (for /metrics).
   */
  get stats(): { frames: number; bytes: number; dropped: number; replaced: number } {
    return {
      frames: this.#framesSent,
      bytes: this.#bytesSent,
      dropped: this.#dropped,
      replaced: this.#replaced,
    };
  }

  /**
   * Opens a stream: the changes after `since` when the store still has them
   * all, a snapshot otherwise (or when `since` is absent), then a `ping` with
   * the current revision, then every change as it commits.
   */
  open(
    since?: number,
    options: { node?: string; owner?: string } = {},
  ): { stream: ReadableStream<Uint8Array>; start: WatchStart } {
    if (this.#closed) throw new Error("Cannot open a watch stream: the server is shutting down");
    let watcher: Watcher | undefined;
    let start: WatchStart = "snapshot";
    const stream = new ReadableStream<Uint8Array>({
      start: (controller) => {
        // Reading the backlog and subscribing happen in one synchronous step,
        // so no change can fall between them.
        const revision = this.#store.revision();
        const missed = since === undefined || since > revision
          ? undefined
          : this.#store.eventsSince(since);
        const owner = options.owner ?? (options.node !== undefined ? `node/${options.node}` : "");
        const w: Watcher = {
          controller,
          sink: undefined,
          node: options.node,
          owner,
          pending: [],
          pendingBytes: 0,
          wanted: false,
        };
        watcher = w;
        if (missed === undefined) {
          this.#queue(w, this.#snapshotFrame());
        } else {
          start = "replay";
          for (const event of missed) this.#queue(w, eventFrame(event));
        }
        this.#queue(w, sseFrame("ping", { revision }));
        const mine = this.#byOwner.get(owner) ?? [];
        while (owner !== "" && mine.length >= this.#maxPerOwner) {
          const oldest = mine[0]!;
          this.#replaced++;
          this.#logger?.info("Closing the oldest watch stream of {owner}: it opened another", {
            owner,
          });
          this.#end(oldest);
        }
        mine.push(w);
        this.#byOwner.set(owner, mine);
        this.#watchers.add(w);
        this.#startTimer();
      },
      pull: (controller) => {
        const w = watcher;
        if (w === undefined) return;
        if (w.pending.length > 0) controller.enqueue(takeBatch(w));
        else w.wanted = true;
      },
      cancel: () => {
        if (watcher !== undefined) this.#remove(watcher);
      },
    }, { highWaterMark: 0 });
    pushBody(stream, (sink) => {
      const w = watcher;
      // Ended before the server took it over: what it holds is read from the stream.
      if (w === undefined || !this.#watchers.has(w)) return undefined;
      w.sink = sink;
      return {
        pull: () => {
          if (w.pending.length > 0) sink.write(takeBatch(w));
          else w.wanted = true;
        },
        cancel: () => this.#remove(w),
      };
    });
    return { stream, start };
  }

  /** Ends every stream and stops listening (server shutdown). */
  close(): void {
    this.#closed = true;
    this.#unlisten();
    for (const w of [...this.#watchers]) this.#end(w);
    this.#stopTimer();
  }

  /** Ends the streams a removed node opened: its credential is gone with it. */
  #endStreamsOf(node: string): void {
    for (const w of [...this.#watchers]) if (w.node === node) this.#end(w);
  }

  #snapshotFrame(): Uint8Array {
    const revision = this.#store.revision();
    if (this.#snapshotCache?.revision !== revision) {
      const snap = this.#store.snapshot();
      this.#snapshotCache = {
        revision,
        frame: eventFrame({ type: "snapshot", revision: snap.revision, peers: snap.peers }),
      };
    }
    return this.#snapshotCache.frame;
  }

  #publish(frame: Uint8Array): void {
    for (const w of this.#watchers) {
      if (w.pendingBytes + frame.byteLength > this.#maxQueueBytes) {
        this.#dropped++;
        this.#logger?.warn("Dropping a watch stream that stopped reading", {
          queued: w.pendingBytes,
        });
        try {
          if (w.sink !== undefined) w.sink.abort();
          else w.controller.error(new Error("watch stream too slow"));
        } catch {
          // already gone
        }
        this.#remove(w);
        continue;
      }
      this.#queue(w, frame);
    }
  }

  /** Hands a frame to a waiting reader, or keeps it until the reader asks. */
  #queue(w: Watcher, frame: Uint8Array): void {
    this.#framesSent++;
    this.#bytesSent += frame.byteLength;
    if (w.wanted) {
      w.wanted = false;
      try {
        if (w.sink !== undefined) w.sink.write(frame);
        else w.controller.enqueue(frame);
      } catch {
        // The reader went away; cancel() removes it.
      }
      return;
    }
    w.pending.push(frame);
    w.pendingBytes += frame.byteLength;
  }

  /** Ends a stream (its reader sees the end) and forgets it. */
  #end(w: Watcher): void {
    try {
      // What is pending still reaches the reader, before the end.
      if (w.sink !== undefined) {
        while (w.pending.length > 0) w.sink.write(takeBatch(w));
        w.sink.close();
      } else {
        while (w.pending.length > 0) w.controller.enqueue(takeBatch(w));
        w.controller.close();
      }
    } catch {
      // already closed by its reader
    }
    this.#remove(w);
  }

  #remove(w: Watcher): void {
    if (!this.#watchers.delete(w)) return;
    const mine = this.#byOwner.get(w.owner);
    if (mine !== undefined) {
      const i = mine.indexOf(w);
      if (i >= 0) mine.splice(i, 1);
      if (mine.length === 0) this.#byOwner.delete(w.owner);
    }
    if (this.#watchers.size === 0) this.#stopTimer();
  }

  #startTimer(): void {
    if (this.#timer !== undefined) return;
    const timer = setInterval(() => {
      this.#publish(sseFrame("ping", { revision: this.#store.revision() }));
    }, this.#keepAliveMs);
    // Idle keep-alives alone must not keep the process running.
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  #stopTimer(): void {
    if (this.#timer === undefined) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
