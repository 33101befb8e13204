// The open project as the canvas sees it: the manifest (from the API), what the WebSocket says
// about running takes, and the actions a person can take. Components read it and call it; only
// this module talks to the API and the socket. Server messages are applied to the project in
// place (messages.ts); it is fetched again only when a message says more changed than it carries.
import { api } from './api';
import { applyMessage, type Refetch } from './messages';
import type { ServerMessage } from './protocol';
import { ProjectSocket } from './socket.svelte';
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
  /** Nodes whose Generate was sent but not answered yet: shown queued meanwhile. */
  clicked = $state<Record<string, true>>({});
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
  /** Messages received while a fetch is in flight: applied again to what it brings back. */
  #journal: ServerMessage[] = [];
  #inFlight = 0;
  #nodeFetches = new Set<string>();
  /** Changes the server confirmed (a node added, moved…): a project fetched before one lacks it. */
  #edits = 0;

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
    this.clicked = {};
    this.live = {};
    this.errors = {};
    this.notice = null;
    this.queue = {};
    this.busyTake = {};
    this.#journal = [];
  }

  async loadTiers(): Promise<void> {
    try {
      this.tiers = await api.tiers();
    } catch {
      this.tiers = [];
    }
  }

  /** Fetches the whole project again (after a reconnect, or a change the store cannot apply). */
  async reload(): Promise<void> {
    const open = this.project;
    if (!open) return;
    const edits = this.#edits;
    let stale = false;
    try {
      const needs = await this.#fetching(api.getProject(open.id), (project) => {
        if (this.project?.id !== open.id) return false;
        stale = this.#edits !== edits; // it may predate a change made meanwhile: ask again
        if (!stale) this.#adopt(project);
        return !stale;
      });
      for (const nodeId of needs) void this.#refetchNode(nodeId);
    } catch (e) {
      this.toast(e);
    }
    if (stale) await this.reload();
  }

  #adopt(project: Project): void {
    for (const node of project.nodes) this.#keepUnsaved(node);
    this.project = project;
    if (this.selectedId && !project.nodes.some((n) => n.id === this.selectedId)) {
      this.selectedId = null;
    }
  }

  /** Edits the server may not have yet stay on top of what it sent. */
  #keepUnsaved(node: StudioNode): void {
    const unsaved = { ...this.#sendingParams.get(node.id), ...this.#pendingParams.get(node.id) };
    node.params = { ...node.params, ...unsaved };
  }

  /** Puts a node as the server answered it in place of the store's (its edits kept on top). */
  #replaceNode(fresh: StudioNode): boolean {
    const nodes = this.project?.nodes;
    const at = nodes?.findIndex((n) => n.id === fresh.id) ?? -1;
    if (!nodes || at < 0) return false;
    this.#keepUnsaved(fresh);
    nodes[at] = fresh;
    return true;
  }

  /** Fetches one node again: a message named a take the store has not seen. */
  async #refetchNode(nodeId: string, again = true): Promise<void> {
    const project = this.project;
    if (!project || this.#nodeFetches.has(nodeId)) return;
    this.#nodeFetches.add(nodeId);
    let needs: string[] = [];
    try {
      needs = await this.#fetching(api.getNode(project.id, nodeId), (node) => this.#replaceNode(node));
    } catch {
      // The node may be gone meanwhile: the whole project says what is left.
      needs = [];
      await this.reload();
    } finally {
      this.#nodeFetches.delete(nodeId);
    }
    // A take reserved after the answer was made (a second click meanwhile): once more, no more.
    if (again && needs.includes(nodeId)) void this.#refetchNode(nodeId, false);
  }

  #refetch(need: Refetch): void {
    if (need?.scope === 'node') void this.#refetchNode(need.nodeId);
    else if (need?.scope === 'project') void this.reload();
  }

  /** Awaits an answer of the server, puts it in the store, then applies again every message
   * received while it was on its way (the answer may predate them). Returns the nodes whose
   * takes those messages name but the answer lacks. */
  async #fetching<T>(request: Promise<T>, put: (answer: T) => boolean): Promise<string[]> {
    if (this.#inFlight++ === 0) this.#journal = [];
    const from = this.#journal.length;
    const needs = new Set<string>();
    try {
      const answer = await request;
      if (!put(answer) || !this.project) return [];
      for (const message of this.#journal.slice(from)) {
        const need = applyMessage(this.project, message);
        if (need?.scope === 'node') needs.add(need.nodeId);
      }
      return [...needs];
    } finally {
      if (--this.#inFlight === 0) this.#journal = [];
    }
  }

  async setQuality(quality: Quality): Promise<void> {
    if (!this.project) return;
    const previous = this.project.quality;
    this.project.quality = quality;
    try {
      await api.setQuality(this.project.id, quality);
      this.#edits += 1;
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
    const busy = node.state === 'queued' || node.state === 'generating';
    if (this.clicked[node.id] && !busy) return 'queued';
    // A failure that made no take (no worker online) is known only from its message.
    return this.errors[node.id] && !busy ? 'error' : node.state;
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
    this.#edits += 1;
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
      this.#edits += 1;
      // A reload meanwhile may have put a new project object in place, with or without it.
      const open = this.project;
      if (open?.id !== project.id) return null;
      if (!open.nodes.some((n) => n.id === node.id)) open.nodes.push(node);
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
    this.#edits += 1;
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
    const saving = this.#saveNode(project.id, nodeId, patch).finally(() => {
      this.#sendingParams.delete(nodeId);
      this.#saving.delete(nodeId);
    });
    this.#saving.set(nodeId, saving);
    await saving;
  }

  async #saveNode(projectId: string, nodeId: string, patch: Params): Promise<void> {
    let refused = false;
    try {
      // The answer is the node as saved, with its state (a changed prompt: out of sync).
      const needs = await this.#fetching(api.updateNode(projectId, nodeId, { params: patch }), (node) => {
        this.#sendingParams.delete(nodeId);
        return this.#replaceNode(node);
      });
      for (const id of needs) void this.#refetchNode(id);
    } catch (e) {
      this.toast(e);
      refused = true;
    }
    // A refusal is undone by the project as the server has it; a value that feeds other nodes
    // changes their states, which the answer does not carry.
    if (refused || this.project?.edges.some((e) => e.source === nodeId)) await this.reload();
  }

  // --- takes -------------------------------------------------------------------------------

  async generate(nodeId: string): Promise<void> {
    await this.flush(nodeId);
    delete this.errors[nodeId];
    if (!this.socket?.send({ type: 'client:start_generation', payload: { node_id: nodeId } })) {
      this.toast('Not connected to the studio server: try again when the connection is back.');
      return;
    }
    this.clicked[nodeId] = true;
  }

  /** Cancels the take the node is busy with: it leaves the queue, or stops at the next step. */
  cancel(nodeId: string): void {
    const node = this.node(nodeId);
    const takeId =
      this.busyTake[nodeId] ??
      node?.takes.findLast((t) => t.status === 'queued' || t.status === 'generating')?.id;
    if (!takeId) return;
    if (!this.socket?.send({ type: 'client:cancel_generation', payload: { take_id: takeId } })) {
      this.toast('Not connected to the studio server: try again when the connection is back.');
    }
  }

  async setActiveTake(nodeId: string, takeId: string): Promise<void> {
    const project = this.project;
    const node = this.node(nodeId);
    if (!project || !node) return;
    node.active_take = takeId;
    try {
      // The answer carries the node's state (completed, or out of sync with an older take).
      const answer = api.setActiveTake(project.id, nodeId, takeId);
      const needs = await this.#fetching(answer, (n) => this.#replaceNode(n));
      for (const id of needs) void this.#refetchNode(id);
    } catch (e) {
      this.toast(e);
      await this.reload(); // shows the active take the server kept
      return;
    }
    // What the node feeds downstream changed; their states are not in the answer.
    if (project.edges.some((e) => e.source === nodeId)) await this.reload();
  }

  // --- server messages ---------------------------------------------------------------------

  #receive(message: ServerMessage): void {
    if (this.#inFlight > 0) this.#journal.push(message);
    if (this.project) this.#refetch(applyMessage(this.project, message));
    // What lives beside the project: running takes, queue places, errors, notices.
    switch (message.type) {
      case 'server:node_state_updated': {
        const { node_id: nodeId, state, take_id: takeId, queue: place } = message.payload;
        delete this.clicked[nodeId];
        if (place && takeId) this.queue[nodeId] = { ...place, takeId };
        else if (takeId && this.queue[nodeId]?.takeId === takeId) delete this.queue[nodeId];
        if (takeId && (state === 'queued' || state === 'generating')) this.busyTake[nodeId] = takeId;
        if (state !== 'generating' && state !== 'queued') {
          delete this.live[nodeId];
          delete this.queue[nodeId];
          delete this.busyTake[nodeId];
        }
        break;
      }
      case 'server:task_progress': {
        const { node_id: nodeId, take_id: takeId, progress, step, preview_path } = message.payload;
        const previous = this.live[nodeId];
        delete this.clicked[nodeId];
        if (this.queue[nodeId]?.takeId === takeId) delete this.queue[nodeId];
        this.live[nodeId] = {
          progress,
          step,
          previewPath: preview_path ?? previous?.previewPath ?? null,
          previewVersion: (previous?.previewVersion ?? 0) + 1,
        };
        break;
      }
      case 'server:task_success':
        // The progress bar stays until the node's state says no take is running any more.
        delete this.errors[message.payload.node_id];
        break;
      case 'server:task_failed': {
        const nodeId = message.payload.node_id;
        delete this.clicked[nodeId];
        delete this.live[nodeId];
        this.errors[nodeId] = message.payload.error;
        break;
      }
      case 'server:task_cancelled': {
        const { node_id: nodeId, take_id: takeId } = message.payload;
        delete this.live[nodeId];
        if (this.queue[nodeId]?.takeId === takeId) delete this.queue[nodeId];
        break;
      }
      case 'server:tier_states':
        this.tiers = message.payload.tiers;
        break;
      case 'server:quality_fallback': {
        const { used, requested, reason } = message.payload;
        const why = reason ? ` (${reason})` : '';
        this.notice = `Rendering at ${used} quality instead of ${requested}${why}`;
        break;
      }
      case 'server:error':
        this.toast(message.payload.reason || 'The server refused the request.');
        // A refused Generate made no take; the refusal does not name its node, so every click
        // still unanswered stops showing "queued" (one that was accepted is announced anyway).
        if (message.payload.request_type === 'client:start_generation') this.clicked = {};
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
