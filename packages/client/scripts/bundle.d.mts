import type { BuildOptions } from 'esbuild';
export const CLIENT_DIR: string;
export const BUNDLE_PATH: string;
export const NODE_STUBS: string[];
export function browserBuildOptions(entry: string, outfile: string): BuildOptions;
