/** wgcni's own nftables table: masquerade of pod traffic leaving the cluster pools. */

/** The table wgcni owns; nothing else is touched. */
export const NFT_TABLE = "wgcni";

/**
 * The ruleset (for `nft -f -`) that replaces wgcni's table atomically:
 * traffic from a pool to outside every pool, not leaving through the mesh
 * interface, is masqueraded, per family that is switched on.
 */
export function masqueradeRuleset(options: {
  readonly iface: string;
  readonly v4Pools: readonly string[];
  readonly v6Pools: readonly string[];
  readonly families: readonly (4 | 6)[];
}): string {
  const rules: string[] = [];
  const v4 = options.v4Pools.join(", ");
  const v6 = options.v6Pools.join(", ");
  if (options.families.includes(4) && options.v4Pools.length) {
    rules.push(
      `    oifname != "${options.iface}" ip saddr { ${v4} } ip daddr != { ${v4} } masquerade`,
    );
  }
  if (options.families.includes(6) && options.v6Pools.length) {
    rules.push(
      `    oifname != "${options.iface}" ip6 saddr { ${v6} } ip6 daddr != { ${v6} } masquerade`,
    );
  }
  return [
    `table inet ${NFT_TABLE} {}`,
    `delete table inet ${NFT_TABLE}`,
    `table inet ${NFT_TABLE} {`,
    "  chain postrouting {",
    "    type nat hook postrouting priority srcnat; policy accept;",
    ...rules,
    "  }",
    "}",
    "",
  ].join("\n");
}

/** Removes wgcni's table (for `nft -f -`), whether or not it exists. */
export function removeRuleset(): string {
  return `table inet ${NFT_TABLE} {}\ndelete table inet ${NFT_TABLE}\n`;
}
