"""The result card: one JSON per evaluated model, validated on write and on read.

A card says what was measured and how: dataset, threat model, ε, image counts per attack,
each attack's exact settings, accuracies, robust gap, sanity checks, model, method, config
hash, library versions, hardware and date (in the spirit of RobustBench's model cards).
`validate_card` refuses a card that carries a number its own records do not account for —
e.g. an AutoAttack accuracy without its image count, its settings or its sanity checks — so
such a card can be neither written nor read.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, NoReturn

from ..attacks.registry import find_attack
from ..errors import UserError
from ..io import write_json, write_obstacle

SCHEMA = "dhat-result-v1"


class CardError(UserError):
    """A result card that contradicts itself."""


def _close(a: float, b: float, tol: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=0, abs_tol=tol)


def validate_card(card: dict[str, Any], where: str = "result card") -> dict[str, Any]:
    """Raise CardError (one line) unless every number in `card` is accounted for."""

    def bad(msg: str) -> NoReturn:
        raise CardError(f"{where}: {msg}")

    if card.get("schema") != SCHEMA:
        bad(f"not a '{SCHEMA}' result card")
    acc = card.get("accuracy")
    if not isinstance(acc, dict) or not acc:
        bad("no accuracies")
    settings = card.get("attack_settings", {})
    requested = card.get("eval_config", {}).get("attacks", [])
    for name, value in acc.items():
        if not 0 <= value <= 1:
            bad(f"accuracy '{name}' = {value} is not a fraction")
        if name not in settings:
            bad(f"accuracy '{name}' has no attack_settings entry")
        if name not in requested:
            bad(f"accuracy '{name}' was not requested by its eval_config.attacks {requested}")
    if not isinstance(card.get("n_test"), int) or card["n_test"] <= 0:
        bad("n_test must be a positive image count")
    for name in acc:
        if find_attack(name) is None:
            bad(f"accuracy '{name}' names no registered attack")
    counts = card.get("n_images")
    if counts is not None:  # cards before the attack registry have none
        for name in acc:
            n = counts.get(name)
            if not isinstance(n, int) or not 0 < n <= card["n_test"]:
                bad(f"accuracy '{name}' has no image count in n_images (1..n_test)")
            if find_attack(name).images == "test" and n != card["n_test"]:  # type: ignore[union-attr]  # checked above
                bad(f"n_images['{name}'] = {n} differs from n_test")
        w = card.get("worst_case")
        if w is not None and (
            list(w.get("attacks", [])) != list(acc)
            or w.get("n") != min(counts[k] for k in acc)
            or not 0 <= w.get("accuracy", -1) <= 1
        ):
            bad("worst_case is not over every attack on the images all of them saw")
    sanity = {c["check"]: c for c in card.get("sanity", [])}
    if "aa" in acc:
        aa = card.get("autoattack")
        if not isinstance(card.get("n_aa"), int) or card["n_aa"] <= 0:
            bad("an AutoAttack accuracy needs its image count n_aa")
        if counts is not None and counts.get("aa") != card["n_aa"]:
            bad("n_images['aa'] differs from n_aa")
        if not aa or aa.get("n") != card["n_aa"] or not _close(aa["robust_accuracy"], acc["aa"]):
            bad("accuracy 'aa' does not match its autoattack record (n, robust_accuracy)")
        if sanity and any(
            sanity.get(c, {}).get("status") in (None, "skipped") for c in ("aa_vs_pgd", "aa_flags")
        ):
            bad("AutoAttack ran but its sanity checks aa_vs_pgd / aa_flags did not see it")
    elif card.get("n_aa") is not None or "autoattack" in card:
        bad("an autoattack record without an 'aa' accuracy")
    amp = card.get("amp", "off")  # cards before --amp have none: fp32
    if amp not in ("off", "bf16") or amp != card.get("eval_config", {}).get("amp", "off"):
        bad(f"amp '{amp}' is not 'off' or 'bf16', or differs from its eval_config.amp")
    if amp != "off" and sanity and sanity.get("amp_vs_fp32", {}).get("status") in (None, "skipped"):
        bad(f"evaluated in {amp} but the sanity check amp_vs_fp32 did not compare it with fp32")
    failed = [c for c, r in sanity.items() if r.get("status") == "warn"]
    if sorted(card.get("sanity_failed", [])) != sorted(failed):
        bad("sanity_failed does not list the failed checks")
    if bool(card.get("unreliable")) != bool(failed):
        bad("'unreliable' must be true exactly when a sanity check failed")
    g = card.get("robust_gap")
    if g is not None:
        if not _close(g["gap"], g["train"] - g["test"], 1e-6) or g.get("n_train", 0) <= 0:
            bad("robust_gap is not train − test over a positive n_train")
        if "pgd10" in acc and not _close(g["test"], acc["pgd10"], 1e-6):
            bad("robust_gap.test differs from the card's pgd10 accuracy")
    return card


def read_card(path: str | Path) -> dict[str, Any]:
    """A validated result card from JSON (a one-line UserError otherwise)."""
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable JSON result ({type(e).__name__})") from None
    if not isinstance(card, dict) or not isinstance(card.get("accuracy"), dict):
        raise UserError(f"{path} is not a result card of `dhat eval` (no 'accuracy')")
    validate_card(card, str(path))
    card.setdefault("path", str(path))
    return card


def fallback_path(path: Path) -> Path:
    """Where a card goes when its folder cannot be written: a new file in the working
    directory, else in the temporary folder (`<folder name>_<card name>`, numbered if taken:
    an earlier fallback card is never overwritten). The file is created empty here."""
    folders = []
    try:
        folders.append(Path.cwd())
    except OSError:  # the working directory was removed
        pass
    folders.append(Path(tempfile.gettempdir()))
    stem = f"{path.parent.name or 'run'}_{path.stem}"
    for folder in folders:
        for i in range(1, 1000):
            cand = folder / (f"{stem}{path.suffix}" if i == 1 else f"{stem}_{i}{path.suffix}")
            try:
                os.close(os.open(cand, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                return cand
            except FileExistsError:
                continue
            except OSError:
                break
    raise UserError(
        f"cannot write the result card anywhere (tried {path}, the working "
        "directory and the temporary folder); pass --out PATH somewhere writable"
    )


def save_card(card: dict[str, Any], path: str | Path) -> Path:
    """Validate and write `card` atomically; if `path` cannot be written, write it to a
    new fallback file (`fallback_path`), warn naming it, and return where it went. A
    one-line UserError if it can be written nowhere."""
    validate_card(card)
    path = Path(path)
    body = {k: v for k, v in card.items() if k != "path"}
    try:
        write_json(path, body)
        return path
    except OSError as e:
        error = e
    alt = fallback_path(path)
    try:
        write_json(alt, body)
    except OSError as e:
        alt.unlink(missing_ok=True)
        raise UserError(
            f"cannot write the result card to {path} ({type(error).__name__}) nor "
            f"to {alt} ({type(e).__name__}); pass --out PATH somewhere "
            "writable"
        ) from None
    warnings.warn(
        f"could not write {path} ({type(error).__name__}); the result card is at {alt}",
        stacklevel=2,
    )
    return alt


def check_writable(path: str | Path) -> None:
    """A one-line UserError now, before any attack, if the card could not be written there."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; name a .json file")
    probe_dir, problem = write_obstacle(path)
    if problem == "file":
        raise UserError(f"cannot write {path}: {probe_dir} is a file, not a folder")
    if problem == "unwritable":
        raise UserError(
            f"cannot write the result card to {path} ({probe_dir} is not writable); "
            "pass --out PATH somewhere writable"
        )


def card_label(card: dict[str, Any]) -> str:
    return f"{card.get('method') or card.get('model')}"


def format_card(card: dict[str, Any]) -> str:
    """A small text table of one result, AutoAttack's cascade, background measures and any
    failed sanity check."""
    counts = card.get("n_images", {})
    rows = [
        (
            k if counts.get(k, card["n_test"]) == card["n_test"] else f"{k} ({counts[k]} imgs)",
            f"{100 * v:.2f}",
        )
        for k, v in card["accuracy"].items()
    ]
    if "worst_case" in card:
        w = card["worst_case"]
        rows.append((f"worst case, per image ({w['n']} imgs)", f"{100 * w['accuracy']:.2f}"))
    if "autoattack" in card:
        for attack, v in card["autoattack"]["robust_accuracy_after"].items():
            rows.append((f"  aa: after {attack}", f"{100 * v:.2f}"))
    if "robust_gap" in card:
        g = card["robust_gap"]
        rows.append(
            (
                f"robust gap (pgd10, {g['n_train']} train imgs)",
                f"{100 * g['gap']:.2f} ({100 * g['train']:.2f} - {100 * g['test']:.2f})",
            )
        )
    b = card.get("background")
    if b:
        for split, by_attack in b["accuracy"].items():
            rows.append(
                (
                    f"{split} (clean / pgd10)",
                    " / ".join(f"{100 * by_attack[a]['value']:.2f}" for a in by_attack),
                )
            )
        for a, v in b.get("bg_gap", {}).items():
            lo, hi = v["ci"]
            rows.append(
                (
                    f"BG-gap {a} (same - rand)",
                    f"{100 * v['value']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]",
                )
            )
        for split, kinds in b.get("attention", {}).items():
            for kind, m in kinds.items():
                if "object_share" in m:  # cards written before the object share lack it
                    rows.append(
                        (
                            f"object share (null), {split}, {kind}",
                            f"{m['object_share']['value']:.3f} "
                            f"({m['object_share_null']['value']:.3f})",
                        )
                    )
                if "scene_bg_share" in m:
                    rows.append(
                        (
                            f"scene-class map on bg (null), {split}, {kind}",
                            f"{m['scene_bg_share']['value']:.3f} "
                            f"({m['scene_bg_share_null']['value']:.3f})",
                        )
                    )
                null = (
                    f" (null {m['fg_iou_null']['value']:.3f} / {m['bg_iou_null']['value']:.3f})"
                    if "fg_iou_null" in m
                    else ""
                )
                rows.append(
                    (
                        f"IoU fg / bg, {split}, {kind}",
                        f"{m['fg_iou']['value']:.3f} / {m['bg_iou']['value']:.3f}{null}",
                    )
                )
    w = max(len(k) for k, _ in rows)
    aa = f", AA on {card['n_aa']}" if card.get("n_aa") else ""
    head = (
        f"{card['model']} / {card['method']} on {card['dataset']} ({card['n_test']} test images"
        f"{aa}, eps {card['eps_255']}/255"
        + (f", {card['amp']} autocast" if card.get("amp", "off") != "off" else "")
        + ")"
    )
    lines = [head] + [f"  {k:<{w}}  {v}" for k, v in rows]
    if "curves" in card:
        c = card["curves"]
        lines.append(
            "  curves: eps/255 "
            + " ".join(f"{e:g}" for e in c["eps"]["eps_255"])
            + " | PGD-20 "
            + " ".join(f"{100 * v:.1f}" for v in c["eps"]["pgd20"])
        )
    bad = [c for c in card.get("sanity", []) if c["status"] == "warn"]
    if card.get("sanity"):
        if bad:
            lines.append(
                f"  !! {len(bad)} SANITY CHECK(S) FAILED: this evaluation may "
                "over-report robustness"
            )
            lines += [f"  !! {c['check']}: {c['message']}  [{c['doc']}]" for c in bad]
        else:
            ran = sum(c["status"] == "ok" for c in card["sanity"])
            lines.append(f"  sanity: {ran} checks passed")
    return "\n".join(lines)
