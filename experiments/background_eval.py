"""The background study's evaluation phase: one result card (with its per-image records) per
run, through `dhat.eval.evaluate_checkpoint`.

Main card: the checkpoint at the end of training (`last.pt`: the robust gap is the paper's
end-of-training gap, and robust overfitting lives there) — clean and PGD-10 on the test
split and every background split, the BG-gap, the attention measures with their nulls
(natural images; with --inverse also inverse images at ε_inv 4/255 for every run, so that
runs compare), and the robust gap on training images. With --selected, a selection card:
the validation-selected `best.pt`, clean, PGD-10 and the robust gap only. A finished card is
reused.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from background_study import eval_config, run_dir

from dhat.eval import evaluate_checkpoint


def _log(rdir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (rdir / "log.jsonl").read_text().splitlines()]


def evaluate_run(args, name: str, seed: int, quiet: bool = False) -> dict | None:
    rdir = run_dir(args, name, seed)
    last = rdir / "last.pt"
    if not last.is_file() or len(_log(rdir)) < args.epochs:
        if not quiet:
            print(f"{name} s{seed}: not trained yet, skipped", flush=True)
        return None
    cards = args.out / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    main_path = cards / f"{name}_s{seed}.json"
    best_path = cards / "selected" / f"{name}_s{seed}.json"
    best_path.parent.mkdir(exist_ok=True)
    t0 = time.time()
    log = _log(rdir)
    extra = dict(
        variant=name,
        seed=seed,
        train_seconds=round(sum(e["seconds"] for e in log), 1),
        log=log,
    )
    if not main_path.is_file():
        ec = replace(
            eval_config(
                args, rdir, main_path, Path(str(main_path)[: -len(".json")] + ".records.npz")
            ),
            checkpoint=str(last),
            inverse_eps=[4 / 255] if args.inverse else [],
        )
        card = evaluate_checkpoint(ec, progress=args.progress)
        card.update(extra)
        card.pop("path", None)
        main_path.write_text(json.dumps(card, indent=2))
    if args.selected and not best_path.is_file():
        ec = replace(
            eval_config(
                args, rdir, best_path, Path(str(best_path)[: -len(".json")] + ".records.npz")
            ),
            background=False,
            sanity=False,
        )
        card = evaluate_checkpoint(ec, progress=args.progress)
        card.update(extra)
        card.pop("log")
        card.pop("path", None)
        best_path.write_text(json.dumps(card, indent=2))
    card = json.loads(main_path.read_text())
    b = card["background"]
    att = b["attention"]["mixed_rand"]["natural"]
    print(
        f"[{time.strftime('%H:%M:%S')}] {name} s{seed} ({time.time() - t0:.0f} s): clean "
        f"{card['accuracy']['clean']:.3f} pgd10 {card['accuracy']['pgd10']:.3f} gap "
        f"{card['robust_gap']['gap']:.3f} BG-gap {b['bg_gap']['clean']['value']:.3f} share "
        f"{att['object_share']['value']:.3f} (null {att['object_share_null']['value']:.3f})",
        flush=True,
    )
    return card


def evaluate_all(args, jobs: list[tuple[str, int]], watch: bool = False) -> None:
    """Evaluate every trained run; with `watch`, keep waiting for the others to finish."""
    todo = list(jobs)
    while todo:
        todo = [(n, s) for n, s in todo if evaluate_run(args, n, s, quiet=watch) is None]
        if not watch or not todo:
            return
        time.sleep(60)
