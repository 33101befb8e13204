// The open project as the canvas sees it: the manifest (from the API), what the WebSocket says
// about running takes, and the actions a person can take. Components read it and call it; only
// this module talks to the API and the socket.
import { api } from './api';
import { ProjectSocket, type Envelope } from './socket.svelte';
import type {
  Asset,
  AssetDraft,
  NodeState,
  NodeTypeSpec,
  Params,
  Position,
  Project,
  Quality,
  QueuePlace,
  SocketSpec,
  StudioEdge,
  StudioNode,
  Take,
  TierState,
} from './types';

/** What a running take looks like between server messages. */
export interface LiveTake {
  progress: number;
  step: string;
  previewPath: string | null;
  previewVersion: number;
}

export interface Toast {
  id: number;
  text: string;
}

const SAVE_DELAY_MS = 300;
const TOAST_MS = 8000;

class Studio {
  nodeTypes = $state<Record<string, NodeTypeSpec>>({});
  project = $state<Project | null>(null);
  selectedId = $state<string | null>(null);
  /** Node states the server announced since the last reload (they win over the manifest's). */
  states = $state<Record<string, NodeState>>({});
  live = $state<Record<string, LiveTake>>({});
  errors = $state<Record<string, string>>({});
  /** The project bar's notice (a quality fallback), until dismissed. */
  notice = $state<string | null>(null);
  toasts = $state<Toast[]>([]);
  socket = $state<ProjectSocket | null>(null);
  /** Each quality tier's workers and queue (GET /healthz, then server:tier_states). */
  tiers = $state<TierState[]>([]);
  /** A queued take's place in its tier's queue, per node (the node's newest queued take). */
  queue = $state<Record<string, QueuePlace & { takeId: string }>>({});
  /** The take a node is busy with (queued or generating), for Cancel. */
  busyTake = $state<Record<string, string>>({});

  /** Edits not sent yet, and edits sent but not answered: a reload must not undo either. */
  #pendingParams = new Map<string, Params>();
  #sendingParams = new Map<string, Params>();
  #saveTimers = new Map<string, ReturnType<typeof setTimeout>>();
  #saving = new Map<string, Promise<void>>();
  #toastSeq = 0;

  async loadNodeTypes(): Promise<void> {
    this.nodeTypes = await api.nodeTypes();
  }

  // --- the project -------------------------------------------------------------------------

  async open(projectId: string): Promise<void> {
    this.close();
    this.#adopt(await api.getProject(projectId));
    void this.loadTiers();
    this.socket = new ProjectSocket(
      projectId,
      (message) => this.#receive(message),
      () => void this.reload(),
    );
  }

  close(): void {
    this.socket?.close();
    this.socket = null;
    this.project = null;
    this.selectedId = null;
    this.states = {};
    this.live = {};
    this.errors = {};
    this.notice = null;
    this.queue = {};
    this.busyTake = {};
  }

  async loadTiers(): Promise<void> {
    try {
      this.tiers = await api.tiers();
    } catch {
      this.tiers = [];
    }
  }

  async reload(): Promise<void> {
    if (!this.project) return;
    try {
      this.#adopt(await api.getProject(this.project.id));
    } catch (e) {
      this.toast(e);
    }
  }

  #adopt(project: Project): void {
    // Edits the server may not have yet stay on top of what it sent.
    for (const node of project.nodes) {
      const unsaved = { ...this.#sendingParams.get(node.id), ...this.#pendingParams.get(node.id) };
      node.params = { ...node.params, ...unsaved };
    }
    this.project = project;
    this.states = {};
    if (this.selectedId && !project.nodes.some((n) => n.id === this.selectedId)) {
      this.selectedId = null;
    }
  }

  async setQuality(quality: Quality): Promise<void> {
    if (!this.project) return;
    const previous = this.project.quality;
    this.project.quality = quality;
    try {
      await api.setQuality(this.project.id, quality);
    } catch (e) {
      this.project.quality = previous;
      this.toast(e);
    }
  }

  // --- lookups -----------------------------------------------------------------------------

  node(id: string): StudioNode | undefined {
    return this.project?.nodes.find((n) => n.id === id);
  }

  typeOf(node: StudioNode): NodeTypeSpec | undefined {
    return this.nodeTypes[node.node_type];
  }

  socketSpec(nodeId: string, direction: 'inputs' | 'outputs', name: string): SocketSpec | undefined {
    const node = this.node(nodeId);
    return node && this.typeOf(node)?.[direction].find((s) => s.name === name);
  }

  stateOf(node: StudioNode): NodeState {
    // A failure that made no take (no worker online) is known only from its message.
    return this.states[node.id] ?? (this.errors[node.id] ? 'error' : node.state);
  }

  activeTake(node: StudioNode): Take | undefined {
    return node.takes.find((t) => t.id === node.active_take);
  }

  /** The edge feeding a node's input, if any. */
  incoming(nodeId: string, socket: string): StudioEdge | undefined {
    return this.project?.edges.find((e) => e.target === nodeId && e.target_socket === socket);
  }

  /** The error to show on a node: the last failure the server reported, or its newest failed take's. */
  errorOf(node: StudioNode): string | null {
    if (this.errors[node.id]) return this.errors[node.id];
    const failed = node.takes.findLast((t) => t.status === 'failed');
    return failed?.error ?? null;
  }

  // --- assets ------------------------------------------------------------------------------

  /** Creates a character or style asset; it is listed in the palette at once. Throws the
   * server's refusal (an ApiError) for the form to show. */
  async createAsset(draft: AssetDraft): Promise<Asset> {
    const project = this.project;
    if (!project) throw new Error('No project is open.');
    const asset = await api.createAsset(project.id, draft);
    // A reload meanwhile may have brought it already.
    const open = this.project;
    if (open?.id === project.id && !open.assets.some((a) => a.id === asset.id)) open.assets.push(asset);
    return asset;
  }

  // --- editing the graph -------------------------------------------------------------------

  /** Adds a node and selects it; its id, or null when the server refused. */
  async addNode(nodeType: string, position: Position, params?: Params): Promise<string | null> {
    const project = this.project;
    if (!project) return null;
    try {
      const node = await api.addNode(project.id, nodeType, position, params);
      project.nodes.push(node);
      this.selectedId = node.id;
      return node.id;
    } catch (e) {
      this.toast(e);
      return null;
    }
  }

  async moveNodes(moves: { id: string; position: Position }[]): Promise<void> {
    const project = this.project;
    if (!project) return;
    for (const { id, position } of moves) {
      const node = this.node(id);
      if (node) node.position = { x: Math.round(position.x), y: Math.round(position.y) };
    }
    await this.#all(
      moves.map(({ id }) => api.updateNode(project.id, id, { position: this.node(id)!.position })),
    );
  }

  async connect(edge: Omit<StudioEdge, 'id'>): Promise<void> {
    const project = this.project;
    if (!project) return;
    try {
      // An input takes one edge: a new connection replaces the old one.
      const replaced = this.incoming(edge.target, edge.target_socket);
      if (replaced) await api.deleteEdge(project.id, replaced.id);
      project.edges = [...project.edges.filter((e) => e !== replaced), await api.addEdge(project.id, edge)];
    } catch (e) {
      this.toast(e);
    }
    await this.reload();
  }

  async remove(nodeIds: string[], edgeIds: string[]): Promise<void> {
    const project = this.project;
    if (!project) return;
    // Edges of a deleted node go with it on the server; delete only the others.
    const gone = new Set(nodeIds);
    const edges = edgeIds.filter((id) => {
      const edge = project.edges.find((e) => e.id === id);
      return edge && !gone.has(edge.source) && !gone.has(edge.target);
    });
    await this.#all([
      ...edges.map((id) => api.deleteEdge(project.id, id)),
      ...nodeIds.map((id) => api.deleteNode(project.id, id)),
    ]);
    await this.reload();
  }

  /** Changes parameters at once on screen; saves them shortly after the last keystroke. */
  updateParams(nodeId: string, patch: Params): void {
    const node = this.node(nodeId);
    if (!node) return;
    node.params = { ...node.params, ...patch };
    this.#pendingParams.set(nodeId, { ...this.#pendingParams.get(nodeId), ...patch });
    clearTimeout(this.#saveTimers.get(nodeId));
    this.#saveTimers.set(
      nodeId,
      setTimeout(() => void this.flush(nodeId), SAVE_DELAY_MS),
    );
  }

  /** Saves a node's unsaved parameters now (before generating, say). */
  async flush(nodeId: string): Promise<void> {
    clearTimeout(this.#saveTimers.get(nodeId));
    this.#saveTimers.delete(nodeId);
    await this.#saving.get(nodeId);
    const patch = this.#pendingParams.get(nodeId);
    const project = this.project;
    if (!patch || !project) return;
    this.#pendingParams.delete(nodeId);
    this.#sendingParams.set(nodeId, patch);
    const saving = api
      .updateNode(project.id, nodeId, { params: patch })
      .catch((e) => this.toast(e))
      .finally(() => {
        this.#sendingParams.delete(nodeId);
        this.#saving.delete(nodeId);
      })
      .then(() => this.reload()); // downstream nodes may be out of sync now; or undo a refusal
    this.#saving.set(nodeId, saving);
    await saving;
  }

  // --- takes -------------------------------------------------------------------------------

  async generate(nodeId: string): Promise<void> {
    await this.flush(nodeId);
    delete this.errors[nodeId];
    if (!this.socket?.send('client:start_generation', { node_id: nodeId })) {
      this.toast('Not connected to the studio server: try again when the connection is back.');
      return;
    }
    this.states[nodeId] = 'queued';
  }

  /** Cancels the take the node is busy with: it leaves the queue, or stops at the next step. */
  cancel(nodeId: string): void {
    const node = this.node(nodeId);
    const takeId =
      this.busyTake[nodeId] ??
      node?.takes.findLast((t) => t.status === 'queued' || t.status === 'generating')?.id;
    if (!takeId) return;
    if (!this.socket?.send('client:cancel_generation', { take_id: takeId })) {
      this.toast('Not connected to the studio server: try again when the connection is back.');
    }
  }

  async setActiveTake(nodeId: string, takeId: string): Promise<void> {
    const project = this.project;
    const node = this.node(nodeId);
    if (!project || !node) return;
    node.active_take = takeId;
    try {
      await api.setActiveTake(project.id, nodeId, takeId);
    } catch (e) {
      this.toast(e);
    }
    await this.reload();
  }

  // --- server messages ---------------------------------------------------------------------

  #receive({ type, payload }: Envelope): void {
    const nodeId = payload.node_id as string;
    switch (type) {
      case 'server:node_state_updated': {
        this.states[nodeId] = payload.state as NodeState;
        const takeId = payload.take_id as string | null;
        const place = payload.queue as QueuePlace | null;
        if (place && takeId) this.queue[nodeId] = { ...place, takeId };
        else if (takeId && this.queue[nodeId]?.takeId === takeId) delete this.queue[nodeId];
        if (takeId && (payload.state === 'queued' || payload.state === 'generating')) {
          this.busyTake[nodeId] = takeId;
        }
        if (payload.state !== 'generating' && payload.state !== 'queued') {
          delete this.live[nodeId];
          delete this.queue[nodeId];
          delete this.busyTake[nodeId];
        }
        void this.reload(); // the takes changed (one reserved, started or finished)
        break;
      }
      case 'server:task_cancelled':
        delete this.live[nodeId];
        if (this.queue[nodeId]?.takeId === payload.take_id) delete this.queue[nodeId];
        void this.reload();
        break;
      case 'server:tier_states':
        this.tiers = (payload.tiers as TierState[]) ?? [];
        break;
      case 'server:task_progress': {
        const previous = this.live[nodeId];
        this.states[nodeId] = 'generating';
        if (this.queue[nodeId]?.takeId === payload.take_id) delete this.queue[nodeId];
        this.live[nodeId] = {
          progress: Number(payload.progress) || 0,
          step: String(payload.step ?? ''),
          previewPath: (payload.preview_path as string | null) ?? previous?.previewPath ?? null,
          previewVersion: (previous?.previewVersion ?? 0) + 1,
        };
        break;
      }
      case 'server:task_success':
        // The progress bar stays until the node's state says no take is running any more.
        delete this.errors[nodeId];
        void this.reload();
        break;
      case 'server:task_failed':
        delete this.live[nodeId];
        this.errors[nodeId] = String(payload.error ?? 'The generation failed.');
        this.states[nodeId] = 'error';
        void this.reload();
        break;
      case 'server:quality_fallback': {
        const why = payload.reason ? ` (${payload.reason})` : '';
        this.notice = `Rendering at ${payload.used} quality instead of ${payload.requested}${why}`;
        break;
      }
      case 'server:error':
        this.toast(String(payload.reason ?? 'The server refused the request.'));
        void this.reload(); // drops the 'queued' shown for a refused Generate
        break;
    }
  }

  // --- messages to the person --------------------------------------------------------------

  toast(error: unknown): void {
    const text = error instanceof Error ? error.message : String(error);
    const id = ++this.#toastSeq;
    this.toasts.push({ id, text });
    setTimeout(() => this.dismissToast(id), TOAST_MS);
  }

  dismissToast(id: number): void {
    this.toasts = this.toasts.filter((t) => t.id !== id);
  }

  async #all(requests: Promise<unknown>[]): Promise<void> {
    const results = await Promise.allSettled(requests);
    for (const r of results) if (r.status === 'rejected') this.toast(r.reason);
  }
}

export const studio = new Studio();
