/** The CNI plugin entry (CNI_COMMAND set). Lean imports only. */
import { CNI_VERSIONS } from "../../lib/version.ts";

/** Runs one plugin invocation and returns the exit code. */
export function pluginMain(): Promise<number> {
  const command = Deno.env.get("CNI_COMMAND") ?? "";
  if (command === "VERSION") {
    Deno.stdout.writeSync(
      new TextEncoder().encode(
        JSON.stringify({ cniVersion: "1.1.0", supportedVersions: CNI_VERSIONS }) + "\n",
      ),
    );
    return Promise.resolve(0);
  }
  Deno.stdout.writeSync(
    new TextEncoder().encode(
      JSON.stringify({
        cniVersion: "1.1.0",
        code: 4,
        msg: `unsupported CNI_COMMAND "${command}"`,
      }) +
        "\n",
    ),
  );
  return Promise.resolve(1);
}
