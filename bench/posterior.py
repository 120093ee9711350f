"""How long a posterior figure takes once the model is loaded (the dashboard's Posteriors page).

    python -m bench.posterior [--repeats 5] [--threads N] [--run RUN --run-dir runs]

For one test face and one landmark, times (median of ``--repeats``):

* ``maps``: :func:`mist_core.posterior.posterior_maps` -- the marginal and every encoder's
  log-density at each of the 218 x 178 = 38,804 pixel centres, HPD levels, pointwise MI;
* ``figures``: the page's plotly figures for those maps, serialised to JSON (what the
  browser receives);

and the same for all five landmarks with one encoder (the "Your photo" page's positions).
Without ``--run`` it uses the demo-cpu model untrained (the time does not depend on the
weights); with ``--run`` a trained run from the run store.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))

from ui import charts  # noqa: E402

from mist_core.checkpoints import load_experiment, run_store  # noqa: E402
from mist_core.experiment import LandmarkExperiment, preset  # noqa: E402
from mist_core.posterior import posterior_maps  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.posterior", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--run", default=None, help="a run name (default: untrained demo-cpu)")
    parser.add_argument("--run-dir", default="runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        experiment = load_experiment(run_store(args.run_dir).open(args.run))
    else:
        experiment = LandmarkExperiment(preset("demo-cpu", train_size=16, test_size=16))
        experiment.model.eval()
    config = experiment.config
    item = experiment.source_images("test")[0]
    image = item["image"]
    picture = (image.permute(1, 2, 0) * 255).round().byte().numpy()
    landmark = config.landmarks[0]
    truth = tuple(float(v) for v in item[landmark])

    def maps():
        with torch.inference_mode():
            return posterior_maps(experiment, image, landmark, truth=truth)

    maps()  # warm-up
    maps_s, result = _median_time(maps, args.repeats)

    def figures():
        return [charts.posterior_figure(picture, m).to_json() for m in result]

    figures_s, _ = _median_time(figures, args.repeats)
    last = config.encoders[-1]

    def all_landmarks():
        with torch.inference_mode():
            return [
                posterior_maps(experiment, image, lm, encoders=[last]) for lm in config.landmarks
            ]

    five_s, _ = _median_time(all_landmarks, args.repeats)
    height, width = image.shape[-2:]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'run ' + args.run if args.run else 'untrained demo-cpu model'}; "
        f"grid {height} x {width} = {height * width:,} pixels; median of {args.repeats}"
    )
    print(
        f"one face, one landmark, marginal + {len(config.encoders)} encoders "
        f"({len(result)} maps): maps {maps_s:.3f} s + figures {figures_s:.3f} s "
        f"= {maps_s + figures_s:.3f} s"
    )
    print(f"five landmarks with one encoder ({2 * len(config.landmarks)} maps): {five_s:.3f} s")
    assert all(np.isfinite(m.log_prob).all() for m in result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
