"""A TCP proxy a test can cut: one process's connections to Prefect (its event stream among
them) are dropped and refused for a while, as a network blip would, while every other process
keeps talking to the same server directly."""

from __future__ import annotations

import asyncio
import threading
import time

from scripts.local_prefect import free_port


class CutProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.event_streams = 0  # connections that asked for Prefect's event stream
        self._refuse_until = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cut-proxy")
        self._thread.start()
        self._ready.wait(10)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            if self._server is not None:
                self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       first: bool = False) -> None:
            try:
                while data := await src.read(65536):
                    if first and b"/events/out" in data[:512]:
                        self.event_streams += 1
                    first = False
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, first=True), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self, refuse_for: float) -> None:
        """Drops every open connection now and closes new ones as soon as they are accepted,
        for `refuse_for` seconds."""
        def drop() -> None:
            self._refuse_until = time.monotonic() + refuse_for
            self._drop_connections()

        self._loop.call_soon_threadsafe(drop)

    def go_down(self) -> None:
        """Drops every open connection and stops listening until `restore()`: connections are
        refused, as they are while the server is down (a restart)."""
        def down() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            self._drop_connections()

        self._loop.call_soon_threadsafe(down)

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # a reset, not a polite close: the peer sees the link die

    def restore(self) -> None:
        """New connections go through again."""
        self._refuse_until = 0.0

        async def up() -> None:
            if self._server is None:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

        asyncio.run_coroutine_threadsafe(up(), self._loop).result(timeout=10)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
