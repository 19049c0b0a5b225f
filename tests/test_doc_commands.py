"""Every command line in the docs runs as typed.

Each line of a fenced shell block (bash, sh, shell, console, zsh) of README.md and docs/*.md that runs this
project is handed to the real shell, bash and, where installed, zsh, with `python`, `torchrun`, `make` and
`bash` on PATH replaced by one small shim that records its arguments. Both shells must give the program the
same ones. Then:

- composed: a Hydra app (train.py, infer.py) composes its config from exactly the docs' arguments, every job
  of a sweep; a torchrun line passes torchrun's own parser and its script composes; an argparse program
  parses its arguments; `make TARGET` expands (`make -n`) to the project commands in its recipe, each handled
  like a line of the docs; a bash script passes `bash -n`.
- ran: the line runs through the shell again, for real. train.py trains a step or two of a tiny model on a
  small corpus (overrides appended after the docs' own, whose values the composition already checked);
  serve.py, a server that runs until stopped, starts on a free port (port=0 appended), must answer /health and
  /v1/models, and is then stopped; every other program runs in full. A line that reads a checkpoint finds a small
  trained run where it looks.
  A line that matches NOT_IN_CI is composed only, for the reason given there.

A command in the prose, an inline code span (`...`, outside fenced blocks, a span may wrap onto the next line)
whose text starts with `python `, `make ` or `llm-` and that names this project's program, goes through the
same shells and the same composition, and is never run: it is prose. `llm-X` is the installed entry point
(pyproject.toml's [project.scripts]), composed as `python -m` its module. `make TARGET` must expand; its
recipe's project lines compose (a target such as `make install` or `make clean` runs none of them, and may).
A span that is only a program's name (`python -m llm.ingest`, `llm-eval`) names the program, which may need
arguments the sentence does not give: it is checked as `NAME --help` (argparse's help; Hydra's, the default
config composed). A program without argparse (it reads sys.argv itself) is not started for a span: it must
exist. A span that is a template rather than a command is skipped, with the reason shown: it holds a
`<placeholder>` or an ellipsis (`...` or `…`).

`~` is a temporary HOME holding a small folder for every ~/... path the docs name; each line runs in a
folder of its own (the repository's files linked in, outputs/ its own), and /tmp/... paths go under it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser as hydra_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig
from torch.distributed.run import get_args_parser as torchrun_args_parser

from llm.config import config_dir
from llm.model import GPTConfig
from tests.conftest import DOC_COMMANDS, TINY

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(bash|sh|shell|console|zsh)[ \t]*\n(.*?)^```", re.M | re.S)
# the installed commands (llm-train: llm.train) and the module each runs
SCRIPTS = re.search(r"^\[project\.scripts\]\n(.*?)(?:^\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
ENTRY_POINTS = dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+):\w+"', SCRIPTS[1], re.M))  # (tomllib: Python 3.11+)
# a command line of this project, after any VAR=value prefixes
PROJECT = re.compile(
    r"^(?:\w+=\S*\s+)*(?:python (?:train\.py|infer\.py|serve\.py|bench/|-m (?:llm|tools|bench)\b)|make\b|bash bench/"
    rf"|torchrun\b|(?:{'|'.join(map(re.escape, ENTRY_POINTS))})(?!\S))"
)
FENCE = re.compile(r"^ {0,3}(```|~~~).*$", re.M)
# an inline code span: a run of backticks, the text, the same run; within one paragraph (no blank line)
INLINE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
INLINE_COMMAND = re.compile(r"^(?:python |make |llm-)")
NAME_ALONE = re.compile(rf"^(?:python (?:-m \S+|\S+\.py)|{'|'.join(map(re.escape, ENTRY_POINTS))})$")
TEMPLATE = re.compile(r"<[^<>\s][^<>]*>|\.\.\.|…")  # outputs/<task>/<timestamp>, data.paths=…
HOME_PATH = re.compile(r"(?:~|\$HOME|\$\{HOME\})/([\w.-]+(?:/[\w.-]+)*)")

# Lines that cannot run here, by pattern, with the reason; they are still composed. First match wins.
NOT_IN_CI = {
    r"^torchrun\b": "several machines (tests/test_scale.py runs two torchrun nodes on one machine)",
    r"hydra/launcher=slurm": "needs a SLURM cluster",
    r"\btrainer=(gpu|ddp|fsdp)\b|\bsweep=per_gpu\b": "needs CUDA GPUs",
    r"\bbench/gpu\.sh\b|--preset gpt2-124m": "needs a CUDA GPU",
    r"^python (?:-m )?bench[/.]": "a benchmark: minutes of timed runs on a CPU",
    r"\bWANDB_MODE=online\b": "uploads to wandb.ai",
    r"backend[= ]ray\b": "needs a Ray cluster (tests/test_ingest_ray.py starts a local one)",
    r"^make test\b": "the whole test suite, this test included",
    r"\btasks=\[[^\]]*\b(?:hellaswag|arc_easy|arc_challenge|lambada_openai|piqa|winogrande)\b": (
        "lm-eval tasks whose datasets come from the Hugging Face hub (offline they stop with exit 2, as tested)"
    ),
}

# The one-step run: a tiny model, tiny batches, a step or two, a validation, and outputs in the line's folder.
TINY_MODEL = [o for o in TINY if o.startswith(("model.config.", "data.batch_size="))]
ONE_STEP = [
    *TINY_MODEL,
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_steps=2",
    "trainer.val_check_interval=1",
    "data.val_windows=2",
    "optim.warmup_steps=1",
]
LINKED_OUT = {"outputs", "multirun"}  # the repository's own run folders stay out of the lines' folders


@dataclass(frozen=True)
class Line:
    doc: str  # README.md, docs/scaling.md
    lineno: int
    text: str  # as the shell gets it: continuation lines included, comment and all
    column: int | None = None  # an inline code span of the prose: where it starts on its line (composed only)

    @property
    def command(self) -> str:
        """The command alone on one line: no continuations, no comment."""
        joined = re.sub(r"\\\n\s*", "", self.text)
        return re.sub(r"\s+#\s.*$", "", joined).strip()

    @property
    def inline(self) -> bool:
        return self.column is not None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.lineno}" if self.column is None else f"{self.doc}:{self.lineno}:{self.column}"


def doc_lines() -> list[Line]:
    lines = []
    for path in DOC_FILES:
        text = path.read_text()
        for block in SHELL_BLOCK.finditer(text):
            first = text.count("\n", 0, block.start(2)) + 1
            pending: list[str] = []
            for offset, raw in enumerate(block.group(2).splitlines()):
                if block.group(1) == "console":  # only what follows the prompt is typed
                    if not raw.startswith("$ ") and not pending:
                        continue
                    raw = raw.removeprefix("$ ")
                pending.append(raw)
                if raw.endswith("\\"):
                    continue
                command = "\n".join(pending)
                start = first + offset - len(pending) + 1
                pending = []
                if PROJECT.match(command.strip()):
                    lines.append(Line(str(path.relative_to(ROOT)), start, command.strip()))
    return lines


def inline_lines() -> list[Line]:
    """The commands written in the prose: inline code spans outside fenced blocks that start with `python `,
    `make ` or `llm-` and name this project's program."""
    spans = []
    for path in DOC_FILES:
        text = path.read_text()
        prose, fence = [], None  # fenced blocks blanked out, the line numbers kept
        for row in text.split("\n"):
            found = FENCE.match(row)
            if found and (fence is None or row.lstrip().startswith(fence)):
                fence = found[1] if fence is None else None
                row = ""
            prose.append("" if fence is not None else row)
        prose_text = "\n".join(prose)
        for span in INLINE_SPAN.finditer(prose_text):
            command = re.sub(r"\s*\n\s*", " ", span[2]).strip()  # markdown: a line break in a span is a space
            if INLINE_COMMAND.match(command) and PROJECT.match(command):
                lineno = prose_text.count("\n", 0, span.start()) + 1
                column = span.start() - (prose_text.rfind("\n", 0, span.start()) + 1) + 1
                spans.append(Line(str(path.relative_to(ROOT)), lineno, command, column))
    return spans


LINES = doc_lines()
INLINE = inline_lines()


def not_in_ci(command: str) -> str | None:
    return next((reason for pattern, reason in NOT_IN_CI.items() if re.search(pattern, command)), None)


# ---------------------------------------------------------------------------------------------- the world

SHIM = """#!{python}
import json, os, shutil, sys
name = os.path.basename(sys.argv[0])
if os.environ["DOCS_SHIM"] == "capture":  # record the arguments the shell gave
    with open(os.environ["DOCS_ARGV"], "a") as f:
        f.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
    sys.exit(0)
# run: the real program, with the test's arguments after the docs' own
path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != os.path.dirname(sys.argv[0]))
real = sys.executable if name == "python" else shutil.which(name, path=path)
entry = {entry_points!r}.get(name)  # an installed command (llm-train): its module, with this interpreter
first = [sys.executable, "-m", entry] if entry else [real]
extra = json.loads(os.environ.get("DOCS_EXTRA", "[]"))
os.execv(first[0], [*first, *sys.argv[1:], *extra])
"""


@dataclass
class World:
    root: Path
    home: Path
    bin: Path
    corpus: Path
    cache: Path
    shells: list[str]  # absolute paths: bash first
    make: str

    @property
    def reference(self) -> Path:
        """A run of `python train.py` (one step, tiny): what a line that reads a checkpoint finds. Made once."""
        return self.reference_run("reference", [])

    @property
    def exportable(self) -> Path:
        """The same in the Llama layout (docs/export.md): what an export line reads. Made once."""
        return self.reference_run("exportable", ["experiment=exportable", "model.config.qk_norm=false"])  # Llama's

    def reference_run(self, name: str, overrides: list[str]) -> Path:
        run_dir = self.root / name
        if not (run_dir / "checkpoints" / "last.ckpt").exists():
            args = [*ONE_STEP, "trainer.max_steps=1", *overrides, *cache_and_data(self), f"hydra.run.dir={run_dir}"]
            command = [sys.executable, str(ROOT / "train.py"), *args]
            proc = subprocess.run(command, cwd=self.root, env=self.env(), capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
        return run_dir

    def env(self, **extra: str) -> dict[str, str]:
        # make's own variables leak in when the suite runs under `make test`; a nested make would then
        # print "Entering directory" lines into its dry run.
        outer = ("DOCS_", "WANDB_", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
        env = {k: v for k, v in os.environ.items() if not k.startswith(outer)}
        path = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env |= {"HOME": str(self.home), "PATH": path, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
        return env | extra


def write_documents(folder: Path, name: str) -> None:
    """A few small documents of prose and code, different in each folder."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["quick", "brown", "lazy", "clever", "small", "red"] * 12
    for i in range(4):
        sentences = " ".join(f"The {word} fox number {i * 7 + j}." for j, word in enumerate(words))
        (folder / f"note{i}.txt").write_text(f"Note {i} in {name}. {sentences}\n")
    code = "".join(f"def {name.replace('-', '_')}_{i}(a, b):\n    return a * {i} + b\n\n\n" for i in range(30))
    (folder / "example.py").write_text(code)
    if "papers" in name:  # the docs glob ~/papers/**/*.pdf
        from tools.make_sample import text_pdf

        (folder / "2024" / "paper.pdf").parent.mkdir(exist_ok=True)
        (folder / "2024" / "paper.pdf").write_bytes(text_pdf([[f"A paper in {name}.", *sentences.split(". ")[:8]]]))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("docs")
    home, bin_dir = root / "home", root / "bin"
    bin_dir.mkdir()
    for name in ("python", "torchrun", "make", "bash", *ENTRY_POINTS):
        shim = bin_dir / name
        shim.write_text(SHIM.format(python=sys.executable, entry_points=ENTRY_POINTS))
        shim.chmod(0o755)
    for rel in sorted({m for line in LINES for m in HOME_PATH.findall(line.text)}):  # the docs' own ~/ paths
        write_documents(home / rel, rel.replace("/", "-"))
    home.mkdir(exist_ok=True)
    corpus = root / "corpus"
    write_documents(corpus, "corpus")
    shells = [shutil.which(s) for s in ("bash", "zsh") if shutil.which(s)]  # found before the shims shadow them
    return World(root, home, bin_dir, corpus, root / "cache", shells, shutil.which("make") or "make")


def cache_and_data(world: World) -> list[str]:
    return [f"paths.cache_dir={world.cache}", f"data.paths=[{world.corpus}]"]


def line_folder(world: World, name: str) -> Path:
    """A working folder for one line: the repository's files linked in, its own outputs/."""
    cwd = world.root / "lines" / re.sub(r"\W+", "-", name)
    cwd.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in LINKED_OUT:
            (cwd / entry.name).symlink_to(entry)
    (cwd / "outputs").mkdir()
    return cwd


def shell_text(world: World, text: str) -> str:
    return text.replace("/tmp/", f"{world.root}/tmp/")  # outputs the docs send to /tmp stay in the test's folder


def capture(world: World, shell: str, text: str, cwd: Path) -> list[list[str]]:
    """The programs (shims) the shell starts for this text, each with its arguments."""
    argv_file = cwd / f".argv-{Path(shell).name}"
    argv_file.unlink(missing_ok=True)
    env = world.env(DOCS_SHIM="capture", DOCS_ARGV=str(argv_file))
    proc = subprocess.run([shell, "-c", text], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{Path(shell).name} refused it: {proc.stderr.strip()}"
    return [json.loads(row) for row in argv_file.read_text().splitlines()] if argv_file.exists() else []


def run(world: World, shell: str, text: str, cwd: Path, extra: list[str]) -> subprocess.CompletedProcess:
    env = world.env(DOCS_SHIM="run", DOCS_EXTRA=json.dumps(extra))
    stdin = "def \n"  # a line for interactive=true, then end of input
    return subprocess.run(
        [shell, "-c", text], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=600
    )


def serve_and_stop(world: World, shell: str, text: str, cwd: Path, extra: list[str]) -> str | None:
    """Start a server line, wait for its "serving ... on http://HOST:PORT" log line and for /health and /v1/models
    to answer, then stop it: None, or what went wrong."""
    import httpx

    env = world.env(DOCS_SHIM="run", DOCS_EXTRA=json.dumps(extra))
    proc = subprocess.Popen(
        [shell, "-c", text], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    log: list[str] = []
    try:
        url = None
        for line in proc.stderr:
            log.append(line)
            if " on http://" in line:
                url = line.split(" on ")[1].split()[0]
                break
        if url is None:
            return f"exit {proc.wait()} before serving\n{''.join(log)[-3000:]}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{url}/health")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    return f"{url}/health never answered"
                time.sleep(0.1)
        models = httpx.get(f"{url}/v1/models")
        if health.status_code != 200 or health.json()["status"] != "ok" or not models.json()["data"]:
            return f"/health: {health.text}; /v1/models: {models.text}"
        return None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        proc.stderr.close()


# ---------------------------------------------------------------------------------------------- composing


HYDRA_APP = re.compile(r'^\s*run_command\("(\w+)"', re.M)  # every entry point's main: llm.config.run_command


def hydra_script(script: Path) -> Path | None:
    """The file whose Hydra app `python script` runs: the script, or the llm module whose main it calls."""
    text = script.read_text()
    if HYDRA_APP.search(text):
        return script
    found = re.search(r"^from (llm(?:\.\w+)+) import .*\bmain\b", text, re.M)
    module = ROOT.joinpath(*found.group(1).split(".")).with_suffix(".py") if found else None
    return module if module is not None and HYDRA_APP.search(module.read_text()) else None


def hydra_module(module: str) -> Path | None:
    """The file of `python -m llm.X` when it is a Hydra app (llm.export), else None."""
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    return path if module.startswith("llm.") and path.is_file() and HYDRA_APP.search(path.read_text()) else None


def hydra_config_name(script: Path) -> str:
    found = HYDRA_APP.search(script.read_text())
    assert found, f"{script.name} runs no run_command(NAME, ...)"
    return found.group(1)


def compose_hydra(script: Path, args: list[str]) -> tuple[list[DictConfig], argparse.Namespace]:
    """The config of every job this command line would run, composed as Hydra's own CLI would."""
    flags = hydra_args_parser().parse_args(args)
    assert not (flags.config_path or flags.config_dir or flags.config_name), "the docs use conf/ as it is"
    jobs = [flags.overrides]
    if flags.multirun:
        parsed = OverridesParser.create().parse_overrides(flags.overrides)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    configs = []
    for job in jobs:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            configs.append(compose(hydra_config_name(script), overrides=job, return_hydra_config=True))
    GlobalHydra.instance().clear()
    return configs, flags


class Parsed(Exception):
    """Raised by argparse once the arguments parsed: the program stops before doing anything."""


def parse_only(args: list[str], cwd: Path) -> None:
    """An argparse program (`python X.py ...` or `python -m X ...`) parses these arguments, and does nothing."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **k):
        real(self, *a, **k)
        raise Parsed

    target = args[1] if args[0] == "-m" else args[0]
    rest = args[2:] if args[0] == "-m" else args[1:]
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as m, contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported already
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        m.chdir(cwd)
        m.setattr(sys, "argv", [target, *rest])
        m.setattr(sys, "path", list(sys.path))
        try:
            if args[0] == "-m":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(cwd / target), run_name="__main__")
        except Parsed:
            return
        except SystemExit as e:
            if e.code == 0 and rest == ["--help"]:  # a program named alone in the prose: its help
                return
            pytest.fail(f"{target} refused its arguments: {err.getvalue().strip() or e}")
    pytest.fail(f"{target} never parsed its arguments with argparse")


def make_recipe(target_args: list[str], cwd: Path, world: World) -> list[str]:
    """The project's command lines that `make ARGS` would run (a dry run)."""
    command = [
        world.make,
        "-n",
        "--no-print-directory",
        *target_args,
        "PY=python",
    ]  # PY: the shim, not .venv/bin/python
    proc = subprocess.run(command, cwd=cwd, env=world.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"make -n {' '.join(target_args)}: {proc.stderr.strip()}"
    return [row.strip() for row in proc.stdout.splitlines() if PROJECT.match(row.strip())]


# ---------------------------------------------------------------------------------------------- the test


@dataclass
class Plan:
    """What one program started by a line needs: extra arguments for the run, and what the run must leave."""

    extra: list[str]
    trains: bool = False  # leaves a last.ckpt
    prints: bool = False  # writes to stdout
    serves: bool = False  # a server: started, asked for /health and /v1/models, stopped


def check_program(argv: list[str], command: str, cwd: Path, world: World, compose_only: bool = False) -> Plan | None:
    """Compose one program's command line; return how to run it, or None when it only prints or is not to run."""
    name, args = argv[0], argv[1:]
    if name in ENTRY_POINTS:  # llm-train ...: python -m llm.train ...
        name, args = "python", ["-m", ENTRY_POINTS[name], *args]
    if name == "torchrun":
        flags = torchrun_args_parser().parse_args(args)
        fixed_rank = any(a.startswith(("--node-rank", "--node_rank")) for a in args)
        if not fixed_rank and flags.nnodes != "1":
            assert flags.rdzv_backend == "c10d", f"{command}: without --rdzv-backend=c10d every node is node rank 0"
            assert flags.rdzv_endpoint, f"{command}: c10d needs --rdzv-endpoint=HOST:PORT"
        compose_hydra(hydra_script(cwd / flags.training_script), flags.training_script_args)
        return None
    if name == "bash":
        proc = subprocess.run(["bash", "-n", args[0]], cwd=cwd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return None if compose_only else Plan([])
    assert name == "python", argv
    script = hydra_script(cwd / args[0]) if args[0] != "-m" else hydra_module(args[1])
    if script is not None:
        rest = args[2:] if args[0] == "-m" else args[1:]
        configs, flags = compose_hydra(script, rest)
        if compose_only:
            return None
        if flags.cfg or flags.help or flags.hydra_help or flags.info:
            return Plan([], prints=True)  # prints and exits: runs in full
        return hydra_plan(configs, rest, bool(flags.multirun), cwd, world)
    source = program_file(args, cwd)
    if compose_only and "argparse" not in source.read_text():  # it would run to find its arguments: it is there
        return None
    parse_only(args, cwd)
    return None if compose_only else Plan([])


def program_file(args: list[str], cwd: Path) -> Path:
    """The file `python ARGS` runs: the script, or the module's file (its __main__.py for a package)."""
    if args[0] != "-m":
        path = cwd / args[0]
    else:
        path = ROOT.joinpath(*args[1].split("."))
        path = path / "__main__.py" if path.is_dir() else path.with_suffix(".py")
    assert path.is_file(), f"python {' '.join(args[:2])}: no such program"
    return path


def hydra_plan(configs: list[DictConfig], args: list[str], multirun: bool, cwd: Path, world: World) -> Plan:
    cfg = configs[0]
    if cfg.get("ckpt_path"):  # reads a checkpoint: put the reference run where it looks
        reference = world.exportable if "format" in cfg else world.reference  # export: a Llama-layout run
        spec = str(cfg.ckpt_path)
        target = cwd / "outputs" / "train" / "reference" if spec == "last" else cwd / spec
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            if spec.endswith(".ckpt"):
                shutil.copyfile(reference / "checkpoints" / "last.ckpt", target)
            else:
                shutil.copytree(reference, target)
    init_from = str(cfg.get("init_from") or "")
    if init_from == "last" or init_from.startswith("outputs/"):  # one of our runs: the reference run
        target = cwd / "outputs" / "train" / "reference" if init_from == "last" else cwd / init_from
        if not target.exists():
            shutil.copytree(world.reference, target)
    elif init_from:  # a pretrained model's folder: a tiny GPT-2 with its own tokenizer
        write_gpt2_folder(Path(os.path.expanduser(init_from.replace("$HOME", str(world.home)))), world)
    for arg in args:  # a prompt file the docs name
        key, _, value = arg.partition("=")
        if key.endswith("_file") and value and not (cwd / value).exists():
            (cwd / value).write_text("def \nThe \n")
    outputs = [f"paths.outputs_root={cwd / 'outputs'}"] if "outputs_root" in cfg.get("paths", {}) else []
    if "max_batch" in cfg:  # serve.py: runs until stopped
        return Plan([*outputs, "port=0"], serves=True)
    if "trainer" not in cfg:  # infer.py: runs in full
        return Plan(outputs, prints=True)
    extra = [*ONE_STEP, *outputs, f"paths.cache_dir={world.cache}"]
    if not any(re.match(r"\+*data\.paths=", a) for a in args):
        extra.append(f"data.paths=[{world.corpus}]")
    if multirun:
        extra.append(f"hydra.sweep.dir={cwd / 'multirun'}")
        if "n_trials" in cfg.hydra.sweeper:
            extra.append("hydra.sweeper.n_trials=1")
    return Plan(extra, trains=not cfg.trainer.get("fast_dev_run"))


def write_gpt2_folder(folder: Path, world: World) -> None:
    """A Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer files) of a tiny random model."""
    if (folder / "config.json").is_file():
        return
    pytest.importorskip("safetensors")
    from llm.interop.hf import save_pretrained
    from llm.interop.tokenizer import save_hf_tokenizer
    from llm.model import GPT
    from llm.tokenizer import eod_id, train_tokenizer

    texts = [p.read_text() for p in sorted(world.corpus.rglob("*")) if p.is_file()]
    tok = train_tokenizer(texts, 320)
    keys = dict(block_size=1024, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, attn="sdpa", pos="learned")
    keys |= dict(norm="layernorm", mlp="gelu", bias=True, dropout=0.0, qk_norm=False, zero_init_proj=False)
    keys |= dict(value_embeds=0, unet_skips=False)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), logit_softcap=None, tie_embeddings=True, **keys))
    save_pretrained(model, folder, eod_id(tok), eod_id(tok))
    save_hf_tokenizer(tok, folder, 1024)


@dataclass
class Checked:
    """One docs line after the shells and the composition: what to run, or why it failed or is not run here."""

    line: Line
    cwd: Path
    error: BaseException | None = None  # from a shell or a composition: the line's test raises it
    reason: str | None = None  # composed only, for this reason
    plans: list[tuple[str, Plan]] = field(default_factory=list)  # (command line, how to run it)
    failures: list[str] = field(default_factory=list)  # what went wrong in the runs


def check_line(line: Line, world: World) -> Checked:
    """Through the shells, then composed: in this process, one line after the other. An inline span of the prose
    is composed only: no plans, nothing prepared for a run."""
    checked = Checked(line, line_folder(world, line.id), reason=not_in_ci(line.command))
    text = shell_text(world, line.text)
    bash = world.shells[0]
    try:
        started = {shell: capture(world, shell, text, checked.cwd) for shell in world.shells}
        assert started[bash], f"the shell started no program for {line.command!r}"
        for shell, argvs in started.items():
            assert argvs == started[bash], f"{Path(shell).name} and bash give different arguments: {argvs}"
        rows = [(text, started[bash])]
        if started[bash][0][0] == "make":  # the recipe's command lines, each like a line of the docs
            recipe = make_recipe(started[bash][0][1:], checked.cwd, world)
            rows = [(row, capture(world, bash, row, checked.cwd)) for row in recipe]
            assert rows or checked.reason or line.inline, f"`{line.command}` runs none of the project's commands"
        for row, argvs in rows:
            for argv in argvs:
                plan = check_program(argv, line.command, checked.cwd, world, compose_only=line.inline)
                if plan is not None:
                    checked.plans.append((row, plan))
    except (Exception, pytest.fail.Exception) as e:
        checked.error = e
    return checked


def run_line(checked: Checked, world: World) -> None:
    """Run a composed line for real; two lines at a time, each in its own folder."""
    for row, plan in checked.plans:
        before = written_checkpoints(checked.cwd)
        readme_paths = "data.paths=" in row and checked.line.doc == "README.md"
        for shell in world.shells if readme_paths else world.shells[:1]:  # the README's folders train in zsh too
            if plan.serves:
                failure = serve_and_stop(world, shell, row, checked.cwd, plan.extra)
                if failure:
                    checked.failures.append(f"{Path(shell).name} -c {row!r}: {failure}")
                continue
            proc = run(world, shell, row, checked.cwd, plan.extra)
            if proc.returncode != 0:
                output = f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
                checked.failures.append(f"{Path(shell).name} -c {row!r}: exit {proc.returncode}\n{output}")
            elif plan.prints and not proc.stdout.strip():
                checked.failures.append(f"{Path(shell).name} -c {row!r} printed nothing")
        after = written_checkpoints(checked.cwd)
        if plan.trains and not any(before.get(p) != t for p, t in after.items()):  # new, or a resume's rewritten
            checked.failures.append(f"{row!r} trained but wrote no last.ckpt")


@pytest.fixture(scope="module")
def checked_lines(world: World, request) -> dict[str, Checked]:
    """Every selected line checked, then the runnable ones run, two at a time (the CI machine has 2 cores)."""
    items = [item for item in request.session.items if item.module.__name__ == __name__ and hasattr(item, "callspec")]
    selected = [item.callspec.params["line"] for item in items if "line" in item.callspec.params]
    checked = {line.id: check_line(line, world) for line in selected}
    runnable = [c for c in checked.values() if c.error is None and c.reason is None]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda c: run_line(c, world), runnable))
    return checked


@pytest.mark.slow
@pytest.mark.parametrize("line", LINES, ids=lambda line: line.id)
def test_doc_command_runs_as_typed(line: Line, checked_lines: dict[str, Checked], world: World, pytestconfig) -> None:
    counts = pytestconfig.stash.setdefault(DOC_COMMANDS, {"ran": 0, "composed": 0, "not_in_ci": {}})
    counts["shells"] = [Path(s).name for s in world.shells]
    checked = checked_lines[line.id]
    if checked.error is not None:
        raise checked.error
    counts["composed"] += 1
    if checked.reason:
        counts["not_in_ci"][line.id] = checked.reason
        return
    assert not checked.failures, "\n\n".join(checked.failures)
    counts["ran"] += 1


def written_checkpoints(cwd: Path) -> dict[Path, int]:
    found = [p for folder in ("outputs", "multirun") for p in (cwd / folder).rglob("last.ckpt")]
    return {p: p.stat().st_mtime_ns for p in found}


@pytest.mark.parametrize("span", INLINE, ids=lambda span: span.id)
def test_doc_inline_command_composes(span: Line, world: World) -> None:
    """A command in the prose goes through bash and zsh to the same arguments, and composes; it is never run."""
    template = TEMPLATE.search(span.command)
    if template:
        pytest.skip(f"{span.id}: a template, not a command ({template[0]!r} in {span.command!r})")
    if NAME_ALONE.match(span.command):
        span = Line(span.doc, span.lineno, f"{span.command} --help", span.column)
    checked = check_line(span, world)
    if checked.error is not None:
        raise AssertionError(f"{span.id}: `{span.command}`: {checked.error}") from checked.error
    assert not checked.plans, "an inline command is composed only"


def test_every_rule_is_used_and_the_docs_have_commands() -> None:
    assert len(LINES) >= 20, [line.id for line in LINES]
    commands = [line.command for line in LINES]
    for pattern in NOT_IN_CI:
        assert any(re.search(pattern, c) for c in commands), f"NOT_IN_CI rule {pattern!r} matches no docs line"
    assert any(c.startswith("python train.py") and "data.paths=" in c for c in commands)
    spans = [span.command for span in INLINE]
    assert len(spans) >= 20, spans
    for start in ("python ", "make ", "llm-"):
        assert any(c.startswith(start) for c in spans), f"no inline command starts with {start!r}"
    assert any(TEMPLATE.search(c) for c in spans), "the template rule skips no inline span"
