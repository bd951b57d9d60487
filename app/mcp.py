"""The studio as an MCP server (``avstudio serve --mcp``, or ``AVSTUDIO_MCP=1``): Gradio's own MCP server
(``launch(mcp_server=True)``, which needs the ``mcp`` package: ``pip install -e ".[mcp]"``) turns every public
API endpoint into a tool an assistant can call.

- **Which tools**: the endpoints the web app's API shows, nothing more: each method's demo functions
  (``blockdrop_predict``, ``s3pool_run``, ...), the read-only run, dataset and plugin functions, and, only when
  training is enabled (``AVSTUDIO_ENABLE_TRAINING=1``), ``queue_run``, ``cancel_run``, ``resume_run``,
  ``promote_checkpoint`` and ``unpromote_checkpoint``, which check the admin token (``AVSTUDIO_ADMIN_TOKEN``)
  in their handlers exactly as the web UI's buttons do. With training off those endpoints are not built at
  all, so no tool can reach them.
- **Names and descriptions**: a tool is named after its endpoint (``s3pool_run``; Gradio would use the
  Python function's name, and several demos call theirs ``run``), and described by the function's docstring
  (its ``Args:`` lines describe the parameters).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from app.errors import UserError

TRAINING_ENDPOINTS = ("queue_run", "cancel_run", "resume_run", "promote_checkpoint", "unpromote_checkpoint")


def mcp_requested(flag: bool | None, env: Mapping[str, str] | None = None) -> bool:
    """``--mcp`` if given, else ``AVSTUDIO_MCP`` (a yes/no variable; ValueError naming it otherwise)."""
    from app.settings import env_flag

    return bool(flag) or env_flag("AVSTUDIO_MCP", env)


def check_mcp_installed() -> None:
    """A UserError saying what to install when the ``mcp`` package is missing (Gradio would only print
    that its MCP server failed and serve without it)."""
    if importlib.util.find_spec("mcp") is None:
        raise UserError('the MCP server needs the mcp package: pip install -e ".[mcp]" (gradio[mcp])')


def _named(fn: Callable, name: str) -> Callable:
    """``fn`` under the name ``name`` (its docstring and signature kept); generators are left as they are."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        return fn
    if inspect.iscoroutinefunction(fn):
        async def tool_async(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

        tool: Callable = tool_async
    else:
        def tool_sync(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        tool = tool_sync
    functools.update_wrapper(tool, fn)
    tool.__name__ = tool.__qualname__ = name
    return tool


def public_endpoints(blocks: Any) -> dict[str, Any]:
    """api_name → BlockFunction for every endpoint the API (and so the MCP server) shows."""
    return {f.api_name: f for f in blocks.fns.values()
            if f.api_name and f.fn is not None and getattr(f, "api_visibility", "public") == "public"}


def prepare_tools(blocks: Any, settings: Any) -> list[str]:
    """Name each public endpoint's function after the endpoint, so the MCP tool is called as the API is.
    Returns the tool names. Raises RuntimeError if a training endpoint exists while training is off (a
    guard: the Runs tab builds none then)."""
    endpoints = public_endpoints(blocks)
    if not settings.enable_training:
        leaked = sorted(set(endpoints) & set(TRAINING_ENDPOINTS))
        if leaked:
            raise RuntimeError(f"training endpoints {leaked} exist while training is off; refusing to serve them")
    for name, block_fn in endpoints.items():
        block_fn.fn = _named(block_fn.fn, name)
    return sorted(endpoints)
