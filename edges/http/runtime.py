"""How a route reaches the process's `Runtime`: `create_app` keeps, on the app, the one callable that makes it
(once, on first use: `get_runtime`, or a test's own), and a route asks for it as a FastAPI dependency
(`RuntimeDep`), so the routes are plain functions of their module, not closures over a factory's argument."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from workers.runtime import Runtime


class SharedRuntime:
    """One `Runtime` for an app's requests, made by `make` when the first one needs it."""

    def __init__(self, make: Callable[[], Runtime]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None

    def __call__(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = self._make()
            return self._runtime


def keep(app: FastAPI, make: Callable[[], Runtime]) -> SharedRuntime:
    """Keep on `app` the runtime its routes ask for (made by `make`, once)."""
    shared = SharedRuntime(make)
    app.state.runtime = shared
    return shared


async def runtime(request: Request) -> Runtime:
    """The app's `Runtime` (a dependency: async, so it is not sent to a thread of its own)."""
    shared: SharedRuntime = request.app.state.runtime
    return shared()


RuntimeDep = Annotated[Runtime, Depends(runtime)]
