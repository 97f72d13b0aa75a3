/** A node's network options as the unit tests of its rules use them (nothing runs). */
import { RecordingRunner } from "../../lib/ip/mod.ts";
import { parsePortRule } from "../../lib/ip/nft.ts";
import { getLogger } from "../../lib/log.ts";
import type { NodeNetOptions } from "../../modes/node/netsetup.ts";

/** Node 3 of a cluster with the usual pools: masquerade on IPv4, the ingress filter on IPv6. */
export const NODE_NET: NodeNetOptions = {
  runner: new RecordingRunner(),
  wg: undefined as never,
  logger: getLogger("test"),
  iface: "wgcni0",
  privateKey: "",
  publicKey: "",
  listenPort: 51820,
  mtu: 1420,
  subnets: ["10.244.3.0/24", "fd00:10:244:3::/64"],
  podCidrs: ["10.244.0.0/16", "fd00:10:244::/56"],
  clientCidrs: ["10.250.0.0/24", "fd00:10:250::/112"],
  masquerade: [4],
  ingressFilter: [6],
  podOpenPorts: [parsePortRule("tcp/53"), parsePortRule("udp/53"), parsePortRule("tcp/8000-8100")],
};
