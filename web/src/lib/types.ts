// The shapes the API sends (docs/api.md), as far as the canvas reads them: project.json's models
// (studio/manifest.py) and GET /api/node-types. What the WebSocket carries is generated from the
// server's models (protocol.ts); the types both share come from there.
import type { NodeState, Quality } from './protocol';

export type { NodeState, Quality, QueuePlace, TierState } from './protocol';

export type SocketType =
  | 'String'
  | 'Integer'
  | 'Float'
  | 'Boolean'
  | 'Image'
  | 'Video'
  | 'Audio'
  | 'AssetReference'
  | 'ControlMap'
  | 'Mask'
  | 'PipelineReference';

export type AssetKind = 'character' | 'style';

export interface SocketSpec {
  name: string;
  type: SocketType;
  asset_kind: AssetKind | null;
}

export interface JsonSchema {
  /** text_to_image params: each aspect preset's [width, height] in pixels (studio.nodes). */
  'x-aspect-presets'?: Record<string, [number, number]>;
  type?: string;
  minimum?: number;
  maximum?: number;
  multipleOf?: number;
  enum?: string[];
  anyOf?: JsonSchema[];
  properties?: Record<string, JsonSchema>;
}

export interface NodeTypeSpec {
  name: string;
  title: string;
  category: string;
  inputs: SocketSpec[];
  outputs: SocketSpec[];
  params: JsonSchema;
  has_takes: boolean;
}

export interface Position {
  x: number;
  y: number;
}

export type TakeStatus = 'queued' | 'generating' | 'completed' | 'failed' | 'cancelled';

export interface Take {
  id: string;
  number: number;
  path: string;
  status: TakeStatus;
  error: string | null;
}

export type Params = Record<string, unknown>;

export interface StudioNode {
  id: string;
  node_type: string;
  title: string;
  params: Params;
  position: Position;
  takes: Take[];
  active_take: string | null;
  /** Derived by the server from the takes and the graph (studio.graph.node_state). */
  state: NodeState;
}

export interface StudioEdge {
  id: string;
  source: string;
  source_socket: string;
  target: string;
  target_socket: string;
}

export interface Asset {
  id: string;
  kind: AssetKind;
  name: string;
  /** Relative to the workspace root (Library/LoRAs/alex.safetensors). */
  lora_path: string | null;
  lora_weight: number;
  trigger_words: string[];
  style_prompt: string;
}

/** What POST /api/projects/{id}/assets takes: an asset without its id (the server makes it). */
export type AssetDraft = Omit<Asset, 'id'>;

/** A LoRA file of the workspace (GET /api/loras). */
export interface LoraFile {
  path: string;
  size: number;
}

export interface Project {
  id: string;
  name: string;
  quality: Quality;
  nodes: StudioNode[];
  edges: StudioEdge[];
  assets: Asset[];
}

export interface ProjectSummary {
  id: string;
  name: string;
  quality: Quality;
  nodes: number;
}
