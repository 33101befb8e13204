// The project's WebSocket (/ws/{project_id}): {"type", "payload"} envelopes both ways, typed by
// protocol.ts (generated from the server's /api/ws-protocol), and an automatic reconnect with
// backoff. `status` is what the project bar shows.
import { withToken } from './api';
import type { ClientMessage, ServerMessage } from './protocol';

export type SocketStatus = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** A frame as the server's models describe it; a type the canvas does not know is passed on and
 * ignored where it is read (a newer server). */
function asServerMessage(data: unknown): ServerMessage | null {
  if (typeof data !== 'object' || data === null) return null;
  const { type, payload } = data as { type?: unknown; payload?: unknown };
  if (typeof type !== 'string' || !type.startsWith('server:')) return null;
  if (typeof payload !== 'object' || payload === null) return null;
  return data as ServerMessage;
}

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
const POLICY_VIOLATION = 1008;

export class ProjectSocket {
  status = $state<SocketStatus>('connecting');
  #ws: WebSocket | null = null;
  #attempt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  constructor(
    private readonly projectId: string,
    private readonly onMessage: (message: ServerMessage) => void,
    private readonly onOpen: () => void,
  ) {
    this.#connect();
  }

  #connect(): void {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(
      withToken(`${scheme}://${location.host}/ws/${encodeURIComponent(this.projectId)}`),
    );
    this.#ws = ws;
    ws.onopen = () => {
      this.#attempt = 0;
      this.status = 'open';
      // Events may have been missed before (re)connecting: the owner reloads the project.
      this.onOpen();
    };
    ws.onmessage = (event) => {
      let data: unknown;
      try {
        data = JSON.parse(event.data as string);
      } catch {
        return;
      }
      const message = asServerMessage(data);
      if (message) this.onMessage(message);
    };
    ws.onclose = (event) => {
      if (this.#ws !== ws || this.#closed) return;
      if (event.code === POLICY_VIOLATION) {
        // No such project, or a wrong token: retrying cannot help.
        this.status = 'closed';
        return;
      }
      this.status = 'reconnecting';
      const delay = BACKOFF_MS[Math.min(this.#attempt, BACKOFF_MS.length - 1)];
      this.#attempt += 1;
      this.#timer = setTimeout(() => this.#connect(), delay);
    };
  }

  /** Sends one message; false when the socket is not open (the caller tells the person). */
  send(message: ClientMessage): boolean {
    if (this.#ws?.readyState !== WebSocket.OPEN) return false;
    this.#ws.send(JSON.stringify(message));
    return true;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#ws?.close();
    this.status = 'closed';
  }
}
