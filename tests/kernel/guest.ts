/**
 * A throwaway Linux guest on Debian's own kernel, for the parts of wgcni
 * this machine's kernel cannot run (kernel WireGuard): qemu with software
 * emulation, no network card, this machine's root filesystem read-only over
 * 9p under a tmpfs overlay, WireGuard and netfilter modules loaded, one
 * command run as root; its stdout, stderr and exit status come back through
 * a second, writable 9p share.
 *
 * The kernel package is downloaded and unpacked into a cache directory,
 * never installed into this machine.
 */
import { concatBytes } from "../../lib/bytes.ts";
import { pathExists } from "../../lib/fs.ts";

/** A Debian kernel unpacked for booting in a guest. */
export interface Kernel {
  /** `uname -r` inside the guest, e.g. 6.1.0-57-amd64. */
  readonly release: string;
  /** The unpacked package (boot/, lib/modules/RELEASE/). */
  readonly root: string;
  /** The uncompressed kernel image (booting the bzImage means decompressing under emulation). */
  readonly vmlinux: string;
  /** The module tree, with a busybox module index. */
  readonly modules: string;
}

/** Where unpacked kernels are kept between runs (outside any repository). */
export const DEFAULT_KERNEL_CACHE = "/var/cache/wgcni-test-kernel";

/** Debian packages the guest needs on this machine. */
export const HOST_PACKAGES = ["qemu-system-x86", "busybox-static", "xz-utils"] as const;

/**
 * Modules loaded before anything runs. The kernel loads more on demand
 * through busybox's modprobe (iptables matches, qdiscs), but these are the
 * ones wgcni and its tests use, named so a missing one fails loudly.
 */
export const GUEST_MODULES = [
  "wireguard",
  "tun",
  "veth",
  "bridge",
  "nf_tables",
  "nft_chain_nat",
  "nft_masq",
  "nft_nat",
  "nft_ct",
  "nft_fib_inet",
  "nft_reject_inet",
  "nf_conntrack",
  "br_netfilter",
] as const;

/** What the initramfs loads to reach the root filesystem (their dependencies come along). */
const BOOT_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_rng"] as const;

const decoder = new TextDecoder();
const encoder = new TextEncoder();

async function command(
  argv: readonly string[],
  options: { cwd?: string; stdin?: Uint8Array } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const [cmd, ...args] = argv as [string, ...string[]];
  const child = new Deno.Command(cmd, {
    args,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C", DEBIAN_FRONTEND: "noninteractive" },
    ...(options.cwd ? { cwd: options.cwd } : {}),
  }).spawn();
  if (options.stdin) {
    const w = child.stdin.getWriter();
    await w.write(options.stdin);
    await w.close();
  }
  const out = await child.output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

async function run(argv: readonly string[], options: { cwd?: string } = {}): Promise<string> {
  const r = await command(argv, options);
  if (r.code !== 0) {
    throw new Error(`Command failed (exit ${r.code}): ${argv.join(" ")}: ${r.stderr.trim()}`);
  }
  return r.stdout;
}

/**
 * Installs {@linkcode HOST_PACKAGES} that are missing (apt-get, as root),
 * refreshing the package lists once if they are too old to have them.
 */
export async function ensureHostPackages(log: (line: string) => void = () => {}): Promise<void> {
  const missing: string[] = [];
  for (const p of HOST_PACKAGES) {
    const r = await command(["dpkg-query", "-W", "-f=${Status}", p]);
    if (!r.stdout.includes("install ok installed")) missing.push(p);
  }
  if (missing.length === 0) return;
  if (Deno.uid() !== 0) {
    throw new Error(
      `Cannot boot a test kernel: ${missing.join(", ")} missing and not root to install them`,
    );
  }
  log(`installing ${missing.join(" ")}`);
  const install = ["apt-get", "install", "-y", "--no-install-recommends", "-qq", ...missing];
  if ((await command(install)).code !== 0) {
    await run(["apt-get", "update", "-qq"]);
    await run(install);
  }
}

/** The kernel package `linux-image-amd64` depends on (e.g. linux-image-6.1.0-57-amd64). */
export async function kernelPackage(): Promise<string | undefined> {
  const r = await command(["apt-cache", "depends", "linux-image-amd64"]);
  return r.stdout.match(/Depends: (linux-image-\d[^\s]*-amd64)\b/)?.[1];
}

/**
 * Downloads and unpacks Debian's current kernel into `cacheDir/RELEASE`
 * (once), extracts the uncompressed image and builds the module index.
 * Offline, the newest kernel already in the cache is used.
 */
export async function prepareKernel(
  options: { cacheDir?: string; log?: (line: string) => void } = {},
): Promise<Kernel> {
  const cacheDir = options.cacheDir ?? Deno.env.get("WGCNI_TEST_KERNEL_CACHE") ??
    DEFAULT_KERNEL_CACHE;
  const log = options.log ?? (() => {});
  let pkg = await kernelPackage();
  if (pkg === undefined && Deno.uid() === 0) {
    await command(["apt-get", "update", "-qq"]);
    pkg = await kernelPackage();
  }
  let release = pkg?.replace(/^linux-image-/, "");
  if (release === undefined) {
    release = (await cachedReleases(cacheDir)).at(-1);
    if (release === undefined) {
      throw new Error(
        "Cannot find a test kernel: apt-cache knows no linux-image-amd64 and none is cached",
      );
    }
  }
  const kernel = kernelIn(`${cacheDir}/${release}`, release);
  if (await pathExists(`${kernel.root}/.ready`)) return kernel;

  log(`downloading and unpacking ${pkg} into ${cacheDir}/${release}`);
  await Deno.mkdir(cacheDir, { recursive: true });
  const work = await Deno.makeTempDir({ dir: cacheDir, prefix: `.${release}-` });
  try {
    // apt-get download writes as its own user when it can; the directory lets it.
    await Deno.chmod(work, 0o777);
    await run(["apt-get", "download", "-qq", `${pkg}`], { cwd: work });
    const deb = [...Deno.readDirSync(work)].find((e) => e.name.endsWith(".deb"))?.name;
    if (!deb) throw new Error(`Cannot unpack ${pkg}: apt-get download left no .deb`);
    await run(["dpkg", "-x", `${work}/${deb}`, `${work}/root`]);
    await Deno.remove(`${work}/${deb}`);
    await Deno.chmod(work, 0o755);
    const staged = kernelIn(work, release);
    await extractVmlinux(`${work}/root/boot/vmlinuz-${release}`, staged.vmlinux);
    await run(["busybox", "depmod", "-b", `${work}/root`, release]);
    await Deno.writeTextFile(`${work}/root/.ready`, `${pkg}\n`);
    if (await pathExists(`${kernel.root}/.ready`)) {
      // Another run prepared it meanwhile (and may be booting it).
      await Deno.remove(work, { recursive: true });
      return kernel;
    }
    await Deno.remove(`${cacheDir}/${release}`, { recursive: true }).catch(() => {});
    await Deno.rename(work, `${cacheDir}/${release}`);
  } catch (err) {
    await Deno.remove(work, { recursive: true }).catch(() => {});
    throw err;
  }
  return kernel;
}

function kernelIn(dir: string, release: string): Kernel {
  return {
    release,
    root: `${dir}/root`,
    vmlinux: `${dir}/vmlinux`,
    modules: `${dir}/root/lib/modules/${release}`,
  };
}

async function cachedReleases(cacheDir: string): Promise<string[]> {
  const found: string[] = [];
  try {
    for (const e of Deno.readDirSync(cacheDir)) {
      if (!e.name.startsWith(".") && await pathExists(`${cacheDir}/${e.name}/root/.ready`)) {
        found.push(e.name);
      }
    }
  } catch {
    // No cache yet.
  }
  return found.sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
}

/**
 * Writes the kernel inside a bzImage uncompressed: the xz stream starts at
 * the bytes FD 37 7A 58 5A 00 (Debian compresses its kernels with xz).
 */
export async function extractVmlinux(bzImage: string, out: string): Promise<void> {
  const image = await Deno.readFile(bzImage);
  const at = indexOf(image, new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]));
  if (at < 0) throw new Error(`Cannot extract the kernel from ${bzImage}: no xz stream in it`);
  const r = await new Deno.Command("xz", {
    args: ["-dc", "--single-stream"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = r.stdin.getWriter();
  // xz stops reading at the end of the stream; the image's trailing bytes are not needed.
  const writing = w.write(image.subarray(at)).then(() => w.close()).catch(() => {});
  const [out_] = await Promise.all([r.output(), writing]);
  if (!out_.success || out_.stdout.length < 1_000_000) {
    throw new Error(
      `Cannot extract the kernel from ${bzImage}: xz said ${decoder.decode(out_.stderr).trim()}`,
    );
  }
  await Deno.writeFile(out, out_.stdout);
}

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** One entry of a cpio archive. */
export type CpioEntry =
  | { readonly path: string; readonly type: "dir"; readonly mode?: number }
  | {
    readonly path: string;
    readonly type: "file";
    readonly data: Uint8Array;
    readonly mode?: number;
  }
  | { readonly path: string; readonly type: "symlink"; readonly target: string }
  | {
    readonly path: string;
    readonly type: "char";
    readonly major: number;
    readonly minor: number;
  };

/**
 * A cpio archive in the "newc" format the kernel unpacks as an initramfs:
 * a 110-byte ASCII header per entry, the name and the data each padded to
 * four bytes, and a TRAILER!!! entry at the end.
 */
export function newcArchive(entries: readonly CpioEntry[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let size = 0;
  const push = (b: Uint8Array) => {
    parts.push(b);
    size += b.length;
  };
  const pad = () => {
    if (size % 4) push(new Uint8Array(4 - (size % 4)));
  };
  const hex = (n: number) => n.toString(16).padStart(8, "0");
  let ino = 1;
  const entry = (path: string, mode: number, data: Uint8Array, rdev: [number, number]) => {
    const name = encoder.encode(path.replace(/^\/+/, "") + "\0");
    const fields = [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, rdev[0], rdev[1], name.length, 0];
    push(encoder.encode("070701" + fields.map(hex).join("")));
    push(name);
    pad();
    push(data);
    pad();
  };
  for (const e of entries) {
    switch (e.type) {
      case "dir":
        entry(e.path, 0o040000 | (e.mode ?? 0o755), new Uint8Array(), [0, 0]);
        break;
      case "file":
        entry(e.path, 0o100000 | (e.mode ?? 0o644), e.data, [0, 0]);
        break;
      case "symlink":
        entry(e.path, 0o120777, encoder.encode(e.target), [0, 0]);
        break;
      case "char":
        entry(e.path, 0o020600, new Uint8Array(), [e.major, e.minor]);
        break;
    }
  }
  ino = 0;
  entry("TRAILER!!!", 0, new Uint8Array(), [0, 0]);
  return concatBytes(parts);
}

/**
 * The modules to insert, dependencies first, from the tree's modules.dep
 * (`path: dep dep …`, paths relative to the tree).
 */
export function moduleLoadOrder(modulesDep: string, wanted: readonly string[]): string[] {
  const norm = (n: string) => n.replaceAll("-", "_");
  const nameOf = (path: string) => norm(path.replace(/^.*\//, "").replace(/\.ko(\.\w+)?$/, ""));
  const deps = new Map<string, { path: string; deps: string[] }>();
  for (const line of modulesDep.split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const path = line.slice(0, colon).trim();
    deps.set(nameOf(path), {
      path,
      deps: line.slice(colon + 1).trim().split(/\s+/).filter(Boolean),
    });
  }
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    const m = deps.get(name);
    if (!m) throw new Error(`Cannot find module ${name} in modules.dep`);
    for (const d of m.deps) visit(nameOf(d));
    order.push(m.path);
  };
  for (const w of wanted) visit(norm(w));
  return order;
}

/**
 * The first stage in the guest: load the virtio, 9p and overlay modules,
 * mount this machine's root read-only with a tmpfs overlay on top, the
 * usual kernel filesystems, the job share and the kernel's modules, then
 * hand over to the job's own script. The guest gets its own empty /tmp and
 * /run; `keep` names directories under them that it sees from this machine
 * all the same (a checkout in /tmp).
 */
export function initScript(
  kernel: Pick<Kernel, "release" | "modules">,
  keep: readonly string[] = [],
): string {
  const { release, modules } = kernel;
  const kept = keep.filter((p) => /^\/(tmp|run)\/./.test(p)).map(shellQuote);
  const hold = kept.map((p, i) => `mkdir -p /keep${i}; mount -o bind /newroot${p} /keep${i}`);
  const put = kept.map((p, i) => `mkdir -p /newroot${p}; mount --move /keep${i} /newroot${p}`);
  return `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "wgcni-guest: $*"; echo b > /proc/sysrq-trigger; sleep 10; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/$m" || fail "cannot insert $m"; done
mkdir -p /lower /rw /newroot
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /lower ||
  fail "cannot mount the host's root"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
  fail "cannot mount the overlay"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
${hold.join("\n")}
mount -t tmpfs -o mode=0755 run /newroot/run
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
${put.join("\n")}
mkdir -p /newroot/run/wgcni-guest /newroot/lib/modules/${release}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 job /newroot/run/wgcni-guest ||
  fail "cannot mount the job share"
mount -o bind /newroot${modules} /newroot/lib/modules/${release}
umount /proc /sys /dev
exec switch_root /newroot /bin/sh /run/wgcni-guest/stage2.sh
`;
}

/** Quotes one word for sh. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'"'"'`)}'`;
}

/** What the guest runs as root once it is up. */
export interface GuestJob {
  readonly argv: readonly string[];
  readonly cwd: string;
  readonly env: Readonly<Record<string, string>>;
  /** The guest powers itself off after this long, should the host no longer be there to. */
  readonly limitS: number;
  /** Programs that must not run: replaced, in the guest's overlay only, by one that fails. */
  readonly forbid?: readonly string[];
}

/**
 * The second stage, as PID 1 of the real root: the rest of the mounts,
 * modules, limits, the kernel-WireGuard check, then the job; its outcome
 * is written to the job share, and the guest is reset (qemu runs with
 * -no-reboot, so that ends it).
 */
export function stage2Script(job: GuestJob): string {
  const env = Object.entries(job.env).map(([k, v]) => `export ${k}=${shellQuote(v)}`);
  return `#!/bin/sh
export HOME=/root LC_ALL=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
G=/run/wgcni-guest
end() { sync; echo b > /proc/sysrq-trigger; sleep 60; }
fail() { echo "wgcni-guest: $*" | tee -a $G/stderr; echo 125 > $G/status; end; }
# Should the host have gone away, the guest still ends.
( sleep ${job.limitS}; echo "wgcni-guest: time limit reached"; end ) &
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t mqueue mqueue /dev/mqueue
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
# The kernel asks for modules (iptables matches, qdiscs) with busybox's modprobe.
echo $G/modprobe > /proc/sys/kernel/modprobe
for m in ${GUEST_MODULES.join(" ")}; do
  busybox modprobe $m || fail "cannot load module $m"
done
ip link set lo up
hostname wgcni-guest
ulimit -n 1048576
ip link add wgcniprobe type wireguard || fail "kernel WireGuard is not available in the guest"
ip link del wgcniprobe
${
    (job.forbid ?? []).map((p) =>
      `for f in $(which -a ${
        shellQuote(p)
      }); do printf '#!/bin/sh\\necho "wgcni-guest: ${p} must not run here" >&2\\nexit 1\\n' > "$f"; done`
    ).join("\n")
  }
${env.join("\n")}
cd ${shellQuote(job.cwd)} || fail "cannot enter ${job.cwd}"
${job.argv.map(shellQuote).join(" ")} >>$G/stdout 2>>$G/stderr </dev/null
echo $? > $G/status
end
`;
}

/** How a guest run ended. */
/**
 * How many times slower the guest runs than this machine (software
 * emulation of its CPU): the tests' time budgets are scaled by it.
 */
export const GUEST_TIME_SCALE = 10;

/**
 * The end-to-end files the kernel group runs by default: every one whose
 * outcome depends on the WireGuard backend (pod and node interfaces, their
 * sockets, peers, moves, clean-up, reboots, the demo, chaining, podman,
 * workloads). `--all` adds those about the control plane and the node's
 * state (manager fail-over, store identity, a full state directory,
 * metrics, the checks of CNI_NETNS made before any interface exists),
 * which use the same data path and pass there too, at about twice the time
 * under emulation. Steps marked backend-neutral in the group's files (the
 * older CNI versions' result formats, more ways of losing the node store,
 * the demo's own clean-up) run on this machine only.
 */
export const KERNEL_GROUP = [
  "tests/e2e/cluster_demo_test.ts",
  "tests/e2e/cni_conformance_test.ts",
  "tests/e2e/node_attach_test.ts",
  "tests/e2e/node_direct_test.ts",
  "tests/e2e/node_firewall_test.ts",
  "tests/e2e/node_mesh_test.ts",
  "tests/e2e/node_store_rebuild_test.ts",
  "tests/e2e/node_nat_test.ts",
  "tests/e2e/node_mtu_test.ts",
  "tests/e2e/podman_test.ts",
];

export interface GuestResult {
  /** The command's exit status; undefined when the guest ended without one (crash, time-out). */
  readonly code: number | undefined;
  readonly stdout: string;
  readonly stderr: string;
  /** The guest's serial console (kernel messages, boot failures). */
  readonly console: string;
  readonly seconds: number;
  readonly timedOut: boolean;
  /** Ended early by SIGINT or SIGTERM here. */
  readonly interrupted: boolean;
}

export interface GuestOptions {
  /** Working directory in the guest (the same path as here; default: the current one). */
  readonly cwd?: string;
  /** Extra environment of the command. */
  readonly env?: Readonly<Record<string, string>>;
  /** Overall limit, boot included (default 30 minutes). */
  readonly timeoutMs?: number;
  /** Called with the command's output as it arrives. */
  readonly onStdout?: (chunk: Uint8Array) => void;
  readonly onStderr?: (chunk: Uint8Array) => void;
  readonly kernel?: Kernel;
  readonly log?: (line: string) => void;
  /** Guest memory in MiB (default 4096). */
  readonly memoryMiB?: number;
  /** Programs the command must not run (see {@linkcode GuestJob.forbid}). */
  readonly forbid?: readonly string[];
}

/**
 * Boots the guest, runs `argv` in it as root and returns its outcome. The
 * qemu process is ended (by its pid) on every way out: the command ending,
 * the time-out, an error here, SIGINT or SIGTERM.
 */
export async function runInGuest(
  argv: readonly string[],
  options: GuestOptions = {},
): Promise<GuestResult> {
  if (argv.length === 0) throw new TypeError("Cannot run an empty command in the guest");
  const log = options.log ?? (() => {});
  await ensureHostPackages(log);
  const kernel = options.kernel ?? await prepareKernel({ log });
  const timeoutMs = options.timeoutMs ?? 30 * 60_000;
  const dir = await Deno.makeTempDir({ prefix: "wgcni-guest-" });
  const cwd = options.cwd ?? Deno.cwd();
  const t0 = performance.now();
  let qemu: Deno.ChildProcess | undefined;
  let timedOut = false;
  let interrupted = false;
  const stop = () => {
    try {
      qemu?.kill("SIGKILL");
    } catch {
      // Already ended.
    }
  };
  const onSignal = () => {
    interrupted = true;
    stop();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    const job = `${dir}/job`;
    await Deno.mkdir(job);
    await Deno.writeTextFile(
      `${job}/stage2.sh`,
      stage2Script({
        argv,
        cwd,
        env: options.env ?? {},
        limitS: Math.ceil(timeoutMs / 1000) + 30,
        ...(options.forbid ? { forbid: options.forbid } : {}),
      }),
      { mode: 0o755 },
    );
    await Deno.writeTextFile(`${job}/modprobe`, '#!/bin/sh\nexec busybox modprobe "$@"\n', {
      mode: 0o755,
    });
    for (const f of ["stdout", "stderr"]) await Deno.writeFile(`${job}/${f}`, new Uint8Array());
    // What the command needs of this machine under /tmp or /run, which the guest has its own of.
    const keep = [
      cwd,
      argv[0]?.startsWith("/") ? argv[0].replace(/\/[^/]*$/, "") : "",
      options.env?.DENO_DIR ?? "",
    ]
      .filter((p) => p !== "");
    await Deno.writeFile(`${dir}/initramfs.cpio`, await initramfs(kernel, keep));

    qemu = new Deno.Command("qemu-system-x86_64", {
      args: [
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        String(options.memoryMiB ?? 4096),
        "-nic",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        `file:${dir}/console.log`,
        "-kernel",
        kernel.vmlinux,
        "-initrd",
        `${dir}/initramfs.cpio`,
        "-append",
        "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        `local,path=${job},mount_tag=job,security_model=none,multidevs=remap`,
        "-device",
        "virtio-rng-pci",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    log(`qemu started (pid ${qemu.pid}), kernel ${kernel.release}`);
    const timer = setTimeout(() => {
      timedOut = true;
      stop();
    }, timeoutMs);
    const ended = qemu.output();
    const follow = [
      followFile(`${job}/stdout`, ended, options.onStdout),
      followFile(`${job}/stderr`, ended, options.onStderr),
    ];
    const out = await ended;
    clearTimeout(timer);
    const [stdout, stderr] = await Promise.all(follow);
    const status = await Deno.readTextFile(`${job}/status`).catch(() => "");
    const qemuSaid = decoder.decode(out.stderr).trim();
    if (qemuSaid && !status) log(`qemu: ${qemuSaid}`);
    return {
      code: status.trim() === "" ? undefined : Number(status.trim()),
      stdout: decoder.decode(stdout),
      stderr: decoder.decode(stderr),
      console: await Deno.readTextFile(`${dir}/console.log`).catch(() => ""),
      seconds: (performance.now() - t0) / 1000,
      timedOut,
      interrupted,
    };
  } finally {
    stop();
    if (qemu) await qemu.status.catch(() => {});
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** The initramfs: static busybox, /dev/console, the boot modules and the first stage. */
async function initramfs(kernel: Kernel, keep: readonly string[]): Promise<Uint8Array> {
  const busybox = (await run(["sh", "-c", "command -v busybox"])).trim();
  const order = moduleLoadOrder(
    await Deno.readTextFile(`${kernel.modules}/modules.dep`),
    BOOT_MODULES,
  );
  const entries: CpioEntry[] = [
    ...["bin", "dev", "proc", "sys", "mods"].map((path) => ({
      path,
      type: "dir" as const,
    })),
    { path: "dev/console", type: "char", major: 5, minor: 1 },
    { path: "bin/busybox", type: "file", data: await Deno.readFile(busybox), mode: 0o755 },
    { path: "bin/sh", type: "symlink", target: "busybox" },
  ];
  const dirs = new Set<string>();
  for (const m of order) {
    const parts = m.split("/").slice(0, -1);
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join("/");
      if (!dirs.has(d)) {
        dirs.add(d);
        entries.push({ path: `mods/${d}`, type: "dir" });
      }
    }
    entries.push({
      path: `mods/${m}`,
      type: "file",
      data: await Deno.readFile(`${kernel.modules}/${m}`),
    });
  }
  entries.push(
    {
      path: "modules.order",
      type: "file",
      data: encoder.encode(order.map((m) => `mods/${m}`).join("\n") + "\n"),
    },
    {
      path: "init",
      type: "file",
      data: encoder.encode(initScript(kernel, keep)),
      mode: 0o755,
    },
  );
  return newcArchive(entries);
}

/**
 * Passes on what a guest writes to a shared file as it grows, until the
 * guest has ended; returns all of it.
 */
async function followFile(
  path: string,
  ended: Promise<unknown>,
  onChunk: ((chunk: Uint8Array) => void) | undefined,
): Promise<Uint8Array> {
  let done = false;
  ended.then(() => done = true, () => done = true);
  const chunks: Uint8Array[] = [];
  const file = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(65536);
    for (;;) {
      const last = done;
      for (;;) {
        const n = await file.read(buf);
        if (n === null || n === 0) break;
        const chunk = buf.slice(0, n);
        chunks.push(chunk);
        onChunk?.(chunk);
      }
      if (last) break;
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    file.close();
  }
  return concatBytes(chunks);
}
