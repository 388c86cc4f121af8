"""Core allocation: partition every population into contiguous slices, one slice per neuro core, within
every per-core limit of ``CoreLimits``; then place the cores on chips.

Per core (a slice ``[start, stop)`` of one population) the allocator counts:

- ``neurons``: stop - start (<= ``neurons_per_core``);
- ``memory_bits``: the incoming weights as the core stores them (see ``snn2hw.compiler.resources``);
- ``input_axons``: distinct source neurons, per incoming projection, with a synapse into the slice
  (<= ``input_axons_per_core``);
- ``output_routes``: for each neuron on the core, one route per destination core it reaches
  (<= ``output_routes_per_core``).

Why contiguous slices: neighbouring neurons of a layer share their sources (all of them for a dense
layer, overlapping receptive fields for a convolution), so contiguous slices need the fewest input
axons and routes, and hence the least inter-core traffic; fewer, fuller cores mean fewer routes too.
Each population gets the fewest cores any contiguous partition allows (greedy packing, which is optimal
for a one-dimensional partition under limits that only grow with the slice), then the same number of
cores is re-split evenly when the even split is legal (balanced load). A source population whose cores
overflow their route tables is split finer until they fit.

Chips: cores are placed in topological order, filling one chip (``cores_per_chip``, ``neurons_per_chip``,
``synapses_per_chip``) before opening the next, so consecutive layers share a chip and traffic between
chips is limited to the layer boundaries that fall between them. Inputs are fed by the host and are
not placed on neuro cores.

Nothing here raises for a network that does not fit: the result lists ``violations`` (the same
``Violation`` rows as the design rules), so a check reports everything at once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from snn2hw.compiler.resources import CoreLimits, index_bits
from snn2hw.compiler.rules import Violation
from snn2hw.ir import Conv2d, Graph, LoihiConv2d


@dataclass(frozen=True)
class CoreSlice:
    """One neuro core: a contiguous slice of one population and what it uses."""

    core: int
    chip: int
    population: str
    start: int
    stop: int
    synapses: int
    memory_bits: int
    input_axons: int
    output_routes: int = 0

    @property
    def neurons(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Placement:
    cores: tuple[CoreSlice, ...]
    chips: int
    traffic: dict  # projection -> {"core_pairs", "routes", "inter_chip_routes"}
    violations: tuple[Violation, ...] = ()
    limits: dict = field(default_factory=dict)

    def per_population(self) -> dict:
        out: dict[str, dict] = {}
        for c in self.cores:
            d = out.setdefault(c.population, {"cores": 0, "neurons": 0, "synapses": 0, "memory_bits": 0,
                                              "max_input_axons": 0, "max_output_routes": 0, "chips": []})
            d["cores"] += 1
            d["neurons"] += c.neurons
            d["synapses"] += c.synapses
            d["memory_bits"] += c.memory_bits
            d["max_input_axons"] = max(d["max_input_axons"], c.input_axons)
            d["max_output_routes"] = max(d["max_output_routes"], c.output_routes)
            if c.chip not in d["chips"]:
                d["chips"].append(c.chip)
        return out

    def to_dict(self) -> dict:
        """The plain record stored in the artefact (``resources["placement"]``); see docs/compiler.md."""
        return {
            "cores": [{**asdict(c), "neurons": c.neurons} for c in self.cores],
            "chips": self.chips,
            "per_population": self.per_population(),
            "traffic": self.traffic,
            "limits": self.limits,
        }


# --- connectivity of one projection, evaluated on a slice of its destination ---------------------------
class _Incoming:
    """Per-slice costs of one incoming projection: synapses, memory bits and the source mask."""

    def __init__(self, proj, src_size: int, weight_bits: int):
        self.proj, self.src_size = proj, src_size
        self.bits = int(getattr(proj, "num_weight_bits", weight_bits))
        self.conv = isinstance(proj, (Conv2d, LoihiConv2d))
        w = np.asarray(proj.weight)
        self.nonzero = w != 0
        if self.conv:
            self._conv_setup()
        else:
            self.sparse = bool(proj.sparse)
            self.row_nnz = self.nonzero.sum(axis=1)
            self.row_nnz_cum = np.concatenate([[0], np.cumsum(self.row_nnz)])

    def _conv_setup(self) -> None:
        p = self.proj
        c_out, h_out, w_out = p.out_shape
        self.plane = h_out * w_out
        self.per_channel_weights = int(np.prod(np.shape(p.weight)[1:]))
        self.nz_taps = self.nonzero.sum(axis=1)  # (c_out, kh, kw): non-zero entries over input channels
        self.valid = []
        for axis in range(2):
            n_in, n_out = p.in_shape[1 + axis], p.out_shape[1 + axis]
            k = p.kernel_size[axis]
            pos = (np.arange(n_out)[:, None] * p.stride[axis] - p.padding[axis]
                   + np.arange(k)[None, :] * p.dilation[axis])
            self.valid.append((pos, (pos >= 0) & (pos < n_in)))

    def lower_bound_bits(self, start: int, stop: int) -> int:
        if self.conv:
            return 0
        return int(self.row_nnz_cum[stop] - self.row_nnz_cum[start]) * self.bits

    def cost(self, start: int, stop: int) -> tuple[int, int, np.ndarray]:
        """(synapses, memory bits, source mask) of destination neurons [start, stop)."""
        if self.conv:
            return self._conv_cost(start, stop)
        block = self.nonzero[start:stop]
        synapses = int(self.row_nnz_cum[stop] - self.row_nnz_cum[start])
        mask = block.any(axis=0)
        if self.sparse:
            bits = synapses * (self.bits + index_bits(self.src_size))
        else:
            bits = (stop - start) * int(mask.sum()) * self.bits
        return synapses, bits, mask

    def _conv_cost(self, start: int, stop: int) -> tuple[int, int, np.ndarray]:
        p = self.proj
        idx = np.arange(start, stop)
        co, rest = idx // self.plane, idx % self.plane
        y, x = rest // p.out_shape[2], rest % p.out_shape[2]
        (pos_y, ok_y), (pos_x, ok_x) = self.valid
        valid = ok_y[y][:, :, None] & ok_x[x][:, None, :]  # (n, kh, kw)
        synapses = int((valid * self.nz_taps[co]).sum())
        channels = int(co[-1] - co[0] + 1) if len(co) else 0
        bits = channels * self.per_channel_weights * self.bits
        # sources: input channels of the groups of these output channels, at the valid receptive-field taps
        c_in, h_in, w_in = p.in_shape
        per_group_out = p.out_shape[0] // p.groups
        per_group_in = c_in // p.groups
        mask = np.zeros(c_in * h_in * w_in, dtype=bool)
        tap_used = self.nonzero.any(axis=1)  # (c_out, kh, kw)
        for g in np.unique(co // per_group_out):
            sel = (co // per_group_out) == g
            v = valid[sel] & tap_used[co[sel]]
            n_i, ky, kx = np.nonzero(v)
            iy, ix = pos_y[y[sel][n_i], ky], pos_x[x[sel][n_i], kx]
            flat = np.unique(iy * w_in + ix)
            chans = np.arange(g * per_group_in, (g + 1) * per_group_in)
            mask[(chans[:, None] * (h_in * w_in) + flat[None, :]).ravel()] = True
        return synapses, bits, mask


@dataclass
class _Slice:
    start: int
    stop: int
    synapses: int
    memory_bits: int
    input_axons: int
    masks: list  # per incoming projection


def _evaluate(incoming: list[_Incoming], start: int, stop: int) -> _Slice:
    syn = bits = axons = 0
    masks = []
    for inc in incoming:
        s, b, m = inc.cost(start, stop)
        syn, bits, axons = syn + s, bits + b, axons + int(m.sum())
        masks.append(m)
    return _Slice(start, stop, syn, bits, axons, masks)


def _fits(s: _Slice, limits: CoreLimits, max_neurons: int) -> bool:
    return (s.stop - s.start <= max_neurons and s.memory_bits <= limits.synaptic_memory_bits_per_core
            and s.input_axons <= limits.input_axons_per_core)


def _partition(size: int, incoming: list[_Incoming], limits: CoreLimits, max_neurons: int) -> tuple[list[_Slice], list[int]]:
    """Fewest contiguous slices within the limits (greedy + binary search), evened out when legal.
    Returns (slices, indices of single neurons that fit no core on their own)."""
    if size == 0:
        return [], []
    slices, too_big = [], []
    start = 0
    while start < size:
        s1 = _evaluate(incoming, start, start + 1)
        if not _fits(s1, limits, max_neurons):
            too_big.append(start)
            slices.append(s1)
            start += 1
            continue
        lo, hi = start + 1, min(size, start + max_neurons)  # lo fits
        best = s1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            s = _evaluate(incoming, start, mid)
            if _fits(s, limits, max_neurons):
                lo, best = mid, s
            else:
                hi = mid - 1
        slices.append(best if best.stop == lo else _evaluate(incoming, start, lo))
        start = lo
    k = len(slices)
    if k > 1 and not too_big:
        bounds = np.linspace(0, size, k + 1).round().astype(int)
        even = [_evaluate(incoming, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        if all(_fits(s, limits, max_neurons) for s in even):
            slices = even
    return slices, too_big


def allocate(graph: Graph, limits: CoreLimits = CoreLimits(), weight_bits: int = 8) -> Placement:
    """Place ``graph`` (float or integer) on cores and chips. ``weight_bits`` sizes the weights of float
    projections (integer ones carry their own ``num_weight_bits``)."""
    sizes = {n.name: n.size for n in (*graph.inputs, *graph.populations)}
    order = graph.feedforward_order() or [p.name for p in graph.populations]
    incoming = {name: [_Incoming(p, sizes[p.src], weight_bits) for p in graph.incoming(name)] for name in order}
    cap = {name: limits.neurons_per_core for name in order}
    violations: list[Violation] = []
    for _attempt in range(8):
        parts, violations = {}, []
        for name in order:
            slices, too_big = _partition(sizes[name], incoming[name], limits, cap[name])
            if too_big:
                singles = [_evaluate(incoming[name], i, i + 1) for i in too_big]
                worst = max(singles, key=lambda s: (s.memory_bits, s.input_axons))
                violations.extend(_single_neuron_violations(name, too_big, worst, limits))
                # keep counting as if a core could hold one such neuron, so the core and chip figures
                # show what the rest of the network needs instead of one core per offending neuron
                relaxed = limits.replace(
                    synaptic_memory_bits_per_core=max(limits.synaptic_memory_bits_per_core, *(s.memory_bits for s in singles)),
                    input_axons_per_core=max(limits.input_axons_per_core, *(s.input_axons for s in singles)))
                slices, _ = _partition(sizes[name], incoming[name], relaxed, cap[name])
            parts[name] = slices
        routes, traffic = _routes(graph, parts, incoming)
        over = {name: max(r) for name, r in routes.items() if r and max(r) > limits.output_routes_per_core}
        if not over:
            break
        for name, worst in over.items():  # split the source finer so each core holds fewer routes
            per_core = max(s.stop - s.start for s in parts[name])
            cap[name] = max(1, min(cap[name], per_core * limits.output_routes_per_core // worst))
    else:
        for name, worst in over.items():
            violations.append(Violation(
                "output routes per core", name, str(worst), str(limits.output_routes_per_core),
                "fewer destination cores (smaller fan-out) or raise output_routes_per_core",
                f"population {name!r}: a core needs {worst} output routes, more than {limits.output_routes_per_core}"))
    cores, chip_of_core = _place_on_chips(order, parts, routes, limits)
    chips = (max(chip_of_core) + 1) if chip_of_core else 0
    if chips > limits.max_chips:
        violations.append(Violation(
            "chips", "<network>", f"{chips} chips ({len(cores)} cores)",
            f"{limits.max_chips} ({limits.chips_per_board} per board x {limits.boards} boards)",
            "add boards (--limit boards=N), prune or narrow layers, or use fewer weight bits",
            f"network needs {chips} chips ({len(cores)} cores), the target has {limits.max_chips}"))
    chip_traffic = _inter_chip(graph, parts, chip_of_core, order, incoming, traffic)
    return Placement(tuple(cores), chips, chip_traffic, tuple(violations), limits.to_dict())


def _single_neuron_violations(name: str, too_big: list[int], s: _Slice, limits: CoreLimits) -> list[Violation]:
    out = []
    where = f"{len(too_big)} neuron(s) of {name!r} (first: {too_big[0]})"
    if s.memory_bits > limits.synaptic_memory_bits_per_core:
        out.append(Violation("synaptic memory per neuron", name, f"{s.memory_bits} bits",
                             f"{limits.synaptic_memory_bits_per_core} bits per core",
                             "fewer weight bits, a sparse projection, or split the fan-in over relay populations",
                             f"{where}: incoming weights need {s.memory_bits} bits, more than a core's "
                             f"{limits.synaptic_memory_bits_per_core}"))
    if s.input_axons > limits.input_axons_per_core:
        out.append(Violation("fan-in (input axons)", name, str(s.input_axons), str(limits.input_axons_per_core),
                             "reduce the fan-in (sparser or smaller input layer) or split it over relay populations",
                             f"{where}: fan-in of {s.input_axons} source neurons, more than a core's "
                             f"{limits.input_axons_per_core} input axons"))
    return out


def _routes(graph: Graph, parts: dict, incoming: dict) -> tuple[dict, dict]:
    """Output routes per source core, and per projection the (src core, dst core) pairs and routes."""
    routes = {name: [0] * len(s) for name, s in parts.items()}
    traffic = {}
    for name, slices in parts.items():
        for j, proj_inc in enumerate(incoming[name]):
            p = proj_inc.proj
            src_parts = parts.get(p.src)
            pairs = total = 0
            for s in slices:
                mask = s.masks[j]
                total += int(mask.sum())
                if src_parts is None:
                    pairs += 1 if mask.any() else 0
                    continue
                cum = np.concatenate([[0], np.cumsum(mask)])
                for k, ss in enumerate(src_parts):
                    n = int(cum[ss.stop] - cum[ss.start])
                    if n:
                        routes[p.src][k] += n
                        pairs += 1
            traffic[p.name] = {"src": p.src, "dst": p.dst, "core_pairs": pairs, "routes": total}
    return routes, traffic


def _place_on_chips(order: list[str], parts: dict, routes: dict, limits: CoreLimits) -> tuple[list[CoreSlice], list[int]]:
    cores, chip_of_core = [], []
    chip, used_cores, used_neurons, used_syn = 0, 0, 0, 0
    for name in order:
        for k, s in enumerate(parts[name]):
            n = s.stop - s.start
            if used_cores and (used_cores + 1 > limits.cores_per_chip or used_neurons + n > limits.neurons_per_chip
                               or used_syn + s.synapses > limits.synapses_per_chip):
                chip, used_cores, used_neurons, used_syn = chip + 1, 0, 0, 0
            used_cores, used_neurons, used_syn = used_cores + 1, used_neurons + n, used_syn + s.synapses
            cores.append(CoreSlice(len(cores), chip, name, s.start, s.stop, s.synapses, s.memory_bits,
                                   s.input_axons, routes[name][k]))
            chip_of_core.append(chip)
    return cores, chip_of_core


def _inter_chip(graph: Graph, parts: dict, chip_of_core: list[int], order: list[str], incoming: dict,
                traffic: dict) -> dict:
    """Adds ``inter_chip_routes`` (routes whose source and destination cores sit on different chips)."""
    first_core, k = {}, 0
    for name in order:
        first_core[name] = k
        k += len(parts[name])
    for name in order:
        for j, inc in enumerate(incoming[name]):
            p = inc.proj
            t = traffic[p.name]
            t["inter_chip_routes"] = 0
            if p.src not in parts:
                continue
            for di, s in enumerate(parts[name]):
                cum = np.concatenate([[0], np.cumsum(s.masks[j])])
                dchip = chip_of_core[first_core[name] + di]
                for si, ss in enumerate(parts[p.src]):
                    if chip_of_core[first_core[p.src] + si] != dchip:
                        t["inter_chip_routes"] += int(cum[ss.stop] - cum[ss.start])
    return traffic


def resource_summary(graph: Graph, placement: Placement) -> dict:
    """The artefact's ``resources`` dict: graph totals, cores, chips, and the placement record."""
    res = graph.summary()
    res["cores"] = len(placement.cores)
    res["chips"] = placement.chips
    res["memory_bits"] = int(sum(c.memory_bits for c in placement.cores))
    res["per_population"] = {k: {kk: v[kk] for kk in ("neurons", "synapses", "cores", "memory_bits")}
                             for k, v in placement.per_population().items()}
    res["limits"] = placement.limits
    res["placement"] = placement.to_dict()
    return res

