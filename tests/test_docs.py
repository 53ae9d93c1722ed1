"""The README and docs/ are true: every link and anchor resolves (fast, default run), and every shell and Python
block runs on a CPU against the tiny model (marked `docs`: `pytest -m docs tests/test_docs.py`).

How blocks run, and the `<!-- docs-test: ... -->` directives: docs/development.md, "The docs' own tests".
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import docs_blocks
from tests.docs_blocks import DIRECTIVES, Block

BLOCK_TIMEOUT_S = 300
SERVER_READY_TIMEOUT_S = 180
DEFAULT_PORT = "8000"  # `seedvr-local serve`'s, when a server block names none

ALL_BLOCKS = [block for path in docs_blocks.doc_files() for block in docs_blocks.blocks(path)]
RUN_BLOCKS = [block for block in ALL_BLOCKS if block.runnable]


# ---------------------------------------------------------------------------------------- links and anchors


def _link_errors(path: Path) -> list[str]:
    errors = []
    for line, target in docs_blocks.links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:: not checked offline
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(docs_blocks.ROOT)}:{line}: {target}"
        if not resolved.exists():
            errors.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in docs_blocks.anchors(resolved):
            errors.append(f"{where}: no heading with anchor #{anchor} in {resolved.name}")
        elif path.parent == docs_blocks.DOCS_DIR and docs_blocks.DOCS_DIR not in resolved.parents:
            errors.append(f"{where}: a docs page links outside docs/, which the site does not have")
    return errors


@pytest.mark.parametrize("path", docs_blocks.doc_files(), ids=lambda p: str(p.relative_to(docs_blocks.ROOT)))
def test_links_and_anchors_resolve(path):
    assert _link_errors(path) == []


def test_a_broken_link_or_anchor_is_caught(tmp_path, monkeypatch):
    """The checker itself: a missing file and a missing anchor are both reported, a good anchor is not."""
    monkeypatch.setattr(docs_blocks, "DOCS_DIR", tmp_path)
    monkeypatch.setattr(docs_blocks, "ROOT", tmp_path)
    (tmp_path / "b.md").write_text("# B\n\n## The `--compile` flag\n\n## Sizes: download, disk\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#the-compile-flag) [ok](b.md#sizes-download-disk) [code](`x.md`)\n"
        "[gone](c.md) [bad](b.md#nowhere)\n```bash\n[in code](d.md)\n```\n"
    )
    assert _link_errors(page) == [
        "a.md:2: c.md: no such file",
        "a.md:2: b.md#nowhere: no heading with anchor #nowhere in b.md",
    ]


def test_anchors_are_the_ones_mkdocs_makes():
    """Our slugs against Python-Markdown's own toc extension, which MkDocs renders the headings with."""
    markdown = pytest.importorskip("markdown", reason="the docs extra: pip install -e '.[docs]'")
    for path in docs_blocks.doc_files():
        renderer = markdown.Markdown(extensions=["toc", "tables", "fenced_code"])
        html = renderer.convert(path.read_text(encoding="utf-8"))
        ids = set(re.findall(r'<h[1-6] id="([^"]+)"', html))
        assert docs_blocks.anchors(path) == ids, path.name


def test_every_directive_is_known_and_precedes_a_block():
    for path in docs_blocks.doc_files():
        marked = {block.line for block in docs_blocks.blocks(path) if block.directive}
        for line, value in docs_blocks.directive_lines(path):
            assert value in DIRECTIVES, f"{path.name}:{line}: unknown docs-test directive {value!r}"
            following = [number for number in marked if number > line]
            assert following and min(following) <= line + 2, f"{path.name}:{line}: the directive precedes no block"
        for block in docs_blocks.blocks(path):
            if block.directive == "server":
                assert block.lang in ("bash", "sh"), f"{block.name}: a server block is a shell command"


def test_the_readme_gives_the_two_commands():
    """The README's serve command installs no test extras; its test command is the one .ci/run runs."""
    readme = [block.code for block in docs_blocks.blocks(docs_blocks.ROOT / "README.md") if block.lang == "bash"]
    serve, test = readme[0], readme[1]
    assert "seedvr-local serve --model tiny" in serve and "[test]" not in serve
    assert test.strip().endswith(".venv/bin/python -m pytest -q")
    ci = (docs_blocks.ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "\n.venv/bin/python -m pytest -q\n" in ci


@pytest.mark.docs
def test_the_weights_tables_are_the_scripts_output():
    """docs/weights.md quotes `python -m benchmarks.weights_table` row for row."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.weights_table"], cwd=docs_blocks.ROOT, capture_output=True, text=True,
        timeout=BLOCK_TIMEOUT_S, check=True,
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    page = (docs_blocks.DOCS_DIR / "weights.md").read_text(encoding="utf-8").splitlines()
    assert len(rows) > 10 and [row for row in rows if row not in page] == []


# ---------------------------------------------------------------------------------------------- the blocks


class PageRun:
    """The blocks of one page, run in order in one fresh directory, with the servers they start."""

    def __init__(self, path: Path):
        self.path = path
        self._tmp = tempfile.TemporaryDirectory(prefix="seedvr-docs-")
        self.dir = Path(self._tmp.name)
        self.ports: dict[str, str] = {}
        self.servers: list[tuple[subprocess.Popen, Path]] = []
        _lay_out(self.dir)
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
        self.env.update(
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            SEEDVR_HOME=str(self.dir / "models-home"),
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )

    def code(self, block: Block) -> str:
        script = block.script()
        for old, new in self.ports.items():
            script = re.sub(rf"(?<!\d){old}(?!\d)", new, script)
        return script

    def run(self, block: Block) -> None:
        script = self.code(block)
        if block.lang == "python":
            file = self.dir / f"block_{block.line}.py"
            file.write_text(script, encoding="utf-8")
            command = [sys.executable, str(file)]
        else:
            command = ["bash", "-euo", "pipefail", "-c", script]
        try:
            done = subprocess.run(
                command, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.name} ran past {BLOCK_TIMEOUT_S} s:\n{script}\n{self._server_logs()}")
        if done.returncode != 0:
            pytest.fail(
                f"{block.name} exited {done.returncode}:\n{script}\n--- stdout:\n{done.stdout[-3000:]}\n"
                f"--- stderr:\n{done.stderr[-3000:]}{self._server_logs()}"
            )

    def start_server(self, block: Block) -> None:
        named = re.search(r"--port\s+(\d+)", block.code)
        self.ports[named.group(1) if named else DEFAULT_PORT] = str(_free_port())
        script = self.code(block)
        if not named:
            script = script.rstrip("\n") + f" --port {self.ports[DEFAULT_PORT]}\n"
        port = self.ports[named.group(1) if named else DEFAULT_PORT]
        log = self.dir / f"server_{block.line}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {script.strip()}"], cwd=self.dir, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.servers.append((process, log))
        scheme = "https" if "--ssl-certfile" in script else "http"
        _wait_ready(f"{scheme}://127.0.0.1:{port}/readyz", process, log, block)

    def _server_logs(self) -> str:
        return "".join(f"\n--- server log:\n{log.read_text(errors='replace')[-3000:]}" for _, log in self.servers)

    def close(self) -> None:
        for process, _ in self.servers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and its worker processes
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self._tmp.cleanup()


def _lay_out(directory: Path) -> None:
    """What every page's blocks find: small pictures, a short clip with audio, and `.venv`."""
    from PIL import Image

    from seedvr_local.video.samples import make_video

    picture = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    picture.save(directory / "photo.png")
    picture.save(directory / "photo.jpg", quality=95)
    make_video(directory / "clip.mp4", 32, 24, frames=9, fps=12, audio="aac")
    (directory / ".venv").symlink_to(sys.prefix, target_is_directory=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, log: Path, block: Block) -> None:
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE  # the docs' self-signed certificate
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{block.name}: the server exited {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=5, context=insecure) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    pytest.fail(f"{block.name}: not ready within {SERVER_READY_TIMEOUT_S} s:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def page_runs():
    """One PageRun at a time: the blocks of a page run in order, and a page's servers stop when it is done."""
    current: dict[Path, PageRun] = {}

    def for_page(path: Path) -> PageRun:
        if path not in current:
            for run in current.values():
                run.close()
            current.clear()
            current[path] = PageRun(path)
        return current[path]

    yield for_page
    for run in current.values():
        run.close()


def test_a_block_that_fails_fails_its_test(tmp_path):
    """The runner itself: a block's exit status counts, and the directory has what the pages rely on."""
    page = tmp_path / "page.md"
    page.write_text("```bash\ntest -s photo.png && test -s clip.mp4 && test -x .venv/bin/python\n```\n\n"
                    "```console\n$ echo shown only > out.txt\nshown only\n$ exit 3\n```\n")
    ok, failing = docs_blocks.blocks(page)
    run = PageRun(page)
    try:
        run.run(ok)
        with pytest.raises(pytest.fail.Exception, match="exited 3"):
            run.run(failing)
        assert (run.dir / "out.txt").read_text() == "shown only\n"
    finally:
        run.close()


@pytest.mark.docs
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda block: block.name)
def test_block_runs(block, page_runs):
    if block.directive == "skip":
        pytest.skip(f"{block.name}: marked docs-test: skip")
    run = page_runs(block.path)
    if block.directive == "server":
        run.start_server(block)
    else:
        run.run(block)
