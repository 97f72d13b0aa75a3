/** `wgcni completion bash|zsh|fish`: shell completion generated from the command tree. */
import { type Command, InvalidArgumentError } from "@commander-js/extra-typings";
import { say } from "./_output.ts";

/** Every command path (space-joined, "" for the root) with its subcommands and long options. */
export function commandTable(root: Command): Map<string, { subs: string[]; flags: string[] }> {
  const out = new Map<string, { subs: string[]; flags: string[] }>();
  const walk = (cmd: Command, path: string[]) => {
    const subs = cmd.commands.map((c) => c.name()).filter((n) => n !== "help");
    const flags = cmd.options.map((o) => o.long).filter((l): l is string => !!l);
    out.set(path.join(" "), { subs, flags: [...flags, "--help"] });
    for (const c of cmd.commands) walk(c as Command, [...path, c.name()]);
  };
  walk(root, []);
  return out;
}

const shq = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;

/** A bash completion script (also used by zsh through bashcompinit). */
export function bashScript(table: ReturnType<typeof commandTable>): string {
  const cases = [...table].map(([path, { subs, flags }]) =>
    `    ${shq(path)}) words=${shq([...subs, ...flags].join(" "))} ;;`
  );
  return [
    "# wgcni completion for bash: source it, or put it in /etc/bash_completion.d/wgcni",
    "_wgcni() {",
    '  local cur="${COMP_WORDS[COMP_CWORD]}" path="" w i words=""',
    "  for ((i = 1; i < COMP_CWORD; i++)); do",
    '    w="${COMP_WORDS[i]}"',
    '    case "$w" in -*) continue ;; esac',
    '    case " $(_wgcni_subs "$path") " in *" $w "*) path="${path:+$path }$w" ;; esac',
    "  done",
    '  case "$path" in',
    ...cases,
    "  esac",
    '  COMPREPLY=($(compgen -W "$words" -- "$cur"))',
    "}",
    "_wgcni_subs() {",
    '  case "$1" in',
    ...[...table].map(([path, { subs }]) => `    ${shq(path)}) echo ${shq(subs.join(" "))} ;;`),
    "  esac",
    "}",
    "complete -F _wgcni wgcni",
    "",
  ].join("\n");
}

/** A fish completion script. */
export function fishScript(table: ReturnType<typeof commandTable>): string {
  const lines = [
    "# wgcni completion for fish: put it in ~/.config/fish/completions/wgcni.fish",
    "function __wgcni_path",
    "    set -l path",
    "    set -l tokens (commandline -opc)",
    "    for t in $tokens[2..-1]",
    "        string match -q -- '-*' $t; and continue",
    "        set -l known (__wgcni_subs (string join ' ' $path))",
    "        contains -- $t $known; and set path $path $t",
    "    end",
    "    string join ' ' $path",
    "end",
    "function __wgcni_subs",
    '    switch "$argv"',
    ...[...table].map(([path, { subs }]) =>
      `        case ${shq(path)}\n            printf '%s\\n' ${subs.map(shq).join(" ") || "''"}`
    ),
    "    end",
    "end",
    "complete -c wgcni -f",
  ];
  for (const [path, { subs, flags }] of table) {
    const when = `-n ${shq(`test (__wgcni_path) = ${shq(path)}`)}`;
    if (subs.length) lines.push(`complete -c wgcni ${when} -a ${shq(subs.join(" "))}`);
    for (const f of flags) lines.push(`complete -c wgcni ${when} -l ${f.replace(/^--/, "")}`);
  }
  return lines.join("\n") + "\n";
}

/** Prints the script for `shell`. */
export function printCompletion(shell: string, table: ReturnType<typeof commandTable>): void {
  switch (shell) {
    case "bash":
      return say(bashScript(table).trimEnd());
    case "zsh":
      return say(
        [
          "# wgcni completion for zsh: source it from ~/.zshrc",
          "autoload -U +X bashcompinit && bashcompinit",
          bashScript(table).trimEnd(),
        ].join("\n"),
      );
    case "fish":
      return say(fishScript(table).trimEnd());
    default:
      throw new InvalidArgumentError(`expected bash, zsh or fish, got "${shell}"`);
  }
}
