/**
 * The node's CNI configuration: the conflist naming the local socket, written
 * atomically into the runtime's conf dir, and the plugin linked into its bin dir.
 */
import { writeFileAtomicSync } from "../../lib/fs.ts";
import { launcherScript, selfArgv } from "../../lib/self.ts";

export const CONFLIST_NAME = "10-wgcni.conflist";

/** The conflist the runtime reads. */
export function conflist(socket: string): string {
  return JSON.stringify(
    {
      cniVersion: "1.0.0",
      name: "wgcni",
      plugins: [{ type: "wgcni", socket }],
    },
    null,
    2,
  ) + "\n";
}

/**
 * Writes the conflist and makes `binDir/wgcni` run this wgcni: a link to the
 * installed executable (WGCNI_EXECUTABLE, set by the launcher) or, when
 * running from sources, a launcher script.
 */
export async function installCni(
  o: { confDir: string; binDir: string; socket: string },
): Promise<void> {
  await Deno.mkdir(o.confDir, { recursive: true, mode: 0o755 });
  writeFileAtomicSync(`${o.confDir}/${CONFLIST_NAME}`, conflist(o.socket), 0o644);
  await Deno.mkdir(o.binDir, { recursive: true, mode: 0o755 });
  const plugin = `${o.binDir}/wgcni`;
  const target = Deno.env.get("WGCNI_EXECUTABLE");
  if (target) {
    const current = await Deno.readLink(plugin).catch(() => undefined);
    if (current === target) return;
    const tmp = `${plugin}.tmp.${Deno.pid}`;
    await Deno.remove(tmp).catch(() => {});
    await Deno.symlink(target, tmp);
    await Deno.rename(tmp, plugin);
    return;
  }
  const info = await Deno.lstat(plugin).catch(() => undefined);
  if (info?.isSymlink) return; // installed by install.sh
  writeFileAtomicSync(plugin, launcherScript(selfArgv()), 0o755);
}

/** Removes the conflist (the plugin link stays: other nodes' tools may share the bin dir). */
export async function uninstallCni(o: { confDir: string }): Promise<void> {
  await Deno.remove(`${o.confDir}/${CONFLIST_NAME}`).catch(() => {});
}
