"""llama.cpp against our sampler: the same greedy tokens from an exported GGUF file.

    python -m bench.llamacpp_parity --ckpt last --llama-python /work/llamacpp-venv/bin/python

Exports the checkpoint (a Llama- or GPT-2-layout model, docs/export.md) with `python -m llm.export format=gguf`,
generates greedily from a few prompts with llm.sampler, then with llama.cpp through llama-cpp-python run by
--llama-python (a separate environment: llama-cpp-python builds llama.cpp from source), and prints both token
lists and whether they match. Prompts are tokenized by both sides, and the ids compared too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from llm.checkpoint import find_checkpoint, load_checkpoint
from llm.export import export
from llm.sampler import SamplingParams, generate_ids

PROMPTS = ["def ", "The model ", 'print("héllo")\n', "import torch\n\nclass "]

# Runs in --llama-python: reads the GGUF file, tokenizes each prompt, generates greedily on the CPU.
LLAMA_SIDE = r"""
import json, sys
import llama_cpp
from llama_cpp import Llama
path, n_new, prompts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
llm = Llama(model_path=path, n_ctx=0, n_threads=2, verbose=False, logits_all=False)
out = {"version": llama_cpp.__version__, "rows": []}
for prompt in prompts:
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
    new = []
    llm.reset()
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        new.append(int(token))
        if len(new) == n_new:
            break
    out["rows"].append({"prompt_ids": [int(i) for i in ids], "new": new})
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="last", help="a .ckpt, a run folder, or last")
    parser.add_argument("--outputs-root", default="outputs")
    parser.add_argument("--llama-python", default=sys.executable, help="a Python with llama-cpp-python installed")
    parser.add_argument("--new-tokens", type=int, default=40)
    args = parser.parse_args()

    path = find_checkpoint(args.ckpt, args.outputs_root)
    model, tok, _ = load_checkpoint(path)
    greedy = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=None)
    with tempfile.TemporaryDirectory() as tmp:
        gguf_file = export(path, "gguf", Path(tmp) / "model.gguf")
        proc = subprocess.run(
            [args.llama_python, "-c", LLAMA_SIDE, str(gguf_file), str(args.new_tokens), json.dumps(PROMPTS)],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        sys.exit(f"llama.cpp side failed:\n{proc.stderr[-3000:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"checkpoint: {path} ({model.num_params() / 1e6:.2f}M parameters, {model.config.n_layer} layers)")
    print(f"llama-cpp-python {theirs['version']}; {args.new_tokens} greedy tokens per prompt")
    same = 0
    for prompt, row in zip(PROMPTS, theirs["rows"], strict=True):
        ids = tok.encode(prompt).ids
        ours = generate_ids(model, [ids], args.new_tokens, greedy)[0].token_ids
        match = ours == row["new"][: len(ours)] and row["prompt_ids"] == ids
        same += match
        print(f"{prompt!r}: prompt ids {'equal' if row['prompt_ids'] == ids else 'DIFFER'}; ", end="")
        print(f"{'same' if match else 'DIFFERENT'} tokens: ours {ours[:12]}..., llama.cpp {row['new'][:12]}...")
        if not match:
            print(f"  ours      {tok.decode(ours)!r}\n  llama.cpp {tok.decode(row['new'])!r}")
    print(f"{same}/{len(PROMPTS)} prompts: the same greedy tokens")
    sys.exit(0 if same == len(PROMPTS) else 1)


if __name__ == "__main__":
    main()
