/** WireGuard configuration values shared by rendering, parsing and control. */

/** One peer of an interface. */
export interface Peer {
  readonly publicKey: string;
  /** `IP:PORT` or `[IPv6]:PORT`; absent when the peer dials in. */
  readonly endpoint?: string;
  readonly allowedIps: readonly string[];
  /** Seconds; absent or 0 for off. */
  readonly persistentKeepalive?: number;
}

/** A whole interface as a wg-quick file describes it. */
export interface InterfaceConfig {
  readonly privateKey: string;
  readonly addresses: readonly string[];
  readonly listenPort?: number;
  readonly mtu?: number;
  readonly dns?: readonly string[];
  readonly peers: readonly Peer[];
}

/** A peer as the kernel (or wireguard-go) reports it. */
export interface PeerState {
  readonly publicKey: string;
  readonly hasPresharedKey: boolean;
  readonly endpoint: string | null;
  readonly allowedIps: readonly string[];
  /** Seconds since the epoch; 0 = never. */
  readonly latestHandshake: number;
  readonly rxBytes: number;
  readonly txBytes: number;
  readonly persistentKeepalive: number | null;
}

/** An interface as reported by `wg show NAME dump`, without its private key. */
export interface InterfaceState {
  readonly publicKey: string;
  readonly listenPort: number;
  readonly fwmark: number | null;
  readonly peers: readonly PeerState[];
}
