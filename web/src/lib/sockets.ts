// Socket data types (spec 1.2) on the canvas: one color per type, and the connection rule of
// studio/sockets.py (same type; asset references of the same kind).
import type { SocketSpec, SocketType } from './types';

const SOCKET_COLORS: Record<SocketType, string> = {
  String: '#7cc47f',
  Integer: '#5fb3d9',
  Float: '#a58cf0',
  Boolean: '#e07a7a',
  Image: '#f2b544',
  Video: '#e58f4f',
  Audio: '#4fd1c5',
  AssetReference: '#e86fb5',
  ControlMap: '#b7c95c',
  Mask: '#c0c0c0',
  PipelineReference: '#8f9bb3',
};

export function socketColor(type: SocketType): string {
  return SOCKET_COLORS[type] ?? '#999';
}

/** Why an output may not feed an input, or null when it may. */
export function refusal(output: SocketSpec, input: SocketSpec): string | null {
  if (output.type !== input.type) {
    return `${output.type} output cannot feed the ${input.type} input "${input.name}"`;
  }
  if (output.asset_kind && input.asset_kind && output.asset_kind !== input.asset_kind) {
    return `a ${output.asset_kind} asset cannot feed the "${input.name}" input (takes a ${input.asset_kind})`;
  }
  return null;
}
