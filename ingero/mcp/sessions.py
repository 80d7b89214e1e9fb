"""Probes end with the client session that attached them: the HTTP side.

Over stdio the session is the process's stdin: when ``server.run("stdio")`` returns, ``ingero mcp``
ends the probes of the ``stdio`` owner. Over streamable HTTP a session lives in the SDK's session manager
until the client sends ``DELETE`` (a clean close), its idle timeout passes (a client that vanished), or it
crashes; :class:`HttpSessionWatcher` looks at the manager's live sessions a few times a second and ends the
probes whose owner (``http:<mcp-session-id>``) is no longer among them.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

REASON = "the MCP client session that attached it ended (HTTP session closed)"


class HttpSessionWatcher:
    def __init__(self, server, probes, every_s: float = 0.2) -> None:
        self.server = server
        self.probes = probes
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingero-mcp-sessions", daemon=True)

    def start(self) -> HttpSessionWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def alive(self) -> set[str] | None:
        try:
            manager = self.server.session_manager
            return set(manager._server_instances)  # the SDK's live sessions, by mcp-session-id
        except Exception:  # noqa: BLE001 - the app is not running yet
            return None

    def check(self) -> list[int]:
        alive = self.alive()
        if alive is None:
            return []
        ended = []
        for owner in self.probes.owners():
            key = owner.split(" ", 1)[0]
            if key.startswith("http:") and key[5:] not in alive:
                ended += self.probes.end_owner(owner, REASON)
        if ended:
            log.info("probes %s ended: their client session is gone", ended)
        return ended

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - keep watching
                log.exception("session watcher")
