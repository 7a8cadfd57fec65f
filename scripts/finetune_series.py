"""Make a checkpoint series by a short supervised fine-tune, for the cross-checkpoint study.

    python scripts/finetune_series.py --model smollm2-135m-instruct --out out/ckpt/smollm2-math-sft

What it does
------------
1. **Data held out from the cases.** ``--data math500``: the MATH-500 problems (``--data-file``, else
   ``$CONTRASTLENS_DATA/math500_test.jsonl``) with their reference solutions, minus every item that appears
   in a case file of the study (``--exclude-cases``; by ``item_id``). ``--data chat``: a JSON-lines file of
   ``{"messages": [...]}`` rows whose last message is the assistant's (or ``{"prompt", "response"}``
   rows); an ``item_id`` / ``id`` field is matched against the excluded ids too. (IFEval responses that
   pass the checker fit this format; the collect progress files record only *that* an item passed, not
   the response, so they are not read directly.)
2. **Formatting and loss mask.** Each example is the prompt rendered with the model's chat template
   (``add_generation_prompt=True``; the MATH prompt is the benchmark's own, so it matches the cases'
   prompts) followed by the rest of the rendered conversation (the assistant's text and the template's
   closing tokens). The two parts are tokenised separately, as at inference (the prompt alone, then the
   generated tokens), and the loss covers the second part only: the next-token cross-entropy of every
   assistant token, summed over the batch and divided by the batch's number of assistant tokens.
   Examples longer than ``--max-length`` tokens are dropped (not truncated: a truncated solution teaches
   the model to stop before its answer).
3. **Training.** fp32 on CPU, ``torch.set_num_threads(--threads)``, AdamW (no weight decay), a linear
   warm-up over ``--warmup`` steps then a cosine decay to 10 % of ``--lr`` at ``--steps``; gradients
   clipped to norm 1. A step is ``--batch-size`` sequences, each forwarded alone (gradient accumulation,
   no padding). The order of the examples is a seeded permutation per epoch, so step ``s`` always sees
   the same examples; ``--eval-items`` examples (seeded) are held out and their mean assistant-token loss
   is measured at every checkpoint.
4. **Checkpoints.** Steps ``0`` (the base model) and ``--checkpoints`` evenly spaced steps (or
   ``--save-steps``), each a transformers folder ``OUT/step-N`` (``save_pretrained`` of the model and the
   tokenizer) with a sidecar ``checkpoint.json`` (step, losses, lr, seed, data, excluded ids, base model,
   package versions). A folder is written under a temporary name and renamed into place when complete;
   an existing checkpoint is never written again. ``OUT/series.json`` holds the settings that determine
   the weights: a second run into the same folder with different settings is refused.
5. **Resume.** The newest checkpoint also holds ``training_state.pt`` (the optimizer state; with
   ``--keep-optimizer`` every checkpoint keeps its own). A killed run restarts from the newest checkpoint
   that has a training state (step 0 needs none), skips the finished steps and, where it passes a
   checkpoint that already exists, checks that it reproduced the same weights. The run is deterministic
   given ``--seed`` and ``--threads`` (CPU kernels may sum in another order with another thread count).
6. **Output.** A ``[[models]]`` TOML snippet (name, source, series, step) for a study file, printed at the
   end; with ``--probe CASES`` also Δℓ = logit(target) − logit(contrast) at each clean case's failure
   position under every checkpoint (a plain forward on the prompt and the completion before the error),
   printed as a table and written to ``OUT/probe.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from contrastlens.errors import ContrastLensError, InputError

log = logging.getLogger("finetune_series")

DEFAULT_EXCLUDE = ("examples/cases/study/math500-smollm2-135m-instruct.jsonl", "examples/cases/math500.jsonl")
SIDECAR = "checkpoint.json"
STATE = "training_state.pt"
SERIES = "series.json"
DATA_KINDS = ("math500", "chat")
#: settings that change the weights of the series (a rerun into the same folder must agree on them)
WEIGHT_KEYS = ("model", "data", "steps", "batch_size", "lr", "warmup", "min_lr_ratio", "max_length", "seed",
               "eval_items", "save_steps", "clip")


@dataclass
class Settings:
    """One fine-tuning run. ``save_steps`` empty: ``checkpoints`` evenly spaced steps from 0 to ``steps``."""

    model: str = "smollm2-135m-instruct"
    data: str = "math500"
    data_file: str | None = None
    exclude_cases: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    out: str = "out/ckpt/smollm2-math-sft"
    series: str | None = None  # the series' name (default: the out folder's name)
    steps: int = 60
    batch_size: int = 4
    lr: float = 3e-5
    warmup: int = 6
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    max_length: int = 384
    checkpoints: int = 7
    save_steps: list[int] = field(default_factory=list)
    eval_items: int = 8
    seed: int = 0
    threads: int = 1
    keep_optimizer: bool = False
    probe: list[str] = field(default_factory=list)
    write_study: str | None = None  # write a study file of the series (cases: study_cases)
    study_cases: list[str] = field(default_factory=list)  # default: the first exclude_cases file
    progress: bool = True

    def resolved_save_steps(self) -> list[int]:
        if self.steps < 1:
            raise InputError(f"--steps must be at least 1, not {self.steps}")
        if self.save_steps:
            bad = [s for s in self.save_steps if not 0 <= s <= self.steps]
            if bad:
                raise InputError(f"--save-steps {bad} outside 0..{self.steps} (--steps)")
            return sorted({0, *self.save_steps})
        if self.checkpoints < 2:
            raise InputError(f"--checkpoints must be at least 2 (step 0 and the last), not {self.checkpoints}")
        k = self.checkpoints - 1
        return sorted({round(i * self.steps / k) for i in range(k + 1)})


# --------------------------------------------------------------------------------------------- data
@dataclass
class Example:
    item_id: str
    ids: list[int]
    n_prompt: int  # ids[:n_prompt] is the prompt; the loss covers ids[n_prompt:]

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.n_prompt


def excluded_ids(paths: list[str]) -> list[str]:
    """The item ids of every case in the case files (the study's cases, never trained on)."""
    from contrastlens.cases.io import load_cases

    out: set[str] = set()
    for p in paths:
        out.update(c.item_id for c in load_cases(p))
    return sorted(out)


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def conversations(s: Settings) -> tuple[list[tuple[str, list[dict[str, Any]]]], Path]:
    """``(item_id, messages)`` of every usable row of the data (the last message is the assistant's), and
    the data file."""
    if s.data == "math500":
        from contrastlens.benchmarks.registry import get_benchmark

        bench = get_benchmark("math500")
        path = bench.resolve(s.data_file, None)
        items, bad = bench.load(path)
        for iid, why in bad:
            log.warning("skipped MATH-500 row %s: %s", iid, why)
        convs = []
        for it in items:
            sol = it.data.get("solution")
            if not isinstance(sol, str) or not sol.strip():
                log.warning("skipped MATH-500 item %s: no solution", it.id)
                continue
            convs.append((it.id, [*bench.messages(it), {"role": "assistant", "content": sol}]))
        return convs, path
    if s.data == "chat":
        if not s.data_file:
            raise InputError("--data chat needs --data-file (a JSON-lines file of {\"messages\": [...]} rows)")
        path = Path(s.data_file)
        if not path.is_file():
            raise InputError(f"--data-file {path} does not exist")
        convs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise InputError(f"{path}:{n}: not valid JSON") from None
            if "messages" in row:
                msgs = row["messages"]
            elif "prompt" in row and "response" in row:
                msgs = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
            else:
                raise InputError(f"{path}:{n}: a row needs 'messages' or 'prompt' and 'response'")
            if not msgs or not isinstance(msgs, list) or msgs[-1].get("role") != "assistant":
                raise InputError(f"{path}:{n}: the last message must be the assistant's")
            convs.append((str(row.get("item_id", row.get("id", f"line{n}"))), msgs))
        if not convs:
            raise InputError(f"--data-file {path} holds no rows")
        return convs, path
    raise InputError(f"unknown --data {s.data!r}; choose one of: {', '.join(DATA_KINDS)}")


def encode_example(tokenizer: Any, item_id: str, messages: list[dict[str, Any]], max_length: int
                   ) -> Example | None:
    """Token ids of one conversation and where its prompt ends (None: longer than ``max_length``).

    The prompt is ``messages[:-1]`` rendered with ``add_generation_prompt=True``, the target is the rest of
    the rendering of all messages (the assistant's text and the template's closing tokens); each is
    tokenised alone, without added special tokens (the chat template carries its own)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the model's tokenizer has no chat template; fine-tuning formats data as a chat")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise InputError(f"item {item_id}: the chat template does not render the prompt as a prefix of the "
                         "conversation; cannot separate the assistant tokens")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    if not t_ids or len(p_ids) + len(t_ids) > max_length:
        return None
    return Example(item_id, list(p_ids) + list(t_ids), len(p_ids))


def split_examples(examples: list[Example], n_eval: int, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded split: ``n_eval`` examples held out for the eval loss, the rest trained on."""
    if len(examples) <= n_eval:
        raise InputError(f"only {len(examples)} usable examples; fewer than --eval-items {n_eval} + 1")
    perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    ev = [examples[i] for i in perm[:n_eval]]
    tr = [examples[i] for i in sorted(perm[n_eval:])]
    return tr, ev


def batch_for_step(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the examples of optimizer step ``step`` (1-based): consecutive slices of a stream of
    seeded per-epoch permutations, a pure function of its arguments (so a resumed run sees the same data)."""
    start = (step - 1) * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1))
        out.append(int(perm[i]))
    return out


# ----------------------------------------------------------------------------------------- training
def lr_at(step: int, s: Settings) -> float:
    """The learning rate of optimizer step ``step`` (1-based): linear warm-up, then cosine to min_lr_ratio."""
    if s.warmup > 0 and step <= s.warmup:
        return s.lr * step / s.warmup
    span = max(1, s.steps - s.warmup)
    t = min(1.0, (step - s.warmup) / span)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def sequence_loss(model: torch.nn.Module, ex: Example) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy of the assistant tokens of one example, and their number."""
    ids = torch.tensor([ex.ids])
    logits = model(input_ids=ids).logits[0, ex.n_prompt - 1: -1].float()
    target = ids[0, ex.n_prompt:]
    return torch.nn.functional.cross_entropy(logits, target, reduction="sum"), len(target)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, examples: list[Example]) -> float | None:
    if not examples:
        return None
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for ex in examples:
        loss, k = sequence_loss(model, ex)
        tot, n = tot + float(loss), n + k
    model.train(was)
    return tot / n


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: list[Example], lr: float,
               clip: float) -> float:
    """One AdamW step on a batch (each sequence forwarded alone); returns the mean token loss."""
    n_tok = sum(ex.n_target for ex in batch)
    total = 0.0
    for ex in batch:
        loss, _ = sequence_loss(model, ex)
        (loss / n_tok).backward()
        total += float(loss.detach())
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total / n_tok


def make_optimizer(model: torch.nn.Module, s: Settings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)


# -------------------------------------------------------------------------------------- checkpoints
def step_dir(out: Path, step: int) -> Path:
    return out / f"step-{step}"


def finished_steps(out: Path) -> dict[int, Path]:
    """Checkpoints in ``out`` (folders ``step-N`` holding a sidecar: written whole, then renamed)."""
    done = {}
    if out.is_dir():
        for p in out.iterdir():
            if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit() and (p / SIDECAR).exists():
                done[int(p.name[5:])] = p
    return done


def _versions() -> dict[str, str]:
    import transformers

    import contrastlens

    return {"contrastlens": contrastlens.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0]}


def save_checkpoint(out: Path, step: int, model: torch.nn.Module, tokenizer: Any, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None) -> Path:
    """Write ``out/step-N`` atomically (a temporary folder, renamed when complete). An existing checkpoint
    is never overwritten: that is an :class:`InputError`."""
    final = step_dir(out, step)
    if final.exists():
        raise InputError(f"checkpoint {final} exists; refusing to overwrite a finished checkpoint")
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{final.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if optimizer is not None:
            torch.save({"step": step, "optimizer": optimizer.state_dict()}, tmp / STATE)
        (tmp / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _weights_equal(model: torch.nn.Module, folder: Path) -> float:
    """Max |difference| between the model's weights and those saved in ``folder``."""
    from safetensors.torch import load_file

    saved: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        saved.update(load_file(str(f)))
    worst = 0.0
    for name, t in model.state_dict().items():
        if name in saved:
            worst = max(worst, float((t.float() - saved[name].float()).abs().max()))
    return worst


def _series_config(s: Settings, save_steps: list[int], data_path: Path, excluded: list[str]) -> dict[str, Any]:
    cfg = {k: getattr(s, k) for k in WEIGHT_KEYS}
    cfg["save_steps"] = save_steps
    cfg["data_file_sha256"] = _file_sha(data_path)
    cfg["excluded_ids"] = excluded
    return cfg


def _check_series(out: Path, cfg: dict[str, Any], has_ckpts: bool) -> None:
    """Refuse to add to a series made with other settings; record the settings of a new one."""
    f = out / SERIES
    if f.exists():
        old = json.loads(f.read_text())
        diff = [k for k in sorted(set(old) | set(cfg)) if old.get(k) != cfg.get(k)]
        if diff:
            k = diff[0]
            raise InputError(f"{out} holds a series made with other settings ({k}: {old.get(k)!r} there, "
                             f"{cfg.get(k)!r} now); refusing to overwrite it; choose another --out")
        return
    if has_ckpts:
        raise InputError(f"{out} holds checkpoints but no {SERIES}; refusing to overwrite them; choose another --out")
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, f)


# ------------------------------------------------------------------------------------------- probe
@torch.no_grad()
def probe_deltas(folders: dict[int, Path], case_files: list[str]) -> list[dict[str, Any]]:
    """Δℓ = logit(target) − logit(contrast) at the failure position of every clean case, per checkpoint."""
    from contrastlens.cases.io import load_cases
    from contrastlens.models.loading import load_model

    cases = [c for p in case_files for c in load_cases(p, clean_only=True)]
    rows = []
    for step, folder in sorted(folders.items()):
        m = load_model(folder).model
        for c in cases:
            ids, t, k = c.explained_inputs()
            z = m(input_ids=torch.tensor([ids])).logits[0, -1].float()
            rows.append({"step": step, "case": c.id, "delta": float(z[t] - z[k]), "collected": c.delta_logit,
                         "target": c.target_str, "contrast": c.contrast_str})
        del m
    return rows


def probe_table(rows: list[dict[str, Any]]) -> str:
    steps = sorted({r["step"] for r in rows})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    d = {(r["step"], r["case"]): r["delta"] for r in rows}
    coll = {r["case"]: r["collected"] for r in rows}
    lines = ["| case | collected | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for c in cases:
        lines.append(f"| {c} | {coll[c]:.2f} | " + " | ".join(f"{d[(s, c)]:.2f}" for s in steps) + " |")
    means = [sum(d[(s, c)] for c in cases) / len(cases) for s in steps]
    lines.append("| **mean** | | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    lines.append("| Δℓ < 0 (fixed) | | " + " | ".join(str(sum(d[(s, c)] < 0 for c in cases)) for s in steps) + " |")
    return "\n".join(lines)


def _source(folder: Path, relative_to: Path | None) -> str:
    """A checkpoint's ``source`` in a study file: absolute, or relative to the study file's folder (with a
    leading ``./`` or ``../``, which the study file reads as a path)."""
    if relative_to is None:
        return folder.resolve().as_posix()
    rel = Path(os.path.relpath(folder.resolve(), relative_to.resolve())).as_posix()
    return rel if rel.startswith("../") else f"./{rel}"


def toml_snippet(series: str, folders: dict[int, Path], relative_to: Path | None = None) -> str:
    """``[[models]]`` entries (name, source, series, step) of the checkpoints, for a study file."""
    parts = []
    for step, folder in sorted(folders.items()):
        parts.append(f'[[models]]\nname = "{series}-step-{step}"\nsource = "{_source(folder, relative_to)}"\n'
                     f'series = "{series}"\nstep = {step}\n')
    return "\n".join(parts)


def study_toml(series: str, folders: dict[int, Path], case_files: list[str], study_file: Path) -> str:
    """A complete study file: the series, its cases (clean only) and the cross-checkpoint analysis."""
    here = study_file.parent
    head = f'[study]\nname = "{series}-trajectory"\n\n'
    cases = "".join(f'[[cases]]\npath = "{_source(Path(c), here)}"\nclean_only = true\n\n' for c in case_files)
    tail = f'[analyses.cross_checkpoint]\nseries = "{series}"\n'
    return head + toml_snippet(series, folders, here) + "\n" + cases + tail


# -------------------------------------------------------------------------------------------- main
@dataclass
class RunResult:
    out: Path
    series: str
    checkpoints: dict[int, Path]
    trained_steps: list[int]  # the optimizer steps this run computed (resume: fewer)
    seconds: float
    losses: dict[int, float] = field(default_factory=dict)  # train loss of each computed step
    probe: list[dict[str, Any]] = field(default_factory=list)


def run(s: Settings) -> RunResult:
    """Make (or complete) the series described by ``s``; see the module docstring."""
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from contrastlens.models.loading import load_model

    hf_logging.disable_progress_bar()  # transformers' per-shard bars; the run has its own
    t0 = time.time()
    torch.set_num_threads(max(1, s.threads))
    save_steps = s.resolved_save_steps()
    last = save_steps[-1]
    out = Path(s.out)
    series = s.series or out.name
    out.mkdir(parents=True, exist_ok=True)
    for p in out.glob(".step-*.tmp-*"):  # left by a killed run: never a finished checkpoint
        shutil.rmtree(p, ignore_errors=True)
    done = finished_steps(out)

    excluded = excluded_ids(s.exclude_cases)
    convs, data_path = conversations(s)
    n_rows = len(convs)
    ex_set = set(excluded)
    convs = [(i, m) for i, m in convs if i not in ex_set]
    log.info("data: %d rows, %d excluded (in the case files), %d left", n_rows, n_rows - len(convs), len(convs))
    _check_series(out, _series_config(s, save_steps, data_path, excluded), bool(done))
    if all(st in done for st in save_steps):
        log.info("every checkpoint of %s is there; nothing to do", out)
        return RunResult(out, series, {st: done[st] for st in save_steps}, [], time.time() - t0)

    start = max([st for st, f in done.items() if st == 0 or (f / STATE).exists()], default=None)
    base = load_model(done[start] if start is not None else s.model)
    tok, model = base.tokenizer, base.model
    examples = [e for i, m in convs if (e := encode_example(tok, i, m, s.max_length)) is not None]
    log.info("%d examples within %d tokens (%d longer dropped)", len(examples), s.max_length,
             len(convs) - len(examples))
    train, ev = split_examples(examples, s.eval_items, s.seed)
    meta_base = {
        "series": series, "seed": s.seed, "base_model": s.model,
        "base_fingerprint": base.fingerprint if start is None else
        json.loads((done[start] / SIDECAR).read_text()).get("base_fingerprint"),
        "data": {"kind": s.data, "file": str(data_path), "sha256": _file_sha(data_path), "rows": n_rows,
                 "train": len(train), "eval": len(ev), "eval_ids": [e.item_id for e in ev]},
        "excluded_ids": excluded, "exclude_cases": list(s.exclude_cases), "settings": asdict(s),
        "versions": _versions(),
    }

    torch.manual_seed(s.seed)
    model.train()
    opt = make_optimizer(model, s)
    if start is not None and start > 0:
        state = torch.load(done[start] / STATE, weights_only=False)
        opt.load_state_dict(state["optimizer"])
    begin = start or 0
    if start is None:
        meta = {**meta_base, "step": 0, "lr": 0.0, "train_loss": None, "eval_loss": eval_loss(model, ev),
                "seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time(), 1)}
        done[0] = save_checkpoint(out, 0, model, tok, meta, None)

    losses: dict[int, float] = {}
    since: list[float] = []
    bar = tqdm(total=last, initial=begin, desc=f"fine-tune {series}", unit="step", disable=not s.progress)
    prev_with_state = done.get(begin) if begin > 0 else None
    for step in range(begin + 1, last + 1):
        batch = [train[i] for i in batch_for_step(step, len(train), s.batch_size, s.seed)]
        lr = lr_at(step, s)
        loss = train_step(model, opt, batch, lr, s.clip)
        losses[step] = loss
        since.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}")
        if step not in save_steps:
            continue
        if step in done:  # a replay through an existing checkpoint: never rewritten, only compared
            diff = _weights_equal(model, done[step])
            if diff > 0:
                log.warning("replayed step %d differs from the saved %s by max |dw| = %.3g (another --threads?)",
                            step, done[step], diff)
            since = []
            continue
        meta = {**meta_base, "step": step, "lr": lr, "train_loss": sum(since) / len(since),
                "last_loss": loss, "eval_loss": eval_loss(model, ev), "seconds": round(time.time() - t0, 1),
                "cpu_seconds": round(time.process_time(), 1)}
        since = []
        done[step] = save_checkpoint(out, step, model, tok, meta, opt)
        bar.write(f"step {step}: train loss {meta['train_loss']:.4f}, eval loss {meta['eval_loss']:.4f} -> {done[step]}")
        if prev_with_state is not None and not s.keep_optimizer:
            (prev_with_state / STATE).unlink(missing_ok=True)
        prev_with_state = done[step]
    bar.close()
    return RunResult(out, series, {st: done[st] for st in save_steps}, sorted(losses), time.time() - t0, losses)


def parse_args(argv: list[str] | None = None) -> Settings:
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=d.model, help="catalog alias, random:<arch>, .gguf, folder or hub id")
    ap.add_argument("--data", default=d.data, choices=DATA_KINDS)
    ap.add_argument("--data-file", default=None, help="the data file (math500: default $CONTRASTLENS_DATA/math500_test.jsonl)")
    ap.add_argument("--exclude-cases", nargs="*", default=list(DEFAULT_EXCLUDE), metavar="FILE",
                    help="case files whose item ids are never trained on")
    ap.add_argument("--out", default=d.out)
    ap.add_argument("--series", default=None, help="the series name (default: the --out folder's name)")
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup", type=int, default=d.warmup)
    ap.add_argument("--max-length", type=int, default=d.max_length)
    ap.add_argument("--checkpoints", type=int, default=d.checkpoints, help="evenly spaced checkpoints, step 0 included")
    ap.add_argument("--save-steps", type=lambda v: [int(x) for x in v.split(",") if x.strip()], default=[],
                    help="explicit checkpoint steps, e.g. 0,10,20 (step 0 is always saved)")
    ap.add_argument("--eval-items", type=int, default=d.eval_items)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--keep-optimizer", action="store_true", help="keep every checkpoint's optimizer state")
    ap.add_argument("--probe", nargs="*", default=[], metavar="CASES",
                    help="case files: print Δℓ of their clean cases under every checkpoint")
    ap.add_argument("--write-study", default=None, metavar="FILE",
                    help="write a study file (the series, its cases, [analyses.cross_checkpoint]) to FILE")
    ap.add_argument("--study-cases", nargs="*", default=[], metavar="CASES",
                    help="the case files of --write-study (default: the first --exclude-cases file)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    return Settings(model=a.model, data=a.data, data_file=a.data_file, exclude_cases=list(a.exclude_cases),
                    out=a.out, series=a.series, steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup,
                    max_length=a.max_length, checkpoints=a.checkpoints, save_steps=a.save_steps,
                    eval_items=a.eval_items, seed=a.seed, threads=a.threads, keep_optimizer=a.keep_optimizer,
                    probe=list(a.probe), write_study=a.write_study, study_cases=list(a.study_cases),
                    progress=not a.no_progress)


def main(argv: list[str] | None = None) -> RunResult:
    s = parse_args(argv)
    res = run(s)
    for st, f in sorted(res.checkpoints.items()):
        m = json.loads((f / SIDECAR).read_text())
        tl = "-" if m.get("train_loss") is None else f"{m['train_loss']:.4f}"
        ev = "-" if m.get("eval_loss") is None else f"{m['eval_loss']:.4f}"
        print(f"step {st:>4}  train loss {tl:>7}  eval loss {ev:>7}  {f}")
    print(f"# {len(res.trained_steps)} steps trained in {res.seconds:.0f} s; checkpoints in {res.out}\n")
    if s.write_study:
        f = Path(s.write_study)
        text = study_toml(res.series, res.checkpoints, s.study_cases or s.exclude_cases[:1], f)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        print(f"# study file {f}:\n{text}")
    else:
        print(toml_snippet(res.series, res.checkpoints))
    if s.probe:
        res.probe = probe_deltas(res.checkpoints, s.probe)
        (res.out / "probe.json").write_text(json.dumps(res.probe, indent=1) + "\n")
        print(probe_table(res.probe))
    return res


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except ContrastLensError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
