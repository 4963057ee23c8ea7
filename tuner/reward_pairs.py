"""An Axolotl prompt strategy for reward-model training (`type: tuner.reward_pairs`):
Axolotl's Bradley-Terry chat-template strategy, reading the two preference layouts
this project meets instead of its own `{system, input, chosen, rejected}` strings:

- UltraFeedback's (`HuggingFaceH4/ultrafeedback_binarized`, recipes/data/dpo.jsonl):
  `prompt` a string, `chosen` and `rejected` conversations ending in the answer;
- the project's pairs (`just prefs`): `messages` the prompt's turns, `chosen` and
  `rejected` one assistant message each.

The chat template, truncation and the chosen/rejected tokens are Axolotl's. This
module imports Axolotl: it is loaded by Axolotl's processes, in the training
environment."""

from __future__ import annotations

from typing import Any

from axolotl.prompt_strategies.bradley_terry.chat_template import BTChatTemplateStrategy
from axolotl.prompt_strategies.bradley_terry.chat_template import load as load_bt


def answer_text(side: Any) -> str:
    """An answer given as a string, one message, or a conversation ending in it."""
    if isinstance(side, str):
        return side
    if isinstance(side, dict):
        return str(side["content"])
    return str(side[-1]["content"])


def prompt_turns(row: dict[str, Any]) -> list[dict[str, str]]:
    if row.get("messages"):
        return list(row["messages"])
    if isinstance(row.get("prompt"), str):
        return [{"role": "user", "content": row["prompt"]}]
    chosen = row.get("chosen")
    if isinstance(chosen, list):  # the conversation before the answer
        return list(chosen[:-1])
    raise ValueError("a preference row needs `prompt` or `messages` (the prompt's turns)")


def bradley_terry_row(row: dict[str, Any]) -> dict[str, str]:
    """The row as Axolotl's Bradley-Terry strategy reads it: one optional system turn
    and one user turn (it cannot render more)."""
    turns = prompt_turns(row)
    system = [t["content"] for t in turns if t["role"] == "system"]
    users = [t["content"] for t in turns if t["role"] != "system"]
    if len(users) != 1 or len(system) > 1:
        raise ValueError(
            f"a reward-model row must have one user turn (and at most one system turn); "
            f"this one has {len(users)} and {len(system)}: {str(users)[:200]}"
        )
    return {
        "system": system[0] if system else "",
        "input": users[0],
        "chosen": answer_text(row["chosen"]),
        "rejected": answer_text(row["rejected"]),
    }


class PreferenceRowsStrategy(BTChatTemplateStrategy):
    def _tokenize_single_prompt(self, prompt: dict[str, Any]) -> dict[str, Any]:
        return super()._tokenize_single_prompt(bradley_terry_row(prompt))


def load(tokenizer: Any, cfg: Any, ds_cfg: dict[str, Any] | None = None) -> PreferenceRowsStrategy:
    strategy = load_bt(tokenizer, cfg, ds_cfg)
    strategy.__class__ = PreferenceRowsStrategy
    # The Bradley-Terry strategy puts a non-empty `system` into the turns itself; its
    # chat-template base would also render the row's `system` key as a turn, even an
    # empty one, which scoring (tuner/scoring.py) never sees. Rows have no such key.
    strategy.prompter.field_system = "system turn: in the messages"
    return strategy
