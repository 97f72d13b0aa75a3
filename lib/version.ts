/** The wgcni release and the CNI specification versions the plugin speaks. */
export const VERSION = "0.1.0";

/** CNI versions the plugin accepts and answers in, oldest first. */
export const CNI_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;
