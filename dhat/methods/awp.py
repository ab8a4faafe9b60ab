"""AWP (Wu, Xia, Wang, "Adversarial Weight Perturbation Helps Robust Generalization",
NeurIPS 2020; official code csdongxian/AWP@a7acf5d) as a wrapper around any method.

The paper minimises max_v ρ(w + v) under a layer-wise bound ‖v_l‖ ≤ γ‖w_l‖ (ρ its Eq. 1, the
robust loss; the constraint form is our reading, unverified); the official code takes
one proxy step from v = 0 (utils_awp.py:5-55), implemented here. Per batch, on the base
method's inputs (made once, at w):
  1. proxy ← copy of the model (parameters and buffers), train mode;
  2. one plain SGD step (lr `proxy_lr`) on −L_base(proxy): Δ_l = proxy_l − w_l;
  3. d_l = ‖w_l‖/(‖Δ_l‖ + 1e-20)·Δ_l for every parameter whose name contains "weight" and
     that has more than one dimension (conv and linear weights; Frobenius norms per tensor);
  4. w ← w + γ·d, and the loss returned is L_base at w + γd;
  5. after `optimizer.step()`: w ← w − γ·d (`after_step`).
The proxy loss is minus the base method's own objective (the generic form): it gives
AT-AWP (−CE on x′) and TRADES-AWP (−TRADES) exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as dist

from ..models import unwrap
from ..schema import NONNEG, OptionSpec, option, specs
from .base import Method
from .registry import build_method, method_options, register_method


def awp_direction(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """d = ‖w‖/(‖Δ‖ + 1e-20)·Δ, Frobenius norms over the whole tensor (utils_awp.py:5-18)."""
    return w.norm() / (delta.norm() + 1e-20) * delta


def perturbed(name: str, p: torch.Tensor) -> bool:
    """AWP perturbs conv/linear weights only: 'weight' in the name and more than one dim."""
    return "weight" in name and p.dim() > 1


@register_method("awp")
@dataclass(init=False)
class AWP(Method):
    """AWP around `base` (by default `base_method`, here PGD-AT: AT-AWP).

    Defaults from official AT-AWP (AT_AWP/train_cifar10.py): γ 0.01 (line 162), proxy lr 0.01
    (line 241), warm-up 0 epochs (AWP from the first batch); γ ≤ 0 turns AWP off.
    `warmup`: the number of (0-based) epochs trained with the plain base method first.

    Options are AWP's own plus the base method's: `TradesAWP(gamma=0.01, beta=5)` (or
    `create_method("trades_awp", gamma=0.01, beta=5)`) routes `beta` to the base; or pass a
    built method, `AWP(base=create_method("mart"), gamma=0.005)`. Known differences from the
    official code: the AT-AWP script's clean
    train-mode forward after each step (for logging only) is not made, and its attack runs in
    train mode also on the first batch of each epoch (the official one: eval mode there).
    The restore is exact: w ← w + (w_stepped − (w + γd)), which equals w_stepped − γd and
    gives w back bit for bit when the step changed nothing. Under DDP the proxy's gradients
    are averaged over ranks, so every rank takes the same perturbation (the official
    DataParallel proxy sees the whole batch).
    """

    name = "awp"
    base_method: ClassVar[str] = "pgd_at"
    base: Method | None = None
    gamma: float = option(0.01, "AWP's relative weight-perturbation size γ (0 = off)", range=NONNEG)
    proxy_lr: float = option(0.01, "learning rate of the proxy's one ascent step", range=NONNEG)
    warmup: int = option(
        0, "epochs (0-based) trained with the plain base method first", range=NONNEG
    )

    def __init__(self, base: Method | None = None, **options):
        for key, spec in self.own_specs().items():
            setattr(self, key, options.pop(key, spec.default))
        if base is not None and options:
            raise TypeError(
                f"options {sorted(options)} are for the base method; pass them to it, not to AWP"
            )
        self.base = base if base is not None else build_method(self.base_method, options)
        self._proxy: torch.nn.Module | None = None
        self._saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @property
    def _base(self) -> Method:
        """The wrapped method (`base`, always set by `__init__`)."""
        assert self.base is not None
        return self.base

    @classmethod
    def own_specs(cls) -> dict[str, OptionSpec]:
        return {k: v for k, v in specs(cls).items() if k != "base"}

    @classmethod
    def option_specs(cls) -> dict[str, OptionSpec]:
        return {**method_options(cls.base_method), **cls.own_specs()}

    def options(self):
        return {**self._base.options(), **{k: getattr(self, k) for k in self.own_specs()}}

    # --- the per-step work -------------------------------------------------------------
    def inputs(self, model, batch):
        return self._base.inputs(model, batch)

    def objective(self, model, batch, inputs):
        """The base objective at w + γd. Perturbs the weights; `after_step` restores them."""
        if self.gamma > 0 and self.epoch >= self.warmup:
            self.perturb(model, batch, inputs)
        return self._base.objective(model, batch, inputs)

    def proxy_step(self, net, batch, inputs) -> torch.nn.Module:
        """The proxy after one SGD step on −L_base (no momentum, no weight decay)."""
        if self._proxy is None:
            self._proxy = copy.deepcopy(net)
            self._proxy_opt = torch.optim.SGD(self._proxy.parameters(), lr=self.proxy_lr)
        else:
            self._proxy.load_state_dict(net.state_dict())
        proxy = self._proxy.train()
        loss, _ = self._base.objective(proxy, batch, inputs)
        self._proxy_opt.zero_grad(set_to_none=True)
        (-loss).backward()
        if dist.is_available() and dist.is_initialized():
            for q in proxy.parameters():
                if q.grad is not None:
                    dist.all_reduce(q.grad)
                    q.grad /= dist.get_world_size()
        self._proxy_opt.step()
        return proxy

    def perturb(self, model, batch, inputs) -> None:
        """w_l ← w_l + γ·d_l for the perturbed layers; remembers w_l and w_l + γ·d_l."""
        net = unwrap(model)
        proxy = self.proxy_step(net, batch, inputs)
        self._saved = []
        with torch.no_grad():
            for (name, p), q in zip(net.named_parameters(), proxy.parameters()):
                if perturbed(name, p):
                    w = p.detach().clone()
                    p.add_(self.gamma * awp_direction(w, q - w))
                    self._saved.append((p, w, p.detach().clone()))

    @torch.no_grad()
    def after_step(self, model):
        for p, w, w_perturbed in self._saved:
            p.copy_(w + (p - w_perturbed))
        self._saved = []
        self._base.after_step(model)

    # --- the base method's hooks and state ---------------------------------------------
    def setup(self, info):
        super().setup(info)
        self._base.setup(info)
        self._proxy, self._saved = None, []

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        self._base.start_epoch(epoch)

    def end_epoch(self, model, epoch, stats):
        return self._base.end_epoch(model, epoch, stats)

    def extra_models(self):
        return self._base.extra_models()

    def state_dict(self):
        return self._base.state_dict()

    def load_state_dict(self, state):
        self._base.load_state_dict(state)


@register_method("trades_awp")
@dataclass(init=False)
class TradesAWP(AWP):
    """TRADES-AWP (official trades_AWP/train_trades_cifar.py): γ 0.005 (line 60), AWP from the
    10th epoch (`--awp-warmup 10` with 1-based epochs: 9 plain TRADES epochs, so warmup 9
    here). Proxy lr 0.1, the official initial lr (line 279); it cancels in d except through
    the 1e-20 guard. Its forward order at w + γd is f(x′), f(x), f(x)
    (ours: TRADES's f(x), f(x′), f(x)); this only changes the order of BN statistics updates."""

    name = "trades_awp"
    base_method: ClassVar[str] = "trades"
    gamma: float = option(
        0.005, "AWP's relative weight-perturbation size γ (0 = off)", range=NONNEG
    )
    proxy_lr: float = option(0.1, "learning rate of the proxy's one ascent step", range=NONNEG)
    warmup: int = option(
        9, "epochs (0-based) trained with the plain base method first", range=NONNEG
    )


@register_method("dhat_awp")
@dataclass(init=False)
class DhatAWP(AWP):
    """DHAT-AWP: the full DHAT loss under AWP ("DHAT loss computed under AWP's weight
    perturbation"), official AT-AWP settings γ 0.01, proxy lr 0.01, warm-up 0. No code
    was published: the proxy loss here is −(DHAT loss); the DHAT authors' own AWP code
    (AdverRobust utils_AWP.py) uses −CE(proxy(x̂), y) and starts AWP at epoch 10."""

    name = "dhat_awp"
    base_method: ClassVar[str] = "dhat"
