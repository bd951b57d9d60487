"""The studio as an MCP server (`avstudio serve --mcp`, AVSTUDIO_MCP; app/mcp.py), and Gradio's run-history
page turned off. The served-schema tests need the `mcp` package (`pip install -e ".[mcp]"`): without it they
are skipped with that reason, and the rest still checks what the schema is made of (names, docstrings)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import urllib.error
import urllib.request

import pytest

from app import mcp
from app.errors import UserError
from app.testing import free_port, open_test_studio

HAS_MCP = importlib.util.find_spec("mcp") is not None
needs_mcp = pytest.mark.skipif(not HAS_MCP, reason='the mcp package is not installed (pip install -e ".[mcp]")')


def built(studio, training: bool, token: str = ""):
    from app.ui import build_app

    studio.settings.enable_training = training
    studio.settings.admin_token = token
    return build_app(studio.settings, studio.registry, studio.store)


@pytest.fixture
def studio(tmp_path):
    with open_test_studio(tmp_path / "home") as opened:
        yield opened


@pytest.mark.parametrize("training", [False, True], ids=["training-off", "training-on"])
def test_every_tool_is_a_documented_public_endpoint_named_after_it(studio, training):
    demo = built(studio, training)
    names = mcp.prepare_tools(demo, studio.settings)
    endpoints = mcp.public_endpoints(demo)
    assert names == sorted(endpoints)
    assert {"blockdrop_predict", "s3pool_run", "vgan_analyse", "multitask_predict", "runs_list"} <= set(names)
    assert (set(mcp.TRAINING_ENDPOINTS) <= set(names)) is training
    if not training:
        assert not set(mcp.TRAINING_ENDPOINTS) & set(names)
    undocumented = []
    for name, block_fn in endpoints.items():
        assert block_fn.fn.__name__ == name  # the MCP tool's name (Gradio takes the function's)
        if not (inspect.getdoc(block_fn.fn) or "").strip():
            undocumented.append(name)
    assert undocumented == [], f"these tools would have no description (give their functions a docstring): {undocumented}"


def test_a_training_endpoint_with_training_off_is_refused(studio):
    import gradio as gr

    def queue_run(method: str, recipe: str) -> int:
        """Queue a run."""
        return 1

    with gr.Blocks() as demo:
        gr.api(queue_run, api_name="queue_run")
    studio.settings.enable_training = False
    with pytest.raises(RuntimeError, match="training endpoints \\['queue_run'\\] exist while training is off"):
        mcp.prepare_tools(demo, studio.settings)


def test_named_tools_keep_what_gradio_reads_and_answer_the_same():
    async def answer_async(x: int) -> int:
        """Async doc."""
        return x + 1

    def answer(image: str, grid_size: int = 16) -> str:
        """Sync doc.

        Args:
            image: the image.
        """
        return f"{image}-{grid_size}"

    def frames():
        yield 1

    tool = mcp._named(answer, "s3pool_run")
    assert (tool.__name__, tool("a", 8), inspect.getdoc(tool)) == ("s3pool_run", "a-8", inspect.getdoc(answer))
    assert list(inspect.signature(tool).parameters) == ["image", "grid_size"]
    assert inspect.iscoroutinefunction(mcp._named(answer_async, "x"))
    assert mcp._named(frames, "x") is frames


def test_the_setting_and_the_missing_package(monkeypatch):
    assert mcp.mcp_requested(None, {}) is False
    assert mcp.mcp_requested(None, {"AVSTUDIO_MCP": "1"}) is True
    assert mcp.mcp_requested(True, {}) is True
    with pytest.raises(ValueError, match="AVSTUDIO_MCP"):
        mcp.mcp_requested(None, {"AVSTUDIO_MCP": "maybe"})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match='pip install -e ".\\[mcp\\]"'):
        mcp.check_mcp_installed()


def serve(studio, *, training: bool, token: str = "", mcp_server: bool = True):
    from app.ui import launch

    studio.settings.enable_training = training
    studio.settings.admin_token = token
    port = free_port()
    demo = launch(studio.settings, studio.registry, host="127.0.0.1", port=port, start_worker=False,
                  prevent_thread_lock=True, mcp=mcp_server)
    return demo, f"http://127.0.0.1:{port}"


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read().decode())


def test_gradio_run_history_page_is_off(studio):
    demo, url = serve(studio, training=False, mcp_server=False)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/gradio_api/runs", timeout=30)
        assert refused.value.code == 404
        assert urllib.request.urlopen(f"{url}/", timeout=30).status == 200
    finally:
        demo.close()


@needs_mcp
def test_the_served_mcp_schema_has_the_demo_tools_with_their_docstrings_and_no_training_tools(studio):
    demo, url = serve(studio, training=False)
    try:
        schema = get_json(f"{url}/gradio_api/mcp/schema")
        endpoints = mcp.public_endpoints(demo)
    finally:
        demo.close()
    tools = {t["name"]: t for t in schema}
    assert set(tools) == set(endpoints)
    assert not set(mcp.TRAINING_ENDPOINTS) & set(tools)
    for name, tool in tools.items():
        doc = inspect.getdoc(endpoints[name].fn)
        first = " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
        assert tool["description"].startswith(first), (name, tool["description"][:120])
    run = tools["s3pool_run"]
    assert set(run["inputSchema"]["properties"]) == {"image", "grid_size", "layers"}
    assert "grid size g" in run["inputSchema"]["properties"]["grid_size"]["description"]


@needs_mcp
def test_with_training_on_the_training_tools_are_served_and_gated_by_the_admin_token(studio):
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    demo, url = serve(studio, training=True, token="s3cret")
    try:
        names = {t["name"] for t in get_json(f"{url}/gradio_api/mcp/schema")}
        assert set(mcp.TRAINING_ENDPOINTS) <= names

        async def call() -> tuple:
            async with streamablehttp_client(f"{url}/gradio_api/mcp/") as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    listed = {t.name for t in (await session.list_tools()).tools}
                    refused = await session.call_tool("queue_run", {"method": "s3pool", "recipe": "classifier",
                                                                    "config": {}, "device": "cpu",
                                                                    "admin_token": "wrong"})
                    runs = await session.call_tool("runs_list", {})
                    return listed, refused, runs

        listed, refused, runs = asyncio.run(call())
    finally:
        demo.close()
    assert listed == names
    assert refused.isError and "admin token" in " ".join(getattr(c, "text", "") for c in refused.content).lower()
    assert not runs.isError
    assert studio.store.list_runs() == []  # the refused call queued nothing


def test_serve_mcp_without_the_package_or_with_a_bad_setting_stops_in_one_line(studio, monkeypatch):
    from click.testing import CliRunner

    from app.cli import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mcp" else real(name, *a))
    monkeypatch.setattr("app.ui.launch", lambda *a, **kw: pytest.fail("the app was started"))
    env = {"AVSTUDIO_HOME": str(studio.home), "AVSTUDIO_DB_URL": studio.settings.db_url, "AVSTUDIO_PLUGINS": ""}
    result = CliRunner().invoke(cli, ["serve", "--mcp", "--no-worker"], env=env)
    assert result.exit_code == 2 and 'the MCP server needs the mcp package: pip install -e ".[mcp]"' in result.output
    result = CliRunner().invoke(cli, ["serve", "--no-worker"], env={**env, "AVSTUDIO_MCP": "maybe"})
    assert result.exit_code == 2 and "AVSTUDIO_MCP must be 1, true, yes or on" in result.output
