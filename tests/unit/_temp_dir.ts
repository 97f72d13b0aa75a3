/**
 * A temporary directory that is removed, with all below it, when the scope
 * holding it ends: `using tmp = tempDir("wgcni-x-");` then `tmp.path`.
 */
export function tempDir(prefix: string): Disposable & { readonly path: string } {
  const path = Deno.makeTempDirSync({ prefix });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path, { recursive: true }) };
}
