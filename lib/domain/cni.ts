/** CNI's own values: a result as the spec defines it, and an attachment (container id, ifname). */

/** An interface in a CNI 1.1.0 result. */
export interface CniInterface {
  readonly name: string;
  readonly mac?: string;
  readonly mtu?: number;
  /** The netns path for interfaces inside the container; absent for host interfaces. */
  readonly sandbox?: string;
}

/** An address in a CNI 1.1.0 result (`version` is added by the plugin for 0.3.x/0.4.0). */
export interface CniIp {
  readonly address: string;
  readonly gateway?: string;
  readonly interface?: number;
}

/** A route in a CNI 1.1.0 result. */
export interface CniRoute {
  readonly dst: string;
  readonly gw?: string;
  readonly mtu?: number;
  readonly advmss?: number;
  readonly priority?: number;
  readonly table?: number;
  readonly scope?: number;
}

export interface CniDns {
  readonly nameservers?: readonly string[];
  readonly domain?: string;
  readonly search?: readonly string[];
  readonly options?: readonly string[];
}

/** A CNI result in 1.1.0 shape (the node manager's canonical form). */
export interface CniResult {
  readonly cniVersion: string;
  readonly interfaces?: readonly CniInterface[];
  readonly ips?: readonly CniIp[];
  readonly routes?: readonly CniRoute[];
  readonly dns?: CniDns;
}

/** One attachment as GC names it. */
export interface Attachment {
  readonly containerId: string;
  readonly ifname: string;
}
