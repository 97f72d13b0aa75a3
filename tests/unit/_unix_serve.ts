/**
 * `Deno.serve(handler)` on a unix socket in a temporary directory; disposing
 * it stops the server and removes the directory.
 */
export async function serveOnSocket(
  handler: Deno.ServeHandler,
): Promise<AsyncDisposable & { readonly path: string }> {
  const dir = await Deno.makeTempDir({ prefix: "wgcni-unix-serve-" });
  const path = `${dir}/api.sock`;
  const ac = new AbortController();
  const server = Deno.serve({ path, signal: ac.signal, onListen() {} }, handler);
  return {
    path,
    async [Symbol.asyncDispose]() {
      ac.abort();
      await server.finished;
      await Deno.remove(dir, { recursive: true });
    },
  };
}
