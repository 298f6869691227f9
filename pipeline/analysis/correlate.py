"""The correlate stage: do nets trained from different seeds learn the same units? (Li, Yosinski, Clune, Lipson,
Hopcroft: "Convergent Learning", ICLR 2016), computed exactly in one pass on Spark.

extract   : two or more logged models of ``train.task`` (``correlate.models``, or ``correlate.seeds`` nets trained
            by the train stage, each its own MLflow run, reused when one with the same settings finished), a
            randomly initialised net of the same architecture (the baseline), and the probe images (a split);
transform : one Spark job (:mod:`pipeline.analysis.probe`): every partition runs the nets and accumulates
            float64 sufficient statistics (:class:`pipeline.analysis.moments.Moments`): of every layer of every net
            (a unit's spatial mean per image), per layer over positions (``correlate.unit=position``), and of net 0
            against net 1 on *other* images (the permuted baseline); then a second pass for the mutual information
            of the best-matched unit pairs, in bins fixed by the first;
load      : on the driver, from the sums: within- and between-net correlation, matching (greedy, Hungarian,
            semi), the units with no good match, dead units, linear and debiased CKA for every layer pair, SVCCA,
            spectral clusters; metrics, ``.npy`` matrices and figures to MLflow.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline.analysis import matching
from pipeline.analysis.moments import Moments, PairHistograms
from pipeline.analysis.probe import Probe, fold, layer_shapes, samples
from pipeline.config import Config, ConfigError

log = logging.getLogger(__name__)

RANDOM, PERMUTED = "random", "permuted"       # the two baselines a pair of nets is set against
SEED_ROLE = "correlate-seed"     # the role tag (pipeline.models.lookup.ROLE_TAG) of the nets this stage trains
MIN_UNITS = 32          # fewer units than this in a compared layer make a matching mean little

# What the stage logs, named once for it and for the report ({layer}; {method}: matching.METHODS; {base}: random |
# permuted; {net}: net0, net1, ...). A pair of nets after the first appends ".<net a>-<net b>" to per-layer names.
MATCHED = "corr_matched_mean.{method}.{layer}"
BASELINE = "{base}." + MATCHED
CKA = "cka.{layer}"
CKA_DEBIASED = "cka_debiased.{layer}"
SVCCA = "svcca.{layer}"
UNMATCHED = "unmatched_units.{layer}"
DEAD = "dead_units.{net}.{layer}"
MUTUAL_INFORMATION = "mutual_information_bits.{layer}"
PROBE_SAMPLES = "probe_samples"
FIGURES = ("correlate_{layer}_matrices", "correlate_matched_curves", "correlate_cka", "correlate_clusters")
MODELS_PARAM, PROBE_PARAM, LAYERS_PARAM = "correlate.model_uris", "correlate.probe_url", "correlate.layers_resolved"


def net_name(i: int) -> str:
    return f"net{i}"


# --------------------------------------------------------------------------------------- accumulation

@dataclass
class Sums:
    """The first pass's statistics: ``mean`` over (net, layer) blocks of per-image features; ``positions`` per
    layer (position mode); ``permuted``: net 0 against net 1 on the partner image, per layer."""
    mean: Moments
    positions: dict = field(default_factory=dict)
    permuted: dict = field(default_factory=dict)

    def merge(self, other: "Sums") -> "Sums":
        self.mean.merge(other.mean)
        for key, m in other.positions.items():
            self.positions[key].merge(m)
        for key, m in other.permuted.items():
            self.permuted[key].merge(m)
        return self

    def unit_moments(self, layer: str) -> Moments:
        """Where the unit correlations of ``layer`` come from: positions if sampled so, else per-image means."""
        return self.positions.get(layer, self.mean)


def block(net: str, layer: str) -> str:
    return f"{net}/{layer}"


def empty_sums(nets: list, shapes: dict, unit: str) -> Sums:
    units = {layer: shape[0] for layer, shape in shapes.items()}
    mean = Moments({block(n, l): units[l] for n in nets for l in units})
    positions = {l: Moments({block(n, l): units[l] for n in nets}) for l, shape in shapes.items()
                 if unit == "position" and len(shape) == 3}
    permuted = {l: Moments({block(nets[0], l): units[l], block(nets[1], l) + "~": units[l]}) for l in units}
    return Sums(mean, positions, permuted)


def add_batch(sums: Sums, acts: dict, partner, unit: str) -> Sums:
    nets = sorted({n for n, _ in acts})
    sums.mean.add({block(n, l): samples(a, "mean") for (n, l), a in acts.items()})
    for layer, moments in sums.positions.items():
        moments.add({block(n, layer): samples(acts[(n, layer)], "position") for n in nets})
    first, second = net_name(0), net_name(1)
    other = partner([second])
    for layer, moments in sums.permuted.items():
        mode = unit if layer in sums.positions else "mean"
        moments.add({block(first, layer): samples(acts[(first, layer)], mode),
                     block(second, layer) + "~": samples(other[(second, layer)], mode)})
    return sums


def add_histograms(hists: dict, acts: dict, unit: str, positional: set) -> dict:
    for layer, h in hists.items():
        mode = unit if layer in positional else "mean"
        h.add({block(n, l): samples(a, mode) for (n, l), a in acts.items() if l == layer})
    return hists


# ------------------------------------------------------------------------------------------- findings

@dataclass
class LayerFindings:
    layer: str
    units: int
    dead: dict                       # net -> indices of dead units
    within_a: np.ndarray
    within_b: np.ndarray
    between: np.ndarray
    matched: dict                    # method -> matched correlations, highest first
    hungarian: tuple                 # (rows, cols) over the live units' indices
    unmatched: list                  # net 0's live units whose Hungarian partner correlates < threshold
    baselines: dict                  # "random" / "permuted" -> method -> matched correlations
    cka: float
    cka_debiased: float
    svcca: float
    clusters: dict
    mutual_information: list = field(default_factory=list)   # [(unit a, unit b, corr, bits)]


def live(moments: Moments, name: str) -> np.ndarray:
    return np.flatnonzero(~moments.dead(name))


def _matched_all(corr: np.ndarray) -> dict:
    return {method: matching.matched_values(corr, method) for method in matching.METHODS}


def layer_findings(sums: Sums, layer: str, a: str, b: str, threshold: float, clusters: int,
                   seed: int) -> LayerFindings:
    m = sums.unit_moments(layer)
    ba, bb, br = block(a, layer), block(b, layer), block(RANDOM, layer)
    la, lb, lr = live(m, ba), live(m, bb), live(m, br)
    between = m.correlation(ba, bb)
    core = between[np.ix_(la, lb)]
    rows, cols = matching.hungarian(core) if core.size else (np.zeros(0, int), np.zeros(0, int))
    unmatched = sorted(int(la[r]) for r, c in zip(rows, cols) if core[r, c] < threshold)
    unmatched += sorted(int(u) for u in set(la) - {int(la[r]) for r in rows})      # more live units than partners
    perm = sums.permuted[layer]
    pa, pb = block(a, layer), block(b, layer) + "~"
    permuted = perm.correlation(pa, pb)[np.ix_(live(perm, pa), live(perm, pb))] if a == net_name(0) and \
        b == net_name(1) else np.zeros((0, 0))
    random_corr = m.correlation(ba, br)[np.ix_(la, lr)]
    within_a, within_b = m.correlation(ba, ba), m.correlation(bb, bb)
    return LayerFindings(
        layer=layer, units=len(m.mean(ba)), dead={a: np.flatnonzero(m.dead(ba)).tolist(),
                                                  b: np.flatnonzero(m.dead(bb)).tolist()},
        within_a=within_a, within_b=within_b, between=between, matched=_matched_all(core),
        hungarian=(la[rows], lb[cols]), unmatched=unmatched,
        baselines={RANDOM: _matched_all(random_corr), PERMUTED: _matched_all(permuted)},
        cka=sums.mean.cka(ba, bb), cka_debiased=sums.mean.cka(ba, bb, debiased=True), svcca=m.svcca(ba, bb),
        clusters=matching.clusters(within_a[np.ix_(la, la)], within_b[np.ix_(lb, lb)], core, clusters, seed)
        if len(la) > 1 and len(lb) > 1 else {"labels": np.zeros(0), "clusters": []})


def cka_map(moments: Moments, a: str, b: str, layers: tuple, debiased: bool = False) -> np.ndarray:
    """CKA of every layer of net a (rows) with every layer of net b (columns)."""
    return np.array([[moments.cka(block(a, la), block(b, lb), debiased) for lb in layers] for la in layers])


def _mean(values) -> float:
    values = np.asarray(values, float)
    return float(values.mean()) if values.size else 0.0


def metrics_of(findings: list, pair_suffix: str = "") -> dict:
    out = {}
    for f in findings:
        layer = f.layer
        for method, values in f.matched.items():
            out[MATCHED.format(method=method, layer=layer) + pair_suffix] = _mean(values)
            for base, per_method in f.baselines.items():
                if per_method[method].size:
                    out[BASELINE.format(base=base, method=method, layer=layer) + pair_suffix] = \
                        _mean(per_method[method])
        out[CKA.format(layer=layer) + pair_suffix] = f.cka
        out[CKA_DEBIASED.format(layer=layer) + pair_suffix] = f.cka_debiased
        out[SVCCA.format(layer=layer) + pair_suffix] = f.svcca
        out[UNMATCHED.format(layer=layer) + pair_suffix] = len(f.unmatched)
        for net, dead in f.dead.items():
            out[DEAD.format(net=net, layer=layer)] = len(dead)
        if f.mutual_information:
            out[MUTUAL_INFORMATION.format(layer=layer) + pair_suffix] = _mean([mi for *_, mi in f.mutual_information])
    return out


# ---------------------------------------------------------------------------------------------- stage

def model_uris(spark, conf: Config, tracker) -> list:
    """``correlate.models``, or ``correlate.seeds`` nets of the train stage: reused when a finished train run of
    the same task, data, seed, width and epochs exists in this experiment (the pipeline's own train run is seed
    0's), else trained as a side job of the stage graph (:func:`pipeline.analysis.inputs.side_net`)."""
    from pipeline.analysis.inputs import side_net
    from pipeline.models.lookup import model_of, train_runs

    c = conf.correlate
    if c.models:
        return list(c.models)
    uris = []
    for seed in range(c.seeds):
        train = conf.train.model_copy(update={"seed": seed, "width": c.width, "epochs": c.epochs or conf.train.epochs,
                                              "resume": False})
        found = train_runs(tracker, {"train.task": train.task, "train.data": train.data, "train.seed": seed,
                                     "train.width": train.width, "train.epochs": train.epochs}, max_results=1)
        if found:
            print(f"correlate: net {seed}: reusing train run {found[0].info.run_id}", flush=True)
            uris.append(model_of(found[0]))
            continue
        print(f"correlate: net {seed}: training {train.task} (seed {seed}, width {train.width}, "
              f"{train.epochs} epochs)", flush=True)
        variant = f"correlate-w{train.width}-e{train.epochs}-s{seed}"
        paths = conf.paths.model_copy(update={"checkpoint_url": f"{conf.paths.checkpoint_url.rstrip('/')}/correlate/"
                                                                  f"w{train.width}-e{train.epochs}-s{seed}"})
        seeded = conf.model_copy(update={"train": train, "paths": paths})
        uris.append(side_net(spark, seeded, tracker, SEED_ROLE, f"train {train.task} seed {seed}",
                             variant)["model_uri"])
    return uris


def check_models(models: list, uris: list, task_net: str) -> None:
    """Every net is ``task_net`` with model 0's layer shapes (one line naming the first that is not)."""
    from pipeline.analysis.inputs import check_net

    first = models[0]
    for i, model in enumerate(models):
        check_net(model, task_net, uris[i], f"correlate.models[{i}]")
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if shapes != {k: tuple(v.shape) for k, v in first.state_dict().items()}:
            raise ConfigError(f"correlate: model {i} has other layer shapes than model 0 (another width or input "
                              f"size): compare nets of one architecture")


def random_net(model, seed: int):
    """The same architecture, freshly initialised: what a net's units look like before any learning."""
    import torch

    net = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net.init_weights()
    return net.eval()


def run(spark, conf: Config, tracker) -> dict:
    """The correlate stage (registered in pipeline.stages)."""
    import mlflow

    from pipeline.analysis.inputs import load_partner
    from pipeline.data.splits import require_split
    from pipeline.train.spec import make_spec

    c = conf.correlate
    spec = make_spec(conf)
    require_split(spec, c.split, "correlate.split")   # before any net trains
    uris = model_uris(spark, conf, tracker)
    if len(uris) < 2:
        raise ConfigError("correlate.models: give two or more model URIs (or leave it empty to train correlate.seeds)")
    models = [load_partner(conf, uri, "correlate.models") for uri in uris]
    check_models(models, uris, spec.task.net)
    layers = resolve_layers(models[0], spec.in_hw, c.layers)
    shapes = layer_shapes(models[0], spec.in_hw, layers)
    narrow = {l: s[0] for l, s in shapes.items() if s[0] < MIN_UNITS}
    if narrow:
        print(f"correlate: warning: layers with fewer than {MIN_UNITS} units ({narrow}): a matching of so few "
              f"units means little; train wider nets (correlate.width)", flush=True)
    nets = {net_name(i): m for i, m in enumerate(models)}
    nets[RANDOM] = random_net(models[0], c.random_seed)
    probe = Probe(spec.split_url(c.split), spec.kind, layers, c.unit, c.batch_size, c.max_rows, c.partitions)
    mlflow.log_params({MODELS_PARAM: ",".join(uris)[:500], PROBE_PARAM: probe.url, LAYERS_PARAM: ",".join(layers)})
    sums = first_pass(spark, probe, nets, shapes)
    pairs = [(net_name(i), net_name(j)) for i in range(len(models)) for j in range(i + 1, len(models))]
    findings = {pair: [layer_findings(sums, layer, *pair, c.match_threshold, c.clusters, c.random_seed)
                       for layer in layers] for pair in pairs}
    main = findings[pairs[0]]
    if c.mi_pairs:
        second_pass(spark, probe, nets, sums, main, c)
    metrics = metrics_of(main)
    for pair in pairs[1:]:
        metrics.update(metrics_of(findings[pair], f".{pair[0]}-{pair[1]}"))
    metrics[PROBE_SAMPLES] = sums.mean.n
    mlflow.log_metrics(metrics)
    cka = cka_map(sums.mean, *pairs[0], layers)
    log_artifacts(tracker, main, cka, cka_map(sums.mean, *pairs[0], layers, debiased=True), layers, sums)
    summary = {"probe_images": sums.mean.n}
    for f in main:
        summary[f"corr_matched_mean.hungarian.{f.layer}"] = metrics[f"corr_matched_mean.hungarian.{f.layer}"]
        summary[f"random.corr_matched_mean.hungarian.{f.layer}"] = \
            metrics.get(f"random.corr_matched_mean.hungarian.{f.layer}", 0.0)
        summary[f"permuted.corr_matched_mean.hungarian.{f.layer}"] = \
            metrics.get(f"permuted.corr_matched_mean.hungarian.{f.layer}", 0.0)
        summary[f"cka.{f.layer}"] = f.cka
        summary[f"unmatched_units.{f.layer}"] = len(f.unmatched)
        summary[f"dead_units.{f.layer}"] = sum(len(d) for d in f.dead.values())
    return summary


def resolve_layers(model, in_hw: tuple, names) -> tuple:
    """``correlate.layers`` (checked), or every transferable layer with a spatial map."""
    from pipeline.analysis.inputs import check_layers

    if names:
        return check_layers(model, names, "correlate.layers")
    shapes = layer_shapes(model, in_hw)
    return tuple(name for name, shape in shapes.items() if len(shape) == 3 and name in model.transferable())


def first_pass(spark, probe: Probe, nets: dict, shapes: dict) -> Sums:
    names = list(nets)
    return fold(spark, probe, nets, zero=lambda: empty_sums(names, shapes, probe.unit),
                add=lambda s, acts, partner, ids: add_batch(s, acts, partner, probe.unit),
                merge=lambda a, b: a.merge(b))


def second_pass(spark, probe: Probe, nets: dict, sums: Sums, findings: list, c) -> None:
    """Mutual information of each layer's ``mi_pairs`` best Hungarian pairs, in bins fixed by the first pass."""
    chosen = {}
    for f in findings:
        rows, cols = f.hungarian
        values = f.between[rows, cols] if len(rows) else np.zeros(0)
        best = np.argsort(-values, kind="stable")[:c.mi_pairs]
        chosen[f.layer] = [(int(rows[k]), int(cols[k]), float(values[k])) for k in best]
    positional = set(sums.positions)
    a, b = net_name(0), net_name(1)
    shells = {layer: PairHistograms.for_pairs(sums.unit_moments(layer),
                                              [(block(a, layer), i, block(b, layer), j) for i, j, _ in pairs],
                                              c.mi_bins) for layer, pairs in chosen.items() if pairs}
    if not shells:
        return
    two = {a: nets[a], b: nets[b]}
    hists = fold(spark, probe, two, zero=lambda: copy.deepcopy(shells),
                 add=lambda h, acts, _, ids: add_histograms(h, acts, probe.unit, positional),
                 merge=lambda x, y: {k: x[k].merge(y[k]) for k in x})
    for f in findings:
        if f.layer in hists:
            bits = hists[f.layer].mutual_information()
            f.mutual_information = [(i, j, corr, float(mi)) for (i, j, corr), mi in zip(chosen[f.layer], bits)]


def log_artifacts(tracker, findings: list, cka: np.ndarray, cka_debiased: np.ndarray, layers: tuple,
                  sums: Sums) -> None:
    import json
    import tempfile
    from pathlib import Path

    import mlflow

    from pipeline.analysis import figures

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "correlate"
        for f in findings:
            folder = root / f.layer
            folder.mkdir(parents=True)
            np.save(folder / "within_a.npy", f.within_a)
            np.save(folder / "within_b.npy", f.within_b)
            np.save(folder / "between.npy", f.between)
            (folder / "units.json").write_text(json.dumps({
                "dead": f.dead, "unmatched": f.unmatched,
                "hungarian": [[int(r), int(c)] for r, c in zip(*f.hungarian)],
                "mutual_information": f.mutual_information,
                "clusters": f.clusters["clusters"]}, indent=1))
        np.save(root / "cka.npy", cka)
        np.save(root / "cka_debiased.npy", cka_debiased)
        (root / "layers.json").write_text(json.dumps(list(layers)))
        mlflow.log_artifacts(str(root), "correlate")     # whole, after every file is written
    for f in findings:
        tracker.log_figure(figures.correlation_matrices(f), FIGURES[0].format(layer=f.layer))
    tracker.log_figure(figures.matched_curves(findings), FIGURES[1])
    tracker.log_figure(figures.cka_figure(cka, cka_debiased, layers), FIGURES[2])
    tracker.log_figure(figures.cluster_figure(findings), FIGURES[3])
