"""Units left at activation 0 by activation maximization, with and without climbing the pre-activation while a
unit is still off (render.optimize pre_while_off), on a trained net of a work dir; the best real value of each
unit is its best channel mean over the val split. Usage:

    .venv/bin/python benchmarks/visualize_off_units.py <task> <model URI> <layer> [work dir, default ./work]
"""
import sys, numpy as np, torch
import common  # (the benchmarks' folder is on sys.path when run as a script)
from pipeline.train.spec import make_spec
from pipeline.models.lookup import load_model
from pipeline.train.loader import rows, to_tensor
from pipeline.analysis import visualize as V, render
task, uri, layer = sys.argv[1], sys.argv[2], sys.argv[3]
import os
work = os.path.abspath(sys.argv[4] if len(sys.argv) > 4 else "work")
conf = common.make_conf(work, f"train.task={task}", master=None)
net = load_model(uri, conf).eval()
spec = make_spec(conf)
torch.set_num_threads(1)
val = np.stack([r["image"] for r in rows(spec.loader("val"))])
shapes = V.layer_shapes(net, spec.in_hw, (layer,))
n = min(16, shapes[layer][0])
objs = [V.unit_objective(net, layer, u, shapes[layer], False) for u in range(n)]
with torch.no_grad():
    acts = net.features_at(to_tensor(val), (layer,))[layer]
means = acts.double().mean(dim=(2, 3)) if acts.dim() == 4 else acts.double()
best = means.max(0).values.numpy()[:n]
print("val images", len(val), "units", n, "dead on val (best mean 0):", int((best <= 0).sum()))
sample = val[:256]
colors = render.ColorStats.fit(sample)
v = conf.visualize
for mode in ("pre16", "while_off"):
    orig = render.optimize
    def opt(*a, **k):
        k["pre_while_off"] = mode == "while_off"
        return orig(*a, **k)
    render.optimize = opt
    torch.manual_seed(v.seed)
    synth, hist = V.synthesize(net, objs, best, v, spec.in_hw, colors)
    render.optimize = orig
    reached = V.measure(net, objs, synth)
    m = V.layer_metrics(layer, reached, best, hist, hidden=True)
    live = best > 0
    print(mode, "off_start", round(m[f"off_start.{layer}"], 3), "off_end", round(m[f"off_end.{layer}"], 3),
          "faithful_share", round(m[f"faithful_share.{layer}"], 3), "ratio_median", round(m[f"ratio_median.{layer}"], 3),
          "off_end among live units", int(((reached <= 0) & live).sum()), "/", int(live.sum()))
