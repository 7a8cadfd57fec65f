"""Helpers of the study runner tests: tiny case files from random models and two toy analyses.

Importing this module registers the analyses ``toy`` and ``toy2`` (a study file names it in
``[study] plugins = ["tests.study_toy"]``, so a ``contrastlens study run`` subprocess has them too).

- ``toy``: Δℓ and input relevance of the unit's explanation (``ctx.explain(method=settings.method)``):
  table ``summary`` (one row: delta, scaled = delta × scale, rel_sum, n_tokens, and a ``case`` column the
  store must overwrite), table ``tokens`` (position, token_id, relevance), tensor ``relevance``. ``sleep``
  slows it down (the kill test), a case id in ``fail_on`` raises.
- ``toy2``: the same explanation (memoised: shared with ``toy``) reduced to its top position; skips the
  models named in ``skip_models``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from contrastlens.cases.schema import FailureCase
from contrastlens.study.base import Section, Table, UnitResult, register_analysis

PROMPTS = [
    "What is the sum of 3 and 5? Answer with one number.",
    "Write a short answer and do not use any commas in your reply.",
    "The capital of France is Paris, and the capital of Italy is",
    "Please respond in English only, in lowercase letters.",
    "Let x be a number such that 2x + 3 = 11. What is x?",
    "Answer with exactly three bullet points about the quick brown fox.",
    "def add(a, b): return a + b. What does add(2, 2) return?",
    "End your reply with the word done. Numbers: 0 1 2 3 4 5.",
]
COMPLETIONS = [
    "The sum of 3 and 5 is 8.",
    "The answer is 42, done.",
    "Rome, and the capital of France is Paris.",
    "the model predicted the wrong token.",
    "then x = 4. The answer is 4.",
    "The quick brown fox jumps over the lazy dog.",
    "The answer is 4 and done.",
    "Numbers: 6 7 8 9 10 done.",
]


@torch.no_grad()
def make_cases(lm, n: int, *, benchmark: str = "toybench", prefix: str = "toy", offset: int = 0,
               extra_prompt_ids: tuple[int, ...] = ()) -> list[FailureCase]:
    """``n`` localised, clean cases under ``lm``: chat prompt (followed by ``extra_prompt_ids``) + completion,
    the failure at a completion token, the contrast the lowest-logit token there (so Δℓ > 1),
    ``delta_logit`` the model's real Δℓ."""
    out = []
    for j in range(n):
        i = j + offset
        msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + (f" ({i})" if i >= len(PROMPTS) else "")}]
        prompt = lm.apply_chat_template(msgs)
        prompt_ids = lm.encode(prompt, add_special_tokens=False) + list(extra_prompt_ids)
        comp_ids = lm.encode(COMPLETIONS[i % len(COMPLETIONS)], add_special_tokens=False)
        fi = min(len(comp_ids) - 1, 2 + i % 3)
        ids = prompt_ids + comp_ids[:fi]
        target = comp_ids[fi]
        logits = lm.model(torch.tensor([ids])).logits[0, -1].float()
        masked = logits.clone()
        masked[target] = float("inf")
        contrast = int(masked.argmin())
        delta = float(logits[target] - logits[contrast])
        tok = lm.tokenizer
        out.append(FailureCase(
            id=f"{prefix}-{i}", benchmark=benchmark, item_id=str(i), model_source=lm.source, messages=msgs,
            prompt=prompt, prompt_ids=prompt_ids, chat=True, completion=tok.decode(comp_ids), completion_ids=comp_ids,
            status="localised", failure_index=fi, target_id=target, target_str=tok.decode([target]),
            contrast_id=contrast, contrast_str=tok.decode([contrast]), delta_logit=delta, clean=delta > 1.0,
            method="manual", completion_before_err=tok.decode(comp_ids[:fi]),
            provenance=lm.provenance().to_dict()))
    return out


def write_cases(path: Path, cases: list[FailureCase]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c.model_dump(mode="json")) + "\n" for c in cases), encoding="utf-8")
    return path


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def study_toml(*, name: str = "toy-study", models: list[dict], cases: list[dict], analyses: dict[str, dict],
               rules: list[str] = ("attnlrp",), seed: int = 0, runner: dict | None = None,
               plugins: list[str] = ("tests.study_toy",)) -> str:
    """A study file's text."""
    lines = ["[study]", f"name = {toml_value(name)}", f"seed = {seed}", f"plugins = {toml_value(list(plugins))}",
             "[attribution]", f"rules = {toml_value(list(rules))}"]
    for m in models:
        lines.append("[[models]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in m.items()]
    for c in cases:
        lines.append("[[cases]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in c.items()]
    for a, settings in analyses.items():
        lines.append(f"[analyses.{a}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    if runner:
        lines.append("[runner]")
        lines += [f"{k} = {toml_value(v)}" for k, v in runner.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- analyses
@dataclass
class ToySettings:
    scale: float = 1.0
    method: str | None = None
    options: dict[str, int] = field(default_factory=dict)  # options of ctx.explain
    sleep: float = 0.0
    fail_on: tuple[str, ...] = ()


class ToyAnalysis:
    name = "toy"
    Settings = ToySettings

    def skip(self, case, model, study, settings):
        return None

    def run(self, ctx) -> UnitResult:
        s = ctx.settings
        if ctx.case.id in s.fail_on:
            raise RuntimeError(f"toy failure on {ctx.case.id}\nsecond line")
        ex = ctx.explain(method=s.method, **s.options)
        if s.sleep:
            time.sleep(s.sleep)
        r = np.asarray(ex.input_relevance, dtype=np.float64)
        summary = pd.DataFrame({"delta": [float(ex.logit_diff)], "scaled": [float(ex.logit_diff) * s.scale],
                                "rel_sum": [float(r.sum())], "n_tokens": [len(r)], "case": ["not-the-case"]})
        tokens = pd.DataFrame({"position": np.arange(len(r)), "token_id": list(ex.input_ids), "relevance": r})
        return UnitResult(tables={"summary": summary, "tokens": tokens},
                          tensors={"relevance": r.astype(np.float32)}, meta={"method": ex.spec.method})

    def report(self, tables, study, settings) -> Section:
        s = tables["summary"]
        return Section(title="Toy analysis", text=f"Δℓ of {len(s)} units.",
                       tables=[Table("Δℓ per case", s[["case", "model", "rule", "delta"]])])


@dataclass
class Toy2Settings:
    skip_models: tuple[str, ...] = ()


class Toy2Analysis:
    name = "toy2"
    Settings = Toy2Settings

    def skip(self, case, model, study, settings):
        if model.name in settings.skip_models:
            return f"toy2 does not run on {model.name}"
        return None

    def run(self, ctx) -> UnitResult:
        ex = ctx.explain()
        r = np.asarray(ex.input_relevance, dtype=np.float64)
        top = int(np.argmax(r))
        return UnitResult(tables={"top": pd.DataFrame({"top_position": [top], "top_relevance": [float(r[top])]})})

    def report(self, tables, study, settings) -> Section:
        return Section(title="Toy 2", text="top positions")


register_analysis(ToyAnalysis)
register_analysis(Toy2Analysis)
