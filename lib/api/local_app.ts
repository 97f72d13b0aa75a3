/**
 * The node manager's local API as a Hono app (served on the unix socket).
 * CNI verbs take a CniRequest and answer 200 or a CNI error body; reads
 * serve `wgcni status`. The workload paths carry the seed's three steps one
 * by one (allocate, register a public key, read peers) for a workload that
 * brings its own WireGuard interface; they answer `{ error, code }` with the
 * status of the error table (lib/api/errors.ts). Bodies are size-capped and
 * strictly validated: a bad request changes nothing.
 */
import { type Context, Hono } from "hono";
import { z } from "zod";
import {
  type AddResponse,
  type Attachment,
  type CniErrorBody,
  type CniRequest,
  type CniResult,
  type GcResponse,
  LOCAL_PATHS,
  type RotationAnswer,
  type WorkloadAddresses,
  type WorkloadErrorBody,
  type WorkloadKeyRequest,
  type WorkloadPeers,
  type WorkloadReleased,
  type WorkloadView,
} from "./local_types.ts";
import { codeOf, statusOf } from "./errors.ts";
import { nameProblem, publicKeySchema } from "./schemas.ts";
import { NoSpaceError, NotFoundError, TooLargeError } from "../errors.ts";
import { parseResult } from "../cni/result.ts";
import { ERR } from "../cni/errors.ts";
import {
  containerIdProblem,
  ifnameProblem,
  netnsPathProblem,
  quoteValue,
} from "../cni/validate.ts";

/** What the app asks of the node manager. */
export interface LocalHandlers {
  add(req: CniRequest): Promise<CniResult>;
  del(req: CniRequest): Promise<void>;
  check(req: CniRequest): Promise<void>;
  /** undefined when ready, else the error body (code 50/51). */
  status(): Promise<CniErrorBody | undefined>;
  gc(valid: readonly Attachment[] | undefined): Promise<GcResponse>;
  node(): Promise<unknown>;
  peers(): Promise<unknown>;
  allocations(): Promise<unknown>;
  /** The workload steps; without them, their paths answer 404. */
  readonly workloads?: WorkloadHandlers;
  /**
   * Rotates the node's key, the switch `leadMs` ahead (default: the node's),
   * and with `pods` every pod's key after it; answers once it is done. Without it, its path answers 404.
   */
  rotateKey?(leadMs?: number, options?: { pods?: boolean }): Promise<RotationAnswer>;
}

/**
 * What the app asks of the node manager for workloads that bring their own
 * WireGuard interface; names and keys arrive checked. Errors are the named
 * ones of lib/errors.ts (404 unknown, 409 a collision, 503 no address left).
 */
export interface WorkloadHandlers {
  allocate(name: string): Promise<WorkloadAddresses>;
  register(name: string, key: WorkloadKeyRequest): Promise<WorkloadView>;
  peers(name: string): Promise<WorkloadPeers>;
  release(name: string): Promise<WorkloadReleased>;
  list(): Promise<readonly WorkloadView[]>;
}

/** Largest request body accepted. */
export const MAX_LOCAL_BODY = 1024 * 1024;

const requestSchema = z.strictObject({
  containerId: z.string(),
  ifname: z.string(),
  netns: z.string(),
  args: z.record(z.string(), z.string()),
  config: z.record(z.string(), z.unknown()),
});

/** POST rotate-key: how far ahead peers switch (ms); the node's default when absent. */
const rotateKeySchema = z.strictObject({
  leadMs: z.number().int().min(1000, { error: "must be at least 1000 (a second)" }).max(
    3_600_000,
    { error: "must be at most 3600000 (an hour)" },
  ).optional(),
  pods: z.boolean().optional(),
});

const attachmentsSchema = z.array(
  z.object({ containerID: z.string(), ifname: z.string() }).passthrough(),
);

const TOO_LARGE: CniErrorBody = {
  code: ERR.io,
  msg: `Cannot read the request: larger than ${MAX_LOCAL_BODY} bytes`,
};

/**
 * The body as text, or undefined when it is longer than `cap` bytes: read
 * no further than that (a chunked body announces no length), and refused
 * at once when its content-length says so.
 */
async function readCapped(raw: Request, cap: number): Promise<string | undefined> {
  if (Number(raw.headers.get("content-length") ?? "0") > cap) {
    await raw.body?.cancel().catch(() => {});
    return undefined;
  }
  if (raw.body === null) return "";
  const reader = raw.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > cap) {
      await reader.cancel().catch(() => {});
      return undefined;
    }
    chunks.push(value);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}

/** What a verb needs of a request beyond its shape. */
type Needs = "attachment" | "attachment+netns" | "nothing";

/**
 * Why a request's attachment fields break the plugin's rules for
 * CNI_CONTAINERID, CNI_IFNAME and CNI_NETNS (code 4), or undefined.
 */
function attachmentProblem(req: CniRequest, needs: Needs): string | undefined {
  if (needs === "nothing") return undefined;
  const checks: [string, string, string | undefined][] = [
    ["containerId", req.containerId, containerIdProblem(req.containerId)],
    ["ifname", req.ifname, ifnameProblem(req.ifname)],
    ...(needs === "attachment+netns"
      ? [["netns", req.netns, netnsPathProblem(req.netns)] as [string, string, string | undefined]]
      : []),
  ];
  for (const [field, value, problem] of checks) {
    if (problem !== undefined) return `Invalid ${field} ${quoteValue(value)}: ${problem}`;
  }
  return undefined;
}

/** Maps a thrown error to a CNI error body and an HTTP status. */
export type ErrorMapper = (err: unknown) => { status: 400 | 409 | 500 | 503; body: CniErrorBody };

const workloadKeySchema = z.strictObject({
  publicKey: publicKeySchema,
  endpointPort: z.number({ error: "must be a number" }).int("must be a whole number")
    .min(1, "must be 1 to 65535").max(65535, "must be 1 to 65535").optional(),
});

type WorkloadStatus = 400 | 401 | 403 | 404 | 409 | 413 | 500 | 503 | 507;

/** A workload path's error as its status and body. */
function workloadFailure(err: unknown): { status: WorkloadStatus; body: WorkloadErrorBody } {
  const error = err instanceof Error ? err.message : String(err);
  if (err instanceof NoSpaceError) return { status: 507, body: { error, code: err.name } };
  const code = codeOf(err);
  return { status: statusOf(err), body: code === undefined ? { error } : { error, code } };
}

/**
 * A JSON request body checked against `schema`: TooLargeError, SyntaxError
 * (not JSON) or TypeError (naming the field) otherwise. An empty body is
 * `empty` when given.
 */
async function jsonBody<T>(raw: Request, schema: z.ZodType<T>, empty?: unknown): Promise<T> {
  const text = await readCapped(raw, MAX_LOCAL_BODY);
  if (text === undefined) {
    throw new TooLargeError(`Cannot read the request: larger than ${MAX_LOCAL_BODY} bytes`);
  }
  let json: unknown = empty;
  try {
    if (text !== "" || empty === undefined) json = JSON.parse(text);
  } catch {
    throw new SyntaxError("Cannot decode the request: invalid JSON");
  }
  const r = schema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new TypeError(
      issue?.code === "unrecognized_keys"
        ? `Unsupported field in the request: ${issue.keys.join(", ")}`
        : `Invalid ${issue?.path.join(".") || "request"}: ${issue?.message}`,
    );
  }
  return r.data;
}

function fail(code: number, msg: string, details?: string): CniErrorBody {
  return details === undefined ? { code, msg } : { code, msg, details };
}

/** Builds the app; `mapError` turns handler errors into CNI error bodies. */
export function createLocalApp(h: LocalHandlers, mapError: ErrorMapper) {
  const parse = async (raw: Request, needs: Needs): Promise<CniRequest | CniErrorBody> => {
    const text = await readCapped(raw, MAX_LOCAL_BODY);
    if (text === undefined) return TOO_LARGE;
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      return fail(ERR.decoding, "Cannot decode the request: invalid JSON", (err as Error).message);
    }
    const r = requestSchema.safeParse(json);
    if (!r.success) {
      const issue = r.error.issues[0];
      const where = issue?.path.join(".") || "request";
      const unknown = issue?.code === "unrecognized_keys";
      return fail(
        unknown ? ERR.unsupportedField : ERR.invalidConfig,
        unknown
          ? `Unsupported field in the request: ${issue.keys.join(", ")}`
          : `Invalid request: ${where}: ${issue?.message}`,
      );
    }
    const req = r.data as CniRequest;
    const problem = attachmentProblem(req, needs);
    if (problem !== undefined) return fail(ERR.invalidEnv, problem);
    if (needs !== "attachment+netns" || req.config.prevResult === undefined) return req;
    try {
      return { ...req, config: { ...req.config, prevResult: parseResult(req.config.prevResult) } };
    } catch (err) {
      return fail(ERR.invalidConfig, `Invalid prevResult: ${(err as Error).message}`);
    }
  };
  const isError = (v: CniRequest | CniErrorBody): v is CniErrorBody => "code" in v;
  const refuse = (c: Context, e: CniErrorBody) => c.json(e, e === TOO_LARGE ? 413 : 400);
  const run = async <T>(fn: () => Promise<T>) => {
    try {
      return { ok: true as const, value: await fn() };
    } catch (err) {
      return { ok: false as const, ...mapError(err) };
    }
  };

  const none = () => Promise.reject(new NotFoundError("This node manager attaches no workloads"));
  const w: WorkloadHandlers = h.workloads ??
    { allocate: none, register: none, peers: none, release: none, list: none };
  /** Runs a workload step for a checked name; a bad name is 400 and reaches no handler. */
  const step = async <T>(c: Context, fn: (name: string) => Promise<T>) => {
    const name = c.req.param("name") ?? "";
    const problem = nameProblem(name);
    if (problem !== undefined) {
      return c.json(
        {
          error: `Invalid workload name ${quoteValue(name)}: ${problem}`,
          code: "TypeError",
        } satisfies WorkloadErrorBody,
        400,
      );
    }
    try {
      return c.json(await fn(name) as Record<string, unknown>, 200);
    } catch (err) {
      const f = workloadFailure(err);
      return c.json(f.body, f.status);
    }
  };

  return new Hono()
    .get(LOCAL_PATHS.workloads, async (c) => {
      try {
        return c.json({ workloads: await w.list() }, 200);
      } catch (err) {
        const f = workloadFailure(err);
        return c.json(f.body, f.status);
      }
    })
    .post(`${LOCAL_PATHS.workloads}/:name/addresses`, (c) => step(c, (name) => w.allocate(name)))
    .put(`${LOCAL_PATHS.workloads}/:name/key`, (c) =>
      step(c, async (name) => {
        const { publicKey, endpointPort } = await jsonBody(c.req.raw, workloadKeySchema);
        return await w.register(name, {
          publicKey,
          ...(endpointPort !== undefined ? { endpointPort } : {}),
        });
      }))
    .get(`${LOCAL_PATHS.workloads}/:name/peers`, (c) => step(c, (name) => w.peers(name)))
    .delete(`${LOCAL_PATHS.workloads}/:name`, (c) => step(c, (name) => w.release(name)))
    .post(LOCAL_PATHS.add, async (c) => {
      const req = await parse(c.req.raw, "attachment+netns");
      if (isError(req)) return refuse(c, req);
      const r = await run(() => h.add(req));
      return r.ok ? c.json({ result: r.value } satisfies AddResponse) : c.json(r.body, r.status);
    })
    .post(LOCAL_PATHS.del, async (c) => {
      const req = await parse(c.req.raw, "attachment");
      if (isError(req)) return refuse(c, req);
      const r = await run(() => h.del(req));
      return r.ok ? c.json({}) : c.json(r.body, r.status);
    })
    .post(LOCAL_PATHS.check, async (c) => {
      const req = await parse(c.req.raw, "attachment+netns");
      if (isError(req)) return refuse(c, req);
      const r = await run(() => h.check(req));
      return r.ok ? c.json({}) : c.json(r.body, r.status);
    })
    .post(LOCAL_PATHS.status, async (c) => {
      const r = await run(() => h.status());
      if (!r.ok) return c.json(r.body, r.status);
      return r.value === undefined ? c.json({ ready: true }) : c.json(r.value, 503);
    })
    .post(LOCAL_PATHS.gc, async (c) => {
      const req = await parse(c.req.raw, "nothing");
      if (isError(req)) return refuse(c, req);
      const raw = req.config["cni.dev/valid-attachments"] ?? req.config["cni.dev/attachments"];
      let valid: Attachment[] | undefined;
      if (raw !== undefined) {
        const v = attachmentsSchema.safeParse(raw);
        if (!v.success) {
          return c.json(
            fail(
              ERR.invalidConfig,
              "Invalid cni.dev/valid-attachments: expected [{containerID, ifname}]",
            ),
            400,
          );
        }
        valid = v.data.map((a) => ({ containerId: a.containerID, ifname: a.ifname }));
      }
      const r = await run(() => h.gc(valid));
      return r.ok ? c.json(r.value) : c.json(r.body, r.status);
    })
    .post(LOCAL_PATHS.rotateKey, async (c) => {
      try {
        if (h.rotateKey === undefined) {
          throw new NotFoundError("Cannot rotate the node key: this node manager does not");
        }
        const { leadMs, pods } = await jsonBody(c.req.raw, rotateKeySchema, {});
        const answer = await h.rotateKey(leadMs, pods === undefined ? {} : { pods });
        return c.json(answer as unknown as Record<string, unknown>, 200);
      } catch (err) {
        const f = workloadFailure(err);
        return c.json(f.body, f.status);
      }
    })
    .get(LOCAL_PATHS.node, async (c) => c.json(await h.node() as Record<string, unknown>))
    .get(LOCAL_PATHS.peers, async (c) => c.json(await h.peers() as Record<string, unknown>))
    .get(
      LOCAL_PATHS.allocations,
      async (c) => c.json(await h.allocations() as Record<string, unknown>),
    )
    .notFound((c) => c.json(fail(ERR.invalidEnv, `Unknown local API path ${c.req.path}`), 404))
    .onError((err, c) => {
      const m = mapError(err);
      return c.json(m.body, m.status);
    });
}

export type LocalApp = ReturnType<typeof createLocalApp>;
