"""Predicted latency for a latency target: a per-layer lookup table, as NetAdapt builds one.

Every conv layer (timed together with the BatchNorm and ReLU that follow it in a CNN) and every linear
layer is timed on its own, at its input's spatial size and the run's batch size, over a grid of
(input, output) widths; between grid points the time is interpolated bilinearly. The work between them
that grows with the width too, residual adds and pooling, is timed the same way over its channel count
(found by tracing the forward pass's functions, so a functional ``out + identity`` counts). A model's
prediction is the sum over all of these, mapped to whole-model milliseconds by a line fitted to real
measurements of the dense model, of copies narrowed uniformly and of a few cut non-uniformly at random
(that line absorbs what is left: the framework's per-layer overhead). Kernels compute channels in vector
blocks, so a width just past a multiple of 8 may cost what the next multiple costs, or not: it depends on the
kernel, the widths and the batch (VGG-16's wide layers at batch 64 here: yes; ResNet-56's 16-wide ones: no).
Each layer shape's grid is therefore probed once per axis just past an aligned width, and the lookup moves a
width that share of the way up to the next aligned width before interpolating (``_step_shares``).

Tables are cached under ``<results_dir>/latency_tables/``, one JSON file per device, torch threads,
batch size and torch version; a layer shape is timed once and reused by every model that has it. The
prediction only has to rank candidate widths and find where a target is crossed: every run that
prunes to a latency target reports the real, measured reduction beside it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import random
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from harness.core.convs import is_depthwise
from harness.core.gate import measuring
from harness.core.locks import file_lock
from harness.core.surgery import ChannelPruner
from harness.latency.measure import device_name, interleaved_latency, passes_for, timed

# Grid widths per axis: every multiple of 8 up to 128 channels (CPU and GPU kernels are fastest at
# aligned widths, so the table must see them), coarser above (at most 16 points), plus every width the
# dense model has; with prune.round_to the multiples of round_to instead.
ALIGN, MAX_POINTS = 8, 16
FRACTIONS = (1.0, 0.8, 0.6, 0.45, 0.3)  # uniform widths the calibration line is fitted on
RANDOM_CUTS = 3  # and this many non-uniform cuts
TIMINGS = 5  # median of this many timings per grid point
CALIBRATION_ROUNDS = 9
# How a width between grid points is looked up: interpolated linearly, or first moved up towards the next
# aligned width by the share its layer shape's probe measured (``_step_shares``; what the table predicts with).
LOOKUPS = ("linear", "stepped")
PROBE_ROUNDS = 7


@dataclass(frozen=True)
class LayerShape:
    """What one layer's time depends on, besides its widths."""

    op: str  # conv | depthwise | linear
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1  # a grouped (not depthwise) conv keeps its group count when pruned
    size: tuple[int, ...] = ()  # input spatial size (conv) or leading token count (linear)
    bias: bool = False
    multiplier: int = 1  # depthwise: output channels per input channel
    params: str = ""  # a pooling op's arguments besides its input (JSON)

    def key(self) -> str:
        fields = asdict(self)
        if not fields["params"]:  # keys of the layers cached before pooling ops were timed stay the same
            del fields["params"]
        return json.dumps(fields, sort_keys=True)


MODULE_OPS = ("conv", "depthwise", "linear")
_ADDS = {"add", "add_", "__add__", "__iadd__", "__radd__"}
_POOLS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"}
_ONE_AXIS = {"depthwise", "add", *_POOLS}  # timed over the input width only


class _WidthOps(TorchFunctionMode):
    """Records the residual adds and pooling ops of a forward pass: (shape, channels, 0)."""

    def __init__(self, found: list):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            size = tuple(x.shape[-2:])
            if name in _ADDS and len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].shape == x.shape:
                self.found.append((f"add#{len(self.found)}", (LayerShape("add", size=size), x.shape[1], 0)))
            elif name in _POOLS:
                params = json.dumps([list(args[1:]), kwargs], sort_keys=True, default=list)
                shape = LayerShape(name, size=size, params=params)
                self.found.append((f"{name}#{len(self.found)}", (shape, x.shape[1], 0)))
        return func(*args, **kwargs)


def layers_of(model: nn.Module, example: torch.Tensor) -> list[tuple[LayerShape, int, int]]:
    """(shape, input width, output width) of every conv and linear layer a forward pass of ``example``
    (batch 1) goes through, found with forward hooks so that any structure is measured as it runs, and
    of every residual add and pooling op (output width 0)."""
    return [layer for _, layer in _traced_layers(model, example)]


def named_layers_of(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[LayerShape, int, int]]:
    """The conv and linear layers of ``layers_of`` keyed by module name (a module run twice appears once)."""
    return {name: layer for name, layer in _traced_layers(model, example) if layer[0].op in MODULE_OPS}


def _traced_layers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple[LayerShape, int, int]]]:
    found, ops, hooks = [], [], []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, inputs, _output):
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            depthwise = is_depthwise(module)
            shape = LayerShape(
                "depthwise" if depthwise else "conv",
                tuple(module.kernel_size),
                tuple(module.stride),
                tuple(module.padding) if not isinstance(module.padding, str) else (module.padding,),
                tuple(module.dilation),
                1 if depthwise else module.groups,
                tuple(x.shape[-2:]),
                module.bias is not None,
                module.out_channels // module.in_channels if depthwise else 1,
            )
            found.append((names[module], (shape, module.in_channels, module.out_channels)))
        else:
            tokens = math.prod(x.shape[1:-1]) if x.dim() > 2 else 1
            shape = LayerShape("linear", size=(tokens,), bias=module.bias is not None)
            found.append((names[module], (shape, module.in_features, module.out_features)))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode(), _WidthOps(ops):
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found + ops


def _axis(widths: list[int], step: int, align: int = ALIGN) -> list[int]:
    """Grid widths for one axis: multiples of ``align`` (at most MAX_POINTS of them, up to the largest
    width), every width given, the smallest (``step``, a grouped conv's group count); all multiples of ``step``."""
    top = max(widths)
    spacing = align * max(1, math.ceil(top / (align * MAX_POINTS)))
    spacing = math.lcm(spacing, step)
    points = {p for p in range(spacing, top + 1, spacing)}
    points |= {max(step, w // step * step) for w in widths} | {step}
    return sorted(points)


class _Add(nn.Module):
    """x + another tensor of x's shape (a residual add), the other made at the first call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "other", None) is None or self.other.shape != x.shape:
            self.other = torch.randn_like(x)
        return x + self.other


class _Pool(nn.Module):
    def __init__(self, name: str, params: str):
        super().__init__()
        self.fn, (self.args, self.kwargs) = getattr(F, name), json.loads(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args, **self.kwargs)


def _layer(shape: LayerShape, cin: int, cout: int) -> nn.Module:
    if shape.op == "add":
        return _Add()
    if shape.op in _POOLS:
        return _Pool(shape.op, shape.params)
    if shape.op == "linear":
        return nn.Linear(cin, cout, bias=shape.bias)
    groups = cin if shape.op == "depthwise" else shape.groups
    cout = cin * shape.multiplier if shape.op == "depthwise" else cout
    padding = shape.padding[0] if shape.padding and isinstance(shape.padding[0], str) else shape.padding
    conv = nn.Conv2d(cin, cout, shape.kernel, shape.stride, padding, shape.dilation, groups=groups, bias=shape.bias)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


def _input(shape: LayerShape, cin: int, batch: int, device: torch.device) -> torch.Tensor:
    if shape.op == "linear":
        dims = (batch, shape.size[0], cin) if shape.size[0] > 1 else (batch, cin)
    else:
        dims = (batch, cin, *shape.size)
    return torch.randn(*dims, device=device)


class LatencyTable:
    """Predicts the latency (ms per batch of ``batch``) of a model and of any narrower copy of it."""

    def __init__(
        self, batch: int, device: torch.device, results_dir: str | Path, say=lambda msg: None, align: int | None = None
    ):
        self.batch, self.device, self.say, self.align = int(batch), device, say, int(align or ALIGN)
        self.threads = torch.get_num_threads()
        slug = re.sub(
            r"[^A-Za-z0-9_.-]+",
            "_",
            f"{device_name(device)}-t{self.threads}-b{self.batch}-a{self.align}-torch{torch.__version__.split('+')[0]}",
        )
        self.path = Path(results_dir) / "latency_tables" / f"{slug}.json"
        self.data = {
            "meta": {
                "device": device_name(device),
                "threads": self.threads,
                "batch": self.batch,
                "torch": torch.__version__,
                "host": platform.node(),
                "unit": "ms per batch",
            },
            "layers": {},
            "calibration": {},
        }
        self.line: dict | None = None  # the calibration of the model being pruned

    # --- building ------------------------------------------------------------------------------
    def prepare(self, dense: nn.Module, example: torch.Tensor, narrowed: Callable[[], list[nn.Module]]) -> dict:
        """Time every layer shape of ``dense`` (those not already in the cached table) and, unless this model's
        line is cached, fit the calibration line on ``dense`` and the uniformly narrowed copies that
        ``narrowed()`` builds (only then: building them traces the model four times), also when the table's sum
        for ``dense`` is no longer the one the cached line was fitted on. Returns the line."""
        layers = layers_of(dense, example)
        model_key = hashlib.sha256(json.dumps([(s.key(), i, o) for s, i, o in layers]).encode()).hexdigest()[:16]
        with file_lock(self.path.with_suffix(".lock")):
            if self.path.exists():
                cached = json.loads(self.path.read_text())
                self.data["layers"].update(cached.get("layers", {}))
                self.data["calibration"].update(cached.get("calibration", {}))
            changed = self._fill(layers) > 0
            line = self.data["calibration"].get(model_key)
            dense_table_ms = sum(self._lookup(shape, cin, cout) for shape, cin, cout in layers)
            # A line fitted before one of this model's layer grids was widened (or re-timed) is refitted.
            # So is one fitted before the lookup was stepped (it interpolated linearly then).
            stale = line is None or line.get("lookup") != "stepped"
            if stale or not math.isclose(line["table_ms"][0], dense_table_ms, rel_tol=1e-9):
                self.data["calibration"][model_key] = self._calibrate([dense, *narrowed()], example)
                changed = True
            self.line = self.data["calibration"][model_key]
            if changed:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.data, indent=1))
                tmp.replace(self.path)
        return self.line

    def _fill(self, layers) -> int:
        """Time the grid of every layer shape not in the table yet, and widen the grid of a shape whose
        cached grid stops short of the widths asked for (a narrower model timed it first: VGG-16's 64-wide
        3x3 convolutions at 32x32 share their shape with ResNet-56's 16-wide ones, and a lookup past the
        grid's top would extrapolate); returns how many points were timed."""
        by_shape: dict[LayerShape, list[tuple[int, int]]] = {}
        for shape, cin, cout in layers:
            by_shape.setdefault(shape, []).append((cin, cout))
        todo = {}
        for shape, widths in by_shape.items():
            step = shape.groups
            ins = _axis([w[0] for w in widths], step, self.align)
            outs = [0] if shape.op in _ONE_AXIS else _axis([w[1] for w in widths], step, self.align)
            cached = self.data["layers"].get(shape.key())
            if cached is None:
                todo[shape] = (ins, outs, {}, None)
            elif ins[-1] > cached["in"][-1] or outs[-1] > cached["out"][-1]:
                known = {(i, o): ms for i, row in zip(cached["in"], cached["ms"]) for o, ms in zip(cached["out"], row)}
                # its probed step shares stay too: lines fitted with them stay valid
                todo[shape] = (
                    sorted({*ins, *cached["in"]}),
                    sorted({*outs, *cached["out"]}),
                    known,
                    cached.get("step"),
                )
        unprobed = [shape for shape in by_shape if shape not in todo and "step" not in self.data["layers"][shape.key()]]
        for shape in unprobed:  # cached before shapes were probed
            self.data["layers"][shape.key()]["step"] = self._step_shares(shape, self.data["layers"][shape.key()])
        if not todo:
            return len(unprobed)
        points = len(unprobed)
        self.say(
            f"[latency] timing {len(todo)} layer shapes at batch {self.batch} for the lookup table "
            f"({self.path.name}; once per device, threads and batch)"
        )
        for shape, (ins, outs, known, step) in todo.items():
            missing = [(i, o) for i in ins for o in outs if (i, o) not in known]
            known = {**known, **dict(zip(missing, self._time_grid(shape, missing)))}
            points += len(missing)
            entry = {"in": ins, "out": outs, "ms": [[known[i, o] for o in outs] for i in ins]}
            self.data["layers"][shape.key()] = {**entry, "step": step or self._step_shares(shape, entry)}
        return points

    def _step_shares(self, shape: LayerShape, entry: dict) -> list[float]:
        """[input axis, output axis]: how much of the step to the next aligned width a width just past an
        aligned one already costs, 0 (linear: a channel costs its share) to 1 (a vector block: it costs the
        whole step). Probed once per axis at an aligned width g in the grid with g + align in it too (a
        multiple of 2 x align where one is; the other axis at its widest): r = (t(g+1) - t(g)) /
        (t(g+align) - t(g)) is 1/align when linear and 1 when stepped; the share is (align x r - 1) /
        (align - 1), in [0, 1]. An axis too narrow to probe, or whose step is within the timing noise (under
        2%), is linear."""
        if shape.groups > 1:  # a grouped conv's widths are multiples of its groups: nothing to probe between
            return [0.0, 0.0]
        shares = []
        for axis, other in ((entry["in"], entry["out"]), (entry["out"], entry["in"])):
            candidates = [g for g in axis if g % self.align == 0 and g + self.align in axis]
            # a multiple of 2 x align too where there is one: g + 1 then crosses a block of either size
            candidates = [g for g in candidates if g % (2 * self.align) == 0] or candidates
            if len(axis) < 3 or not candidates:
                shares.append(0.0)
                continue
            g = candidates[len(candidates) // 2]
            wide = other[-1]
            points = [(w, wide) if axis is entry["in"] else (wide, w) for w in (g, g + 1, g + self.align)]
            t0, t1, t8 = self._time_points(shape, points, PROBE_ROUNDS)
            if t8 - t0 < 0.02 * t0:
                shares.append(0.0)
                continue
            r = (t1 - t0) / (t8 - t0)
            shares.append(min(1.0, max(0.0, (self.align * r - 1) / (self.align - 1))))
        return shares

    def _time_grid(self, shape: LayerShape, widths: list[tuple[int, int]], chunk: int = 32) -> list[float]:
        """Median ms per pass of the layer at each (input, output) width, timed in interleaved rounds (every
        point of a chunk once per round) so that a burst of load on the machine hits many points a little,
        not one a lot. Chunks bound the memory of the layers built at once (VGG's 512-wide grids)."""
        return [
            ms
            for start in range(0, len(widths), chunk)
            for ms in self._time_points(shape, widths[start : start + chunk])
        ]

    @torch.inference_mode()
    def _time_points(self, shape: LayerShape, widths: list[tuple[int, int]], rounds: int = TIMINGS) -> list[float]:
        torch.manual_seed(0)
        modules = [_layer(shape, i, o).to(self.device).eval() for i, o in widths]
        inputs = {i: _input(shape, i, self.batch, self.device) for i, _ in widths}
        passes = []
        with measuring():
            for module, (i, _) in zip(modules, widths):
                module(inputs[i]), module(inputs[i])
                passes.append(passes_for(module, inputs[i]))
            timings = [[timed(m, inputs[i], p) for m, (i, _), p in zip(modules, widths, passes)] for _ in range(rounds)]
        return [statistics.median(r[k] for r in timings) for k in range(len(widths))]

    def _calibrate(self, models: list[nn.Module], example: torch.Tensor) -> dict:
        """Least-squares line real_ms = a * table_ms + b over ``models`` (the first one dense), timed in
        interleaved rounds (``interleaved_latency``, an odd number of them). Each model's time is the dense
        model's median divided by its median per-round speed-up: a change of load between rounds moves both
        sides of a ratio, not the fit."""
        x = example.new_empty((self.batch, *example.shape[1:])).normal_()
        timed_together = interleaved_latency(
            {str(j): m for j, m in enumerate(models)}, "0", x, warmup=1, min_rounds=CALIBRATION_ROUNDS, max_seconds=0
        )
        dense_ms = timed_together["0"]["ms"]
        real = [dense_ms / timed_together[str(j)]["speedup"] for j in range(len(models))]
        return {**fit_line([self.table_ms(m, example) for m in models], real), "lookup": "stepped"}

    # --- predicting ----------------------------------------------------------------------------
    def table_ms(self, model: nn.Module, example: torch.Tensor, lookup: str = "stepped") -> float:
        """The sum of the table's times over ``model``'s layers (timing any layer shape it lacks), looked up
        as ``lookup`` (``LOOKUPS``; the other one is for comparison)."""
        layers = layers_of(model, example)
        self._fill(layers)
        return sum(self._lookup(shape, cin, cout, lookup == "stepped") for shape, cin, cout in layers)

    def predict(self, model: nn.Module, example: torch.Tensor) -> float:
        """Predicted ms per batch of ``model`` (``example`` is a batch-1 input)."""
        if self.line is None:
            raise RuntimeError("LatencyTable.prepare() must run before predict()")
        return self.line["a"] * self.table_ms(model, example) + self.line["b"]

    def layer_ms(self, model: nn.Module, example: torch.Tensor) -> dict[str, Callable[[int, int], float]]:
        """{conv or linear layer name: ms per batch at given (input, output) widths}, scaled by the
        calibration's slope: each layer's share of the predicted latency (prune.normalize=latency and
        prune.allocation=knapsack cost channels with it). Interpolated linearly, not stepped: a channel's
        marginal saving must be an average rate, not 0 below a step and a whole step above it (every
        aligned width would look free to keep)."""
        layers = named_layers_of(model, example)
        self._fill(list(layers.values()))
        slope = self.line["a"] if self.line else 1.0
        return {
            name: (lambda cin, cout, shape=shape: slope * self._lookup(shape, max(1, cin), max(1, cout), False))
            for name, (shape, _, _) in layers.items()
        }

    def _lookup(self, shape: LayerShape, cin: float, cout: float, stepped: bool = True) -> float:
        entry = self.data["layers"][shape.key()]
        ins, outs, ms = entry["in"], entry["out"], entry["ms"]
        if stepped:
            share_in, share_out = entry.get("step", (0.0, 0.0))
            cin += share_in * (_rounded_up(ins, cin, self.align) - cin)
            cout += share_out * (_rounded_up(outs, cout, self.align) - cout)
        i, fi = _bracket(ins, cin)
        if len(outs) == 1:
            return _lerp(ms[i][0], ms[i + 1][0] if len(ins) > 1 else ms[i][0], fi)
        o, fo = _bracket(outs, cout)
        low = _lerp(ms[i][o], ms[i][o + 1], fo)
        high = _lerp(ms[i + 1][o], ms[i + 1][o + 1], fo) if len(ins) > 1 else low
        return _lerp(low, high, fi) if len(ins) > 1 else low


def fit_line(table: list[float], real: list[float]) -> dict:
    """Least-squares line real_ms = a * table_ms + b (the first point the dense model's), with its worst
    relative error on those points; proportional to the table if the points resolve no positive slope."""
    n, mx, my = len(real), statistics.mean(table), statistics.mean(real)
    sxx = sum((t - mx) ** 2 for t in table)
    a = sum((t - mx) * (r - my) for t, r in zip(table, real)) / sxx if sxx > 0 else 0.0
    b = my - a * mx
    if a <= 0:
        a, b = real[0] / table[0], 0.0
    fitted = [a * t + b for t in table]
    return {
        "a": a,
        "b": b,
        "table_ms": table,
        "real_ms": real,
        "max_rel_error": max(abs(f - r) / r for f, r in zip(fitted, real)),
        "models": n,
    }


def _rounded_up(axis: list[int], width: float, align: int) -> float:
    """The width a vector kernel pays for: the next multiple of ``align`` (on this project's AVX-512 CPU a 3x3
    conv at batch 64, 8x8 input, 64 channels in, takes 2.4-2.5 ms at 24-32 output channels and 3.3-3.5 at
    33-42), never past the next grid point (a dense width need not be aligned)."""
    if width in axis or width > axis[-1]:
        return width
    return min(-(-width // align) * align, next(a for a in axis if a >= width))


def _bracket(axis: list[int], value: float) -> tuple[int, float]:
    """Index i and fraction f with value = axis[i] + f * (axis[i+1] - axis[i]); extrapolates linearly
    past the ends (f < 0 or > 1). A one-point axis gives (0, 0)."""
    if len(axis) == 1:
        return 0, 0.0
    i = max(0, min(len(axis) - 2, next((j - 1 for j, a in enumerate(axis) if a >= value), len(axis) - 1)))
    return i, (value - axis[i]) / (axis[i + 1] - axis[i])


def _lerp(a: float, b: float, f: float) -> float:
    return max(0.0, a + (b - a) * f)


def narrowed_copies(model: nn.Module, pruner: ChannelPruner, random_cuts: int = RANDOM_CUTS) -> list[nn.Module]:
    """Copies of ``model`` with every prunable group cut uniformly to each of FRACTIONS (less the dense
    1.0), then ``random_cuts`` copies with each group cut to its own random fraction in [0.3, 1] (seeded):
    the calibration line's other points. Pruning rarely cuts uniformly, so the line's error is also read
    where the table's per-layer errors do not cancel."""
    copies = []
    groups = pruner.groups(model)
    rng = random.Random(0)
    cuts = [dict.fromkeys(groups, f) for f in FRACTIONS[1:]]
    cuts += [{k: rng.uniform(FRACTIONS[-1], 1.0) for k in groups} for _ in range(random_cuts)]
    for fractions in cuts:
        widths = {k: max(g.min_keep, round(fractions[k] * g.channels)) for k, g in groups.items()}
        copies.append(pruner.shrink_to(copy.deepcopy(model), widths))
    return copies
