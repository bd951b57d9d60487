"""Malformed and unusual uploads (tests/bad_inputs.py) sent to a real running studio through gradio_client.

Every call gives a result or a one-line clear error, and the server keeps answering. The default suite
sends the whole corpus to one image-taking function per method; ``-m slow`` sends it to every one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.images import load_rgb_image
from app.settings import REPO_ROOT, upload_limits
from app.testing import free_port as _free_port
from tests.bad_inputs import OVERSIZED_BYTES, write_corpus
from trainer.errors import UserError

# What a refused upload may say: the studio's own messages, or gradio_client's refusal of a file over
# the server's max_file_size before it is even sent.
CLEAR_ERROR = re.compile(r"not a readable image|Image too large|File too large|exceeds the maximum file size|"
                         r"image is empty")


def _sketch(file):
    return {"background": None, "layers": [], "composite": file, "id": None}


# api_name → the arguments besides the image (the image-taking events of every demo tab)
MAIN_ENDPOINTS = {
    "blockdrop_predict": lambda f: (f, "policy-g1"),
    "s3pool_run": lambda f: (f, 16, 1),
    "vgan_analyse": lambda f: (f, "vgan", 2, 0),
    "multitask_predict": lambda f: (f, "branched-l10"),
}
SKETCH_ENDPOINTS = {
    "blockdrop_predict_sketch": lambda f: (_sketch(f), "policy-g1"),
    "s3pool_run_sketch": lambda f: (_sketch(f), 16, 1),
    "multitask_predict_sketch": lambda f: (_sketch(f), "branched-l10"),
}
# these redraw the image the last s3pool_run analysed (kept in the session's state), so the heavy test
# calls them right after each s3pool_run of the same client
STATE_ENDPOINTS = {"s3pool_augment": (16, 1), "s3pool_augment_grid": (8, 2), "s3pool_augment_layers": (16, 2)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python app/main.py`` as a Space starts it, with a fresh home, the shipped assets, no worker."""
    pytest.importorskip("gradio_client")
    home = tmp_path_factory.mktemp("bad-inputs-home")
    port = _free_port()
    log_path = home / "server.log"
    env = {**os.environ, "AVSTUDIO_HOME": str(home), "AVSTUDIO_PLUGINS": "", "AVSTUDIO_NO_WORKER": "1",
           "AVSTUDIO_THREADS": "1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    for name in ("AVSTUDIO_MAX_UPLOAD_MB", "AVSTUDIO_MAX_UPLOAD_MEGAPIXELS", "AVSTUDIO_ENABLE_TRAINING"):
        env.pop(name, None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app/main.py"], cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {log_path.read_text()}")
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError("server did not answer within 120 s") from None
                time.sleep(0.5)
        yield proc, url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)  # outputs are not looked at: no downloads


def _call(client, api_name: str, args: tuple) -> str | None:
    """None for a result, else the error's message."""
    try:
        client.predict(*args, api_name=f"/{api_name}")
        return None
    except Exception as exc:  # AppError from the server; ValueError for gradio_client's size check
        return str(exc).strip() or type(exc).__name__


def _send(url: str, jobs: list[tuple[str, object]], with_state: bool = False, clients: int = 4) -> list[tuple]:
    """Call ``api_name`` with each job's case, ``clients`` sessions at a time; (api_name, case, error) per
    call. ``with_state``: after each s3pool_run, its session also calls the STATE_ENDPOINTS (which redraw
    the image that call analysed) when it gave a result."""
    from gradio_client import handle_file

    endpoints = {**MAIN_ENDPOINTS, **SKETCH_ENDPOINTS}

    def one_session(share: list) -> list[tuple]:
        client = _client(url)
        outcomes = []
        for api_name, case in share:
            error = _call(client, api_name, endpoints[api_name](handle_file(str(case.path))))
            outcomes.append((api_name, case, error))
            if api_name == "s3pool_run" and with_state and error is None:
                outcomes += [(name, case, _call(client, name, args)) for name, args in STATE_ENDPOINTS.items()]
        return outcomes

    with ThreadPoolExecutor(clients) as pool:
        return [outcome for outcomes in pool.map(one_session, [jobs[i::clients] for i in range(clients)])
                for outcome in outcomes]


def _check(outcomes: list[tuple], proc, url: str, log_path: Path) -> None:
    problems = []
    for api_name, case, error in outcomes:
        if error is None:
            if case.expect == "error":
                problems.append(f"{api_name}({case.name}): gave a result, expected a clear error")
        elif case.expect == "ok":
            problems.append(f"{api_name}({case.name}): {error!r}, expected a result")
        elif "\n" in error or len(error) > 200 or not CLEAR_ERROR.search(error):
            problems.append(f"{api_name}({case.name}): not a one-line clear error: {error[:300]!r}")
    assert not problems, f"{len(problems)} of {len(outcomes)} calls:\n" + "\n".join(problems[:40])
    # the server keeps answering, and no call ended in an unexpected exception (a traceback in its log)
    assert proc.poll() is None, "the server died"
    assert _client(url).predict(api_name="/plugins_list") is not None
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 200:][:3000]


# -- without a server ---------------------------------------------------------------------------------


def test_corpus_is_large_varied_and_deterministic(corpus, tmp_path):
    assert len(corpus) >= 200
    kinds = {case.kind for case in corpus}
    for kind in ("zero-bytes", "truncated", "bit-flipped", "random-bytes", "renamed", "huge-declared",
                 "decompression-bomb", "tiny", "extreme-aspect", "animated", "16-bit", "float", "cmyk",
                 "palette", "exif-rotated", "grey-alpha", "over-size-limit"):
        assert kind in kinds, kind
    again = write_corpus(tmp_path)
    assert [c.path.read_bytes() for c in again] == [c.path.read_bytes() for c in corpus]


def test_load_rgb_image_meets_every_expectation_of_the_corpus(corpus):
    for case in corpus:
        try:
            image = load_rgb_image(case.path)
        except UserError as exc:
            assert case.expect != "ok", (case.name, str(exc))
            assert "\n" not in str(exc) and CLEAR_ERROR.search(str(exc)), (case.name, str(exc))
        else:
            assert case.expect != "error", case.name
            assert image.mode == "RGB" and image.width * image.height <= upload_limits().max_pixels


def test_upload_limits_come_from_the_environment(monkeypatch, tmp_path):
    assert upload_limits({}) == upload_limits({"AVSTUDIO_MAX_UPLOAD_MB": " "})
    assert (upload_limits({}).max_bytes, upload_limits({}).max_pixels) == (10_000_000, 16_000_000)
    limits = upload_limits({"AVSTUDIO_MAX_UPLOAD_MB": "0.5", "AVSTUDIO_MAX_UPLOAD_MEGAPIXELS": "2"})
    assert (limits.max_bytes, limits.max_pixels) == (500_000, 2_000_000)
    for bad in ("0", "-1", "ten", "nan", "inf"):
        with pytest.raises(ValueError, match="AVSTUDIO_MAX_UPLOAD_MB must be a positive number"):
            upload_limits({"AVSTUDIO_MAX_UPLOAD_MB": bad})
    # read at each call: a changed limit applies at once
    path = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)).save(path)
    assert path.stat().st_size > 1000
    assert load_rgb_image(path).size == (40, 30)
    monkeypatch.setenv("AVSTUDIO_MAX_UPLOAD_MEGAPIXELS", "0.001")
    with pytest.raises(UserError, match=r"Image too large \(40×30, 0.0012 megapixels\); keep it under 0.001 megapixels"):
        load_rgb_image(path)
    monkeypatch.delenv("AVSTUDIO_MAX_UPLOAD_MEGAPIXELS")
    monkeypatch.setenv("AVSTUDIO_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(UserError, match=r"File too large \(0.0 MB\); keep uploads under 0.001 MB"):
        load_rgb_image(path)


def test_the_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    """A bomb is refused from its header: no pixel of it is ever decoded."""
    from tests.bad_inputs import _png_bomb

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bomb(5000, 5000))
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    with pytest.raises(UserError, match=r"Image too large \(5000×5000, 25 megapixels\); keep it under 16 megapixels"):
        load_rgb_image(path)
    assert (5000, 5000) not in decoded


# -- against a running studio -----------------------------------------------------------------------------


def test_every_image_taking_endpoint_is_covered(server):
    _, url, _ = server
    api = _client(url).view_api(return_format="dict", print_info=False)["named_endpoints"]
    taking_images = {name.lstrip("/") for name, endpoint in api.items()
                     if any("filepath" in str(p["python_type"]) for p in endpoint["parameters"])}
    assert taking_images == set(MAIN_ENDPOINTS) | set(SKETCH_ENDPOINTS)
    assert {name.lstrip("/") for name in api} >= set(STATE_ENDPOINTS)
    assert {name.split("_")[0] for name in MAIN_ENDPOINTS} == {"blockdrop", "s3pool", "vgan", "multitask"}


def test_the_server_refuses_an_upload_over_the_size_limit(server, corpus):
    """Gradio's own max_file_size, for a client that does not check it first."""
    import httpx

    _, url, _ = server
    oversized = next(case for case in corpus if case.kind == "over-size-limit")
    assert oversized.path.stat().st_size == OVERSIZED_BYTES > upload_limits().max_bytes
    with open(oversized.path, "rb") as file:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": (oversized.name, file)}, timeout=60)
    assert response.status_code == 413, response.text[:300]


def test_whole_corpus_to_the_main_function_of_each_method(server, corpus):
    """Each file goes to one method's main function, in turn (so every kind reaches every method); the
    odd sizes go to all four: whatever the file, a demo gets an RGB image from the shared load_rgb_image
    (test_load_rgb_image_meets_every_expectation_of_the_corpus), so its size is what a demo could
    mishandle. ``-m slow`` sends everything everywhere."""
    proc, url, log_path = server
    methods = list(MAIN_ENDPOINTS)
    turn: Counter = Counter()
    jobs = []
    for case in corpus:
        if case.kind in ("tiny", "extreme-aspect", "large"):
            jobs += [(name, case) for name in methods]
        else:
            jobs.append((methods[turn[case.kind] % len(methods)], case))
            turn[case.kind] += 1
    outcomes = _send(url, jobs)
    assert {case.name for _, case, _ in outcomes} == {case.name for case in corpus}
    assert {name for name, case, _ in outcomes if case.kind == "truncated"} == set(methods)
    _check(outcomes, proc, url, log_path)


@pytest.mark.slow
def test_whole_corpus_to_every_image_taking_function(server, corpus):
    proc, url, log_path = server
    jobs = [(name, case) for case in corpus for name in [*MAIN_ENDPOINTS, *SKETCH_ENDPOINTS]]
    outcomes = _send(url, jobs, with_state=True)
    redrawn = {case.name for name, case, _ in outcomes if name in STATE_ENDPOINTS}
    assert redrawn >= {case.name for case in corpus if case.expect == "ok"}
    assert len(outcomes) == len(jobs) + len(redrawn) * len(STATE_ENDPOINTS)
    _check(outcomes, proc, url, log_path)
