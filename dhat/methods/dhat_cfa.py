"""DHAT-CFA: DHAT (Zhang et al., ICCV 2025) with CFA's CCM and FAWA (Wei et al., CVPR 2023).

No code was published for it. The spec (dhat.md, Baselines; official-code-notes.md §6)
defines it as DHAT + CCM (class-wise ε_c = (λ1 + R_c)·ε for the PGD example x̂, R_c the
previous epoch's per-class training robust accuracy on x̂) + FAWA. There is no CCR: DHAT has
no TRADES term. (The DHAT authors' own "CFA" baseline is PGD-AT with a CW-margin attack,
most likely a misreading of CFA's "cw_" = class-wise prefix.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .classwise import ClassWise
from .dhat import DHAT
from .registry import register_method


@register_method("dhat_cfa")
@dataclass
class DhatCFA(ClassWise, DHAT):
    """DHAT with class-wise ε for x̂ from epoch `begin` and FAWA; DHAT's defaults (its
    `lambda1`/`lambda2` stay the DHLR/FLOE weights), and CFA's `ccm_lambda` 0.5, `begin` 10,
    `fawa_decay` 0.88, `fawa_threshold` 0.24 (see `classwise.ClassWise`). ε_inv is not
    class-wise."""

    name = "dhat_cfa"

    def combine(self, z_adv, z_inv, z_bg, y, inputs):
        self.record(z_adv, y)
        return super().combine(z_adv, z_inv, z_bg, y, inputs)
