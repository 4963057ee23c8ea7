"""`python -m tuner.evaluate.lm_eval_main ARGS`: lm-eval's own command line (the same
arguments, output and log), its task index built from the project's tasks alone.

lm-eval indexes its 14,705 built-in task configs at every start, 10 to 20 s on two
cores, before it reads --tasks, and its command line has no switch for TaskManager's
`include_defaults`. The harness runs this entry point only when every task of a call
is one of the project's (evaluate/tasks/, given as --include_path); any other call
runs `python -m lm_eval` unchanged."""

from functools import partialmethod

from lm_eval.__main__ import cli_evaluate
from lm_eval.tasks import TaskManager

if __name__ == "__main__":
    TaskManager.__init__ = partialmethod(TaskManager.__init__, include_defaults=False)
    cli_evaluate()
