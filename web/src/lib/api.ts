// REST client for the API under /api (docs/api.md). Every failure becomes an ApiError whose
// message is the server's own explanation, ready to show to a person.
import type {
  Asset,
  AssetDraft,
  LoraFile,
  NodeTypeSpec,
  Params,
  Position,
  Project,
  ProjectSummary,
  Quality,
  StudioEdge,
  StudioNode,
  TierState,
} from './types';

// With STUDIO_API_TOKEN set, the studio is opened as /?token=…: every request carries it (as a
// query parameter where a browser cannot set headers: images, links, the WebSocket).
const token = new URLSearchParams(location.search).get('token');

export function withToken(url: string): string {
  return token ? `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}` : url;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

function explain(body: unknown, fallback: string): string {
  const detail = (body as { detail?: unknown } | null)?.detail;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => (typeof d === 'string' ? d : ((d as { msg?: string }).msg ?? JSON.stringify(d))))
      .join('; ');
  }
  return fallback;
}

async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  let response: Response;
  try {
    response = await fetch(`/api${path}`, {
      method,
      headers: {
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
        ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError('The studio server cannot be reached.', 0);
  }
  const text = await response.text();
  let parsed: unknown = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    throw new ApiError(
      explain(parsed, `${method} ${path}: ${response.status} ${response.statusText}`),
      response.status,
    );
  }
  return parsed as T;
}

const project = (id: string) => `/projects/${encodeURIComponent(id)}`;
const node = (id: string, nodeId: string) => `${project(id)}/nodes/${encodeURIComponent(nodeId)}`;

export const api = {
  nodeTypes: () => request<Record<string, NodeTypeSpec>>('GET', '/node-types'),
  /** Each tier's state from /healthz (outside /api: liveness needs no token). */
  tiers: async (): Promise<TierState[]> => {
    const response = await fetch('/healthz');
    const body = (await response.json()) as { tiers?: Record<string, Omit<TierState, 'tier'>> };
    return Object.entries(body.tiers ?? {}).map(([tier, t]) => ({ ...t, tier }) as TierState);
  },
  listProjects: () => request<ProjectSummary[]>('GET', '/projects'),
  createProject: (name: string, quality: Quality) => request<Project>('POST', '/projects', { name, quality }),
  getProject: (id: string) => request<Project>('GET', project(id)),
  setQuality: (id: string, quality: Quality) => request<Project>('PATCH', project(id), { quality }),
  addNode: (id: string, node_type: string, position: Position, params?: Params) =>
    request<StudioNode>('POST', `${project(id)}/nodes`, { node_type, position, params }),
  getNode: (id: string, nodeId: string) => request<StudioNode>('GET', node(id, nodeId)),
  updateNode: (id: string, nodeId: string, patch: { params?: Params; position?: Position }) =>
    request<StudioNode>('PATCH', node(id, nodeId), patch),
  deleteNode: (id: string, nodeId: string) => request<void>('DELETE', node(id, nodeId)),
  setActiveTake: (id: string, nodeId: string, takeId: string) =>
    request<StudioNode>('PUT', `${node(id, nodeId)}/active-take`, { take_id: takeId }),
  addEdge: (id: string, edge: Omit<StudioEdge, 'id'>) =>
    request<StudioEdge>('POST', `${project(id)}/edges`, edge),
  deleteEdge: (id: string, edgeId: string) =>
    request<void>('DELETE', `${project(id)}/edges/${encodeURIComponent(edgeId)}`),
  createAsset: (id: string, draft: AssetDraft) => request<Asset>('POST', `${project(id)}/assets`, draft),
  listLoras: () => request<LoraFile[]>('GET', '/loras'),
};

/** URL of a file of the project (a take, a live preview), given its project-relative path;
 * `version` makes the browser fetch a file that is rewritten in place (the live preview). */
export function fileUrl(projectId: string, relativePath: string, version?: number): string {
  const path = relativePath.split('/').map(encodeURIComponent).join('/');
  const url = `/api/projects/${encodeURIComponent(projectId)}/files/${path}`;
  return withToken(version === undefined ? url : `${url}?v=${version}`);
}
