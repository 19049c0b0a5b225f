"""The package works when installed: a wheel (not editable) in a fresh venv, used from another directory."""

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_ingests_trains_and_generates_from_another_directory(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": ""}
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run([*build, "-w", str(tmp_path / "dist"), str(ROOT)], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("llm-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path, env)
    # The dependencies come from this interpreter's site-packages, appended after the venv's own (a plain path
    # in a .pth file: the editable install of the checkout that may live there is not activated).
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    (Path(site.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    notes = work / "notes"
    notes.mkdir(parents=True)
    for i in range(6):
        (notes / f"note{i}.md").write_text(f"# Note {i}\n\n" + "Small models learn the shape of text. " * 30)
    (notes / "tool.py").write_text("def add(a, b):\n    return a + b\n" * 20)

    where = run([str(python), "-c", "import llm; print(llm.__file__)"], work, env)
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout

    out = run([str(python), "-m", "llm.ingest", "notes", "--out", "ingested"], work, env)
    assert "manifest: ingested/manifest.jsonl" in out and (work / "ingested" / "text").is_dir()

    tiny = textwrap.dedent("""
        data.paths=notes model.config.n_layer=1 model.config.n_embd=32 model.config.n_head=2 model.config.n_kv_head=1
        model.config.block_size=32 model.config.vocab_size=300 data.batch_size=4 trainer.max_steps=3
        trainer.val_check_interval=3 trainer.accelerator=cpu
    """).split()
    out = run([str(venv / "bin" / "llm-train"), *tiny], work, env)
    (run_dir,) = (work / "outputs" / "train").iterdir()  # outputs under the working directory
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and "checkpoint:" in out

    infer = [str(venv / "bin" / "llm-infer"), "ckpt_path=last", "prompt=Small", "max_new_tokens=8", "seed=1"]
    text = run(infer, work, env)
    assert len(text.strip()) > len("Small")  # the prompt and a continuation

    # the server's chat page ships as package data, and llm-serve composes its config from the installed conf/
    show_page = (
        "from importlib import resources; print(resources.files('llm.serve').joinpath('index.html').read_text())"
    )
    assert "<textarea" in run([str(python), "-c", show_page], work, env)
    assert "max_batch: 8" in run([str(venv / "bin" / "llm-serve"), "--cfg", "job"], work, env)
