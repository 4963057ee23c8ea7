"""Writes a bigcode-evaluation-harness task's prompts and stop words as JSON, through the
harness's own task API: what a model completes before the harness scores the completions
(`python -m bigcode_eval.main --load_generations_path …`). Run by the harness
environment's Python: `python scripts/bigcode_prompts.py TASK OUT.json [--limit N]`.

The project generates instead of the harness because NVIDIA's package of it
(nvidia-bigcode-eval 25.10 to 26.3) no longer generates with a local model: its
TokenizedDataset lost the IterableDataset base upstream gives it, and utils.py no longer
imports torch, so `bigcode_eval.main --model PATH` stops at a TypeError.
"""

import argparse
import json

from bigcode_eval.tasks import get_task

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("task")
parser.add_argument("out")
parser.add_argument("--limit", type=int, default=None)
args = parser.parse_args()

# get_task reads the harness's own arguments: none of them apply to these tasks' prompts.
task = get_task(args.task, argparse.Namespace(task_kwargs=None, prompt=None, load_data_path=None))
dataset = task.get_dataset()
count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
prompts = [task.get_prompt(dataset[index]) for index in range(count)]
if not all(isinstance(prompt, str) for prompt in prompts):
    raise SystemExit(f"{args.task}: its prompts are not plain completions (infilling or chat).")
with open(args.out, "w") as out:
    json.dump({"task": args.task, "prompts": prompts, "stop": task.stop_words}, out)
